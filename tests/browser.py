"""Drive nopard's browser pages in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by scripts/test) through selenium.

A test takes pytest's ``request`` fixture for the screenshot directory::

    from tests.browser import Browser, artifacts_dir

    def test_login_page(nopard, request) -> None:
        with Browser(artifacts_dir(request)) as browser:
            browser.open(nopard.url + "/-/login")
            browser.type("#username", "alice")
            browser.submit("button[type=submit]")
            assert "Signed in" in browser.text()
            browser.screenshot("signed-in")    # test-artifacts/screenshots/<test>/signed-in.png
            assert all(url.startswith(nopard.url) for url in browser.requested_urls())
            assert browser.console_errors() == []
            browser.no_dialog()

``width``/``height`` (``mobile=True``: 390x844) size the window; as in a desktop Chromium the
page's viewport (``window.innerWidth`` x ``innerHeight``) is as wide but about 140px shorter.
Screenshots land in ``test-artifacts/screenshots/<test name>/`` (gitignored, emptied when the
test starts); when the ``with`` block ends with an exception a ``failure.png`` is saved there too.
Every browser has its own temporary profile, removed when it closes, and talks to nothing but
the pages it is sent to (no first-run, sync, component updates or background networking).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    UnexpectedAlertPresentException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.polling import PollTimeout, poll_until

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MOBILE_SIZE = (390, 844)
TIMEOUT = 15.0


_emptied: set[str] = set()


def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """``<repo>/test-artifacts/screenshots/<test name>``, created: where a test's screenshots go.
    The first call in a test empties it, so no screenshot from an earlier run is left there."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_") or "test"
    path = REPO / "test-artifacts" / "screenshots" / name
    if request.node.nodeid not in _emptied:
        _emptied.add(request.node.nodeid)
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


# A description of the focused element: tag, then #id or [name=...], then its text (for a form
# control, its label's), whitespace collapsed.
_DESCRIBE_FOCUS = """
const el = document.activeElement;
if (!el || el === document.body || el === document.documentElement) return "body";
let out = el.tagName.toLowerCase();
if (el.id) out += "#" + el.id;
else if (el.getAttribute("name")) out += "[name=" + el.getAttribute("name") + "]";
let text = "";
if (el.labels && el.labels.length) text = Array.from(el.labels, l => l.innerText).join(" ");
if (!text.trim()) text = el.innerText || el.getAttribute("aria-label") || el.value
    || el.getAttribute("title") || el.getAttribute("placeholder") || "";
text = text.replace(/\\s+/g, " ").trim();
if (text.length > 60) text = text.slice(0, 57) + "...";
return text ? out + ' "' + text + '"' : out;
"""

# Put the sequential focus navigation starting point at the very top of the document: focus a
# throwaway element placed first in <body>, then remove it (Chromium keeps the starting point
# where the removed element was), so the next TAB reaches the page's first focusable element.
_FOCUS_TOP = """
if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
const marker = document.createElement("span");
marker.tabIndex = -1;
document.body.insertBefore(marker, document.body.firstChild);
marker.focus({preventScroll: true});
marker.remove();
window.scrollTo(0, 0);
"""


class Browser:
    """A headless Chromium driven by chromedriver; a context manager that quits it on exit."""

    def __init__(self, artifacts: Path, width: int = 1280, height: int = 900, mobile: bool = False) -> None:
        self.artifacts = Path(artifacts)
        self.dialogs: list[str] = []  # the text of every JS alert/confirm/prompt seen, in order
        self._urls: list[str] = []
        self._profile = Path(tempfile.mkdtemp(prefix="nopard-chromium-"))
        if mobile:
            width, height = MOBILE_SIZE
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",  # the tests run as root
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--metrics-recording-only",
            "--password-store=basic",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        # Leave dialogs open instead of dismissing them behind our back: _check_dialog() records
        # and dismisses them after every action.
        options.set_capability("unhandledPromptBehavior", "ignore")
        try:
            self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        except BaseException:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        try:
            self.driver.set_page_load_timeout(TIMEOUT)
            self.driver.set_script_timeout(TIMEOUT)
            self.driver.set_window_size(width, height)
            # Chromium starts on its new tab page: leave it, and forget what it loaded and logged.
            self.driver.get("about:blank")
            self.requested_urls()
            self.console_errors()
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            try:
                self._check_dialog()
                self.screenshot("failure")
            except Exception:
                pass
        self.close()

    def close(self) -> None:
        """Quit Chromium and chromedriver and remove the temporary profile."""
        driver = getattr(self, "driver", None)
        try:
            if driver is not None:
                driver.quit()
        finally:
            self.driver = None  # type: ignore[assignment]
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- navigation and actions -------------------------------------------------------------

    def open(self, url: str) -> None:
        """Load ``url`` and wait for it to finish loading."""
        self.driver.get(url)
        self._check_dialog()

    def find(self, css: str) -> WebElement:
        """The first element matching ``css``; NoSuchElementException when there is none."""
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        """Every element matching ``css``, possibly none."""
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def type(self, css: str, text: str, clear: bool = False) -> None:
        """Type ``text`` into the element matching ``css`` as keystrokes (after its current value
        unless ``clear``)."""
        element = self.find(css)
        if clear:
            element.clear()
        element.send_keys(text)
        self._check_dialog()

    def click(self, css: str) -> None:
        """Click the element matching ``css`` (does not wait for a navigation it starts)."""
        self.find(css).click()
        self._check_dialog()

    def submit(self, css: str) -> None:
        """Click the submit button matching ``css`` and wait for the next page to load: the old
        <html> gone stale and the new document's readyState 'complete'."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.find(css).click()

        def loaded() -> bool:
            if self._check_dialog():
                raise AssertionError(f"submitting {css!r} opened a dialog: {self.dialogs[-1]!r}")
            try:
                _ = old.tag_name  # raises once the old document is gone
            except UnexpectedAlertPresentException:
                return False
            except (StaleElementReferenceException, WebDriverException):
                # Mid-navigation chromedriver may also answer "Node with given id does not
                # belong to the document": the old document is gone all the same.
                try:
                    return self.driver.execute_script("return document.readyState") == "complete"
                except WebDriverException:  # an alert, or the new document not ready for scripts yet
                    return False
            return False

        try:
            poll_until(loaded, f"submitting {css!r} to load a new page", TIMEOUT)
        except PollTimeout:
            raise TimeoutError(f"submitting {css!r} did not load a new page within {TIMEOUT}s") from None

    def execute_script(self, script: str, *args: Any) -> Any:
        """Run JavaScript in the page and return its result."""
        return self.driver.execute_script(script, *args)

    # -- what the page shows ----------------------------------------------------------------

    def text(self) -> str:
        """The visible text of the page's body."""
        return self.driver.find_element(By.TAG_NAME, "body").text

    @property
    def title(self) -> str:
        return self.driver.title

    @property
    def url(self) -> str:
        return self.driver.current_url

    def cookies(self) -> list[dict[str, Any]]:
        """The cookies visible to the current page, as selenium reports them (name, value,
        path, domain, secure, httpOnly, sameSite, expiry)."""
        return self.driver.get_cookies()

    def screenshot(self, name: str) -> Path:
        """Save the window as ``<artifacts>/<name>.png`` and return its path."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"could not save the screenshot {path}")
        return path

    # -- what the page did ------------------------------------------------------------------

    def requested_urls(self) -> list[str]:
        """Every URL the browser requested for its pages since the last call (documents,
        stylesheets, scripts, images, fetches, data: URLs included), in order; chrome:// URLs,
        the browser's own pages, left out."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if not url.startswith("chrome://"):
                    self._urls.append(url)
        urls, self._urls = self._urls, []
        return urls

    def console_errors(self) -> list[str]:
        """The browser log's SEVERE entries since the last call: console.error calls, uncaught
        exceptions, failed loads (a 404 stylesheet, a blocked script)."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def alerts_seen(self) -> bool:
        """Whether any JS alert/confirm/prompt appeared (checked after every action, and now)."""
        self._check_dialog()
        return bool(self.dialogs)

    def no_dialog(self) -> None:
        """Assert that no JS alert/confirm/prompt is open now or appeared before."""
        self._check_dialog()
        assert not self.dialogs, f"JavaScript dialogs appeared: {self.dialogs!r}"

    def _check_dialog(self) -> bool:
        """Record and dismiss an open dialog; whether there was one."""
        try:
            alert = self.driver.switch_to.alert
            self.dialogs.append(alert.text)
            alert.dismiss()
            return True
        except NoAlertPresentException:
            return False

    # -- keyboard use -----------------------------------------------------------------------

    def tab_order(self, n: int) -> list[str]:
        """Press TAB ``n`` times from the top of the page and describe each element focused in
        turn, e.g. ``input#name "Your name"``, ``button "Send"``, ``a "Home"`` (``body`` once
        focus has left the page)."""
        self.driver.execute_script(_FOCUS_TOP)
        seen = []
        for _ in range(n):
            ActionChains(self.driver).send_keys(Keys.TAB).perform()
            seen.append(self.driver.execute_script(_DESCRIBE_FOCUS))
        return seen
