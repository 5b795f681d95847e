"""The browser pages, driven in a real headless Chromium against a real `twistd -n nopard`
(and, for what a browser does not show, plain HTTP). Screenshots land in
test-artifacts/screenshots/<test>/."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.browser import Browser, artifacts_dir
from tests.polling import poll_until
from tests.support import NopardServer, publish_body
from tests.upstream import FakeUpstream

RULES = """
admins = ["root"]

[[packages]]
pattern = "@secret/*"
access = ["root"]
publish = ["root"]
proxy = []

[[packages]]
pattern = "**"
access = ["$all"]
publish = ["$authenticated"]
proxy = ["$all"]
"""
HOSTILE_README = """# Hello web

Some **bold** text and a [link](https://docs.example/guide).

<script>alert("readme")</script>
<img src="logo.png" onerror="alert('img')">
<a href="javascript:alert('href')">click me</a>
[md link](javascript:alert('md'))
<div onmouseover="alert('hover')">hover</div>
![badge](https://badges.example/b.svg)
"""


@pytest.fixture
def site(start_nopard: Callable[..., NopardServer], fake: FakeUpstream, tmp_path: Path) -> NopardServer:
    """A nopard with access rules (root is admin, @secret/* is root's only) mirroring the fake upstream."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return start_nopard({"NOPARD_CONFIG": str(rules), "NOPARD_MAX_USERS": "5", "NOPARD_FORWARDER_URL": fake.url,
                         "NOPARD_STALE_DEADLINE": "1", "NOPARD_UPSTREAM_TIMEOUT": "5"})


def publish_with_readme(server: NopardServer, token: str, name: str, version: str, readme: str,
                        **manifest: str) -> None:
    body = publish_body(name, version, **manifest)
    body["readme"] = readme
    body["versions"][version]["readme"] = readme
    answer = server.request("PUT", "/" + name.replace("/", "%2f"), body, token=token)
    assert answer.status == 201, answer.body


def rendered(server: NopardServer, name: str) -> bytes:
    """The page of ``name`` once its readme is rendered: a first view on a busy machine may show it as text
    ("still being rendered") while the renderer process works."""
    def page() -> bytes | None:
        body = server.request("GET", f"/-/web/package/{name}").body
        return None if b"still being rendered" in body else body

    return poll_until(page, f"the readme of {name} rendered")


def only_local(server: NopardServer, browser: Browser) -> None:
    """The page loaded nothing from anywhere but nopard."""
    urls = browser.requested_urls()
    assert urls and all(url.startswith(server.url) for url in urls), urls


def log_in(browser: Browser, server: NopardServer, user: str, password: str) -> None:
    browser.open(server.url + "-/web/login")
    browser.type("#username", user)
    browser.type("#password", password)
    browser.submit("form.login button[type=submit]")


def test_browse_search_read_log_in_and_out(site: NopardServer, fake: FakeUpstream, request) -> None:
    """An empty registry's start page; then home, search, a package page, login and logout."""
    with Browser(artifacts_dir(request)) as browser:
        browser.open(site.url)
        assert "This nopard is empty so far" in browser.text()
        assert f"npm config set registry {site.url}" in browser.text()
        assert "npm adduser" in browser.text()
        browser.screenshot("start-page")
        only_local(site, browser)

        root, bob = site.token("root", "pw-root"), site.token("bob", "pw-bob")
        publish_with_readme(site, bob, "hello-web", "1.0.0", HOSTILE_README,
                            description='Greets <script>alert("desc")</script>', dependencies={"debug": "^4.0.0"})
        publish_with_readme(site, bob, "hello-web", "1.1.0", HOSTILE_README, deprecated="use 2.x",
                            description='Greets <script>alert("desc")</script>',
                            dependencies={"debug": "^4.0.0", '<img src=x onerror=alert("dep")>': "1.0.0"})
        publish_with_readme(site, root, "@secret/plans", "1.0.0", "# secret plans")
        assert site.request("GET", "/debug").status == 200  # cached from the upstream
        rendered(site, "hello-web")

        browser.open(site.url)
        text = browser.text()
        assert "hello-web" in text and "local" in text
        assert "debug" in text and "cached" in text and re.search(r"metadata (just now|\d+ \w+ ago)", text)
        assert "@secret/plans" not in text
        assert "secret" not in browser.execute_script("return document.documentElement.outerHTML")
        assert "1 published here (local)" in text and "1 mirrored (cached)" in text
        browser.screenshot("home")

        browser.type("#search-q", "hello")
        browser.submit("form.search button[type=submit]")
        assert "Packages matching “hello”" in browser.text()
        assert browser.find_all("table.packages tbody tr") and "debug" not in browser.text()
        browser.screenshot("search")

        browser.click("table.packages a")
        assert browser.url.endswith("/-/web/package/hello-web")
        text = browser.text()
        assert "npm install hello-web" in text
        assert "Greets <script>alert(\"desc\")</script>" in text  # shown as text, not run
        assert "deprecated: use 2.x" in text
        assert '<img src=x onerror=alert("dep")> 1.0.0' in text  # a hostile dependency name, as text
        assert browser.find(".readme h3").text == "Hello web"  # under the page's h1 and h2
        assert browser.find(".readme strong").text == "bold"
        assert browser.execute_script(
            "return document.querySelectorAll('.readme script, [onerror], [onmouseover], a[href^=javascript]').length"
        ) == 0
        browser.no_dialog()
        links = [a.get_attribute("href") for a in browser.find_all("table.versions a")]
        assert links == [f"{site.url}hello-web/-/hello-web-1.1.0.tgz", f"{site.url}hello-web/-/hello-web-1.0.0.tgz"]
        assert "168 B" in text or re.search(r"\d+ B", text)
        browser.screenshot("package")
        only_local(site, browser)
        assert browser.console_errors() == []

        browser.click("a[href$='/-/web/package/debug']")
        assert "cached" in browser.text() and "Metadata last refreshed" in browser.text()
        assert "Refresh now" not in browser.text()  # admins only

        browser.open(site.url + "-/web/package/@secret/plans")
        assert "Not found" in browser.text() and "secret plans" not in browser.text()

        log_in(browser, site, "bob", "wrong")
        assert "Wrong user name or password." in browser.text()
        log_in(browser, site, "bob", "pw-bob")
        assert "Signed in as bob" in browser.text() and "Settings" not in browser.find("nav").text
        session = next(c for c in browser.cookies() if c["name"] == "nopard_session")
        assert session["httpOnly"] and session["sameSite"] == "Lax"
        browser.screenshot("logged-in")
        browser.open(site.url + "-/web/settings")
        assert "Only admins" in browser.text()

        browser.open(site.url)
        browser.submit("form.inline button[type=submit]")
        assert "Log in" in browser.text() and "Signed in" not in browser.text()
        assert not [c for c in browser.cookies() if c["name"] == "nopard_session"]
        browser.screenshot("logged-out")


def test_admin_refreshes_a_mirrored_package_and_reads_the_status(site: NopardServer, fake: FakeUpstream,
                                                                   request) -> None:
    site.token("root", "pw-root")
    document = site.request("GET", "/debug").json()
    latest = document["dist-tags"]["latest"]
    tarball = site.request("GET", document["versions"][latest]["dist"]["tarball"][len(site.url) - 1:])
    assert tarball.status == 200
    with Browser(artifacts_dir(request)) as browser:
        log_in(browser, site, "root", "pw-root")
        assert "Settings" in browser.find("nav").text
        browser.open(site.url + "-/web/package/debug")
        text = browser.text()
        assert f"Tarballs stored here: 1 of {len(document['versions'])} versions" in text
        row = next(r.text for r in browser.find_all("table.versions tbody tr") if r.text.startswith(latest + " "))
        assert f"{len(tarball.body) / 1024:.1f} KiB" in row
        assert text.count("not stored here") == len(document["versions"]) - 1
        fake.reset()
        browser.submit("section form button[type=submit]")
        assert browser.url.endswith("/-/web/package/debug")
        assert ["GET", "/debug"] in fake.stats()["requests"]
        assert "Metadata last refreshed from the upstream: just now" in browser.text()

        browser.click("nav a[href$='/-/web/settings']")
        assert browser.find("label[for=setting-auto_forward]").text == "NOPARD_AUTO_FORWARD"
        assert "From: default." in browser.find("#setting-auto_forward-help").text
        assert "From: environment." in browser.find("#setting-forwarder_url-help").text
        browser.screenshot("settings")
        browser.type("#setting-meta_ttl", "-3", clear=True)
        browser.submit("form.settings button[type=submit]")
        assert "NOPARD_META_TTL" in browser.find("[role=alert]").text
        assert browser.find("#setting-meta_ttl").get_attribute("aria-invalid") == "true"
        browser.screenshot("settings-refused")
        assert site.request("GET", "/-/nopard/settings", token=site.token("root", "pw-root")).status == 200
        browser.open(site.url + "-/web/settings")
        assert browser.find("#setting-meta_ttl").get_attribute("value") == "300"  # nothing was changed
        browser.type("#setting-auto_forward", "no", clear=True)
        browser.submit("form.settings button[type=submit]")
        assert "Settings saved." in browser.text()
        assert "From: settings page." in browser.find("#setting-auto_forward-help").text
        unknown = site.request("GET", "/ms")  # never fetched: with auto-forward off it is not looked for
        assert unknown.status == 404 and "NOPARD_AUTO_FORWARD is off" in unknown.json()["error"]
        assert ["GET", "/ms"] not in fake.stats()["requests"]

        browser.open(site.url + "-/web/status")
        text = browser.text()
        assert f"{fake.url.rstrip('/')}" in text and "healthy" in text
        assert "Hit ratio:" in text and "Storage used:" in text and "Sync worker" in text
        browser.screenshot("status")
        only_local(site, browser)


def test_pages_work_on_a_phone_and_with_the_keyboard(site: NopardServer, request) -> None:
    """No sideways scrolling at 390 px; TAB reaches the skip link, navigation and search in order."""
    bob = site.token("bob", "pw-bob")
    publish_with_readme(site, bob, "wide-package-name-for-a-narrow-screen", "1.0.0", "# Readme\n\n" + "word " * 200)
    rendered(site, "wide-package-name-for-a-narrow-screen")
    with Browser(artifacts_dir(request), mobile=True) as browser:
        for path in ("", "-/web/package/wide-package-name-for-a-narrow-screen", "-/web/login", "-/web/status"):
            browser.open(site.url + path)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (path, overflow)
            unlabelled = browser.execute_script(
                "return Array.from(document.querySelectorAll('input:not([type=hidden]), button'))"
                ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
                " && !e.textContent.trim()).map(e => e.outerHTML)")
            assert unlabelled == [], (path, unlabelled)
            assert len(browser.find_all("h1")) == 1, path
        browser.screenshot("phone-status")
        browser.open(site.url)
        order = browser.tab_order(6)
        assert order[0].startswith("a") and "Skip to content" in order[0]
        assert any("Packages" in item for item in order) and any("Log in" in item for item in order)
        assert any("input#search-q" in item for item in order)
        browser.screenshot("phone-home")


def test_browsers_asking_for_a_package_are_sent_to_its_page(site: NopardServer) -> None:
    bob = site.token("bob", "pw-bob")
    publish_with_readme(site, bob, "hello-web", "1.0.0", "# hi")
    html_first = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    answer = site.request("GET", "/hello-web", headers=html_first)
    assert answer.status == 302 and answer.headers["location"] == "/-/web/package/hello-web"
    npm_like = site.request("GET", "/hello-web", headers={"Accept": "application/json"})
    assert npm_like.status == 200 and npm_like.json()["name"] == "hello-web"
    assert site.request("GET", "/", headers={"Accept": "application/json"}).json()["registry"] == "nopard"
    scoped = site.request("GET", "/@secret%2fplans", headers=html_first)
    assert scoped.status == 302 and scoped.headers["location"] == "/-/web/package/@secret/plans"
    assert site.request("GET", "/-/web/package/@secret/plans").status == 404  # hidden: as if missing
    for path in ("/-/web/no-such-page", "/-/web/package/", "/-/web/package/%3Cscript%3E"):
        missing = site.request("GET", path)
        assert missing.status == 404 and b"<script>" not in missing.body, path
    assert site.request("DELETE", "/-/web/login").status == 405
    icon = site.request("GET", "/-/web/static/favicon.png")
    assert icon.status == 200 and icon.headers["content-type"] == "image/png" and icon.body[:4] == b"\x89PNG"


def test_forms_refuse_cross_site_posts_and_cookies_follow_https(site: NopardServer) -> None:
    site.token("bob", "pw-bob")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    forged = site.request("POST", "/-/web/login", "username=bob&password=pw-bob", headers=form)
    assert forged.status == 403 and "nopard_session" not in forged.headers.get("set-cookie", "")
    page = site.request("GET", "/-/web/login", headers={"X-Forwarded-Proto": "https"})
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    token = re.search(r'name="csrf" value="([^"]+)"', page.body.decode()).group(1)
    csrf_cookie = cookie.split(";", 1)[0]
    logged = site.request("POST", "/-/web/login", f"username=bob&password=pw-bob&csrf={token}",
                          headers={**form, "Cookie": csrf_cookie, "X-Forwarded-Proto": "https"})
    assert logged.status == 303
    session = logged.headers["set-cookie"]
    assert session.startswith("nopard_session=") and "Secure" in session and "SameSite=lax" in session
    plain = site.request("GET", "/-/web/login")
    assert "Secure" not in plain.headers["set-cookie"]
    assert "default-src 'none'" in plain.headers["content-security-policy"]


def test_npm_login_uses_the_same_login_page_and_logs_the_browser_in(site: NopardServer) -> None:
    site.token("bob", "pw-bob")
    opened = site.request("POST", "/-/v1/login", {})
    login_url = opened.json()["loginUrl"]
    page = site.request("GET", login_url[len(site.url) - 1:])
    assert page.status == 200 and b"Log in to nopard" in page.body and b'class="skip"' in page.body
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.body.decode()).group(1)
    posted = site.request("POST", login_url[len(site.url) - 1:], f"username=bob&password=pw-bob&csrf={csrf}",
                          headers={"Content-Type": "application/x-www-form-urlencoded",
                                   "Cookie": page.headers["set-cookie"].split(";", 1)[0]})
    assert posted.status == 200 and b"You are logged in as bob" in posted.body
    session = posted.headers["set-cookie"].split(";", 1)[0]
    home = site.request("GET", "/", headers={"Accept": "text/html", "Cookie": session})
    assert b"Signed in as <strong>bob</strong>" in home.body


def test_a_hostile_readme_is_rendered_once_in_its_own_process_and_logins_do_not_wait(site: NopardServer) -> None:
    """Issue 13 item 1: 200,000 `*_` (seconds of markdown-it) while two pages show it and bob logs in.

    The pages answer with the text and a note, the login answers meanwhile, the rendering is killed
    at its budget and the readme stays escaped text, never rendered again.
    """
    bob = site.token("bob", "pw-bob")
    publish_with_readme(site, bob, "hostile-readme", "1.0.0", "<b>bold</b> & " + "*_" * 200_000)
    with ThreadPoolExecutor(2) as pool:
        views = [pool.submit(site.request, "GET", "/-/web/package/hostile-readme") for _ in range(2)]
        assert site.login("bob", "pw-bob").status == 201
        for view in views:
            answer = view.result()
            assert answer.status == 200 and b"shown as plain text" in answer.body
    def given_up() -> bytes | None:
        body = site.request("GET", "/-/web/package/hostile-readme").body
        return body if b"took more than 2 s to render: it is shown as plain text" in body else None

    body = poll_until(given_up, "the rendering to be given up")
    assert b'<pre class="readme-text">&lt;b&gt;bold&lt;/b&gt; &amp; *_*_' in body and b"<b>bold</b>" not in body
    assert site.login("bob", "pw-bob").status == 201
    publish_with_readme(site, bob, "fine-readme", "1.0.0", "# Still *rendered*")
    assert b"<h3>Still <em>rendered</em></h3>" in rendered(site, "fine-readme")
