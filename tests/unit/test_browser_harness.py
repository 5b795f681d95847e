"""The headless Chromium harness itself (tests/browser.py), against a two-page local site."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser import Browser, artifacts_dir
from tests.support import free_port

FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Form</title>
<link rel="icon" href="data:,"></head>
<body>
<form action="/result" method="get">
  <label for="name">Your name</label> <input id="name" name="name">
  <button type="submit">Send</button>
</form>
<p><a href="/result?name=link">Elsewhere</a></p>
</body></html>
"""

RESULT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Result</title>
<link rel="icon" href="data:,"></head>
<body><h1>Hello, {name}!</h1><p><a href="/">Back to the form</a></p></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/":
            self.reply(FORM)
        elif url.path == "/result":
            name = parse_qs(url.query).get("name", [""])[0]
            self.reply(RESULT.format(name=html.escape(name)), cookie="visited=yes; Path=/")
        else:
            self.send_error(404)

    def reply(self, body: str, cookie: str | None = None) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """The base URL of the two-page site, served from a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_form_submit_screenshot_requests_and_keyboard(site: str, request: pytest.FixtureRequest) -> None:
    with Browser(artifacts_dir(request)) as browser:
        browser.open(site + "/")
        assert browser.title == "Form"
        assert browser.execute_script("return window.innerWidth") == 1280
        assert [e.tag_name for e in browser.find_all("form input, form button")] == ["input", "button"]
        assert browser.tab_order(3) == ['input#name "Your name"', 'button "Send"', 'a "Elsewhere"']

        browser.type("#name", "Ada <Lovelace>")
        browser.submit("button[type=submit]")
        assert browser.title == "Result"
        assert browser.url == site + "/result?name=Ada+%3CLovelace%3E"
        assert "Hello, Ada <Lovelace>!" in browser.text()
        assert {(c["name"], c["value"]) for c in browser.cookies()} == {("visited", "yes")}

        shot = browser.screenshot("result")
        assert shot == artifacts_dir(request) / "result.png"
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

        urls = browser.requested_urls()
        assert site + "/" in urls and site + "/result?name=Ada+%3CLovelace%3E" in urls
        assert all(u.startswith("http://127.0.0.1:") or u.startswith("data:") for u in urls), urls
        assert browser.requested_urls() == []  # drained

        assert browser.console_errors() == []
        browser.execute_script("console.error('boom')")
        assert any("boom" in message for message in browser.console_errors())
        browser.no_dialog()
        assert not browser.alerts_seen()

        browser.execute_script("document.querySelector('a').onclick = e => { e.preventDefault(); alert('hi'); }")
        browser.click("a")  # the click notices (and dismisses) the dialog it opened
        assert browser.alerts_seen() and browser.dialogs == ["hi"]
        assert browser.title == "Result"  # still usable
        with pytest.raises(AssertionError):
            browser.no_dialog()


def test_mobile_window(site: str, request: pytest.FixtureRequest) -> None:
    with Browser(artifacts_dir(request), mobile=True) as browser:
        browser.open(site + "/")
        assert browser.execute_script("return window.innerWidth") <= 390
        assert browser.screenshot("form").exists()
