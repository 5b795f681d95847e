"""Hostile clients of the login routes, in-process: session floods, login CSRF, user enumeration."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
import pytest_twisted

from nopard.auth import weblogin
from nopard.web import browser
from tests.unit.route_harness import InProcess, basic, build
from tests.unit.test_routes_accounts import post_form, web_login

FLOODER = "127.0.0.2"
FORM = "application/x-www-form-urlencoded"


def held(app: InProcess, address: str | None = None) -> int:
    """The npm login sessions nopard holds (of ``address``)."""
    return app.sessions.held(weblogin.POOL, address)


async def flood(app: InProcess, count: int, address: str = FLOODER) -> None:
    """``count`` anonymous `POST /-/v1/login` from ``address``, each answered (never refused)."""
    for _ in range(count):
        answer = await app.call("POST", "/-/v1/login", X_Test_Peer=address)
        assert answer.status == 200, answer.body


# Item 3: login sessions cannot be exhausted --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_session_flood_from_one_address_leaves_another_address_a_working_npm_login(tmp_path: Path) -> None:
    """1,050 sessions from one address: it holds only its own few, and npm login from another works."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    await flood(app, weblogin.MAX_SESSIONS + 50)
    assert held(app, FLOODER) == weblogin.MAX_PER_ADDRESS
    sent, done = await web_login(app, "secret-pw", X_Test_Peer="127.0.0.1")
    assert sent.status == 200 and b"logged in" in sent.body
    token = (await app.call("GET", done)).json()["token"]
    assert (await app.call("GET", "/-/whoami", token=token)).json() == {"username": "alice"}


@pytest_twisted.ensureDeferred
async def test_a_flood_from_many_addresses_stays_within_the_total_and_a_fresh_client_still_logs_in(
    tmp_path: Path,
) -> None:
    """Sessions from 120 addresses: never more than MAX_SESSIONS held, a new client's session opens and works."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    for n in range(120):
        await flood(app, weblogin.MAX_PER_ADDRESS, f"127.0.1.{n}")
        assert held(app) <= weblogin.MAX_SESSIONS
    assert held(app) == weblogin.MAX_SESSIONS
    sent, done = await web_login(app, "secret-pw", X_Test_Peer="10.0.0.9")
    assert sent.status == 200
    assert "token" in (await app.call("GET", done)).json()
    assert held(app) <= weblogin.MAX_SESSIONS


@pytest_twisted.ensureDeferred
async def test_a_session_whose_form_was_sent_survives_a_flood_from_its_own_address(tmp_path: Path) -> None:
    """Only waiting sessions are evicted: a logged-in one keeps its token for npm's poll."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    sent, done = await web_login(app, "secret-pw", X_Test_Peer=FLOODER)
    assert sent.status == 200
    await flood(app, weblogin.MAX_PER_ADDRESS * 3)
    assert "token" in (await app.call("GET", done)).json()


@pytest_twisted.ensureDeferred
async def test_the_browser_login_after_a_session_flood_gives_a_cookie_that_logs_in(tmp_path: Path) -> None:
    """The browser's own login after 1,000 npm sessions: its cookie names a stored session (logged in)."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    await flood(app, weblogin.MAX_SESSIONS)
    logged = await post_form(app, "/-/web/login", {"username": "alice", "password": "secret-pw"})
    assert logged.status == 303
    cookie = next(part.split(";", 1)[0].strip() for part in logged.headers["set-cookie"].split(",")
                  if "nopard_session=" in part)
    assert b"Signed in as" in (await app.call("GET", "/-/web/", Cookie=cookie)).body


@pytest_twisted.ensureDeferred
async def test_a_session_holds_a_fixed_record_whatever_the_body(tmp_path: Path) -> None:
    """What a session holds does not grow with what the client sends: three fields, no more."""
    app = build(tmp_path)
    started = await app.call("POST", "/-/v1/login", {"create": True, "junk": "x" * 4000})
    session_id = started.json()["loginUrl"].rsplit("/", 1)[1]
    record = await app.sessions.get("login:" + session_id)
    assert record == {"created": app.clock.seconds(), "create": True, "token": None}
    assert held(app) == 1


@pytest_twisted.ensureDeferred
async def test_browser_sessions_are_bounded_per_user(tmp_path: Path) -> None:
    """Logging in again and again keeps at most MAX_SESSIONS_PER_USER browser sessions of that user."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    for _ in range(browser.MAX_SESSIONS_PER_USER + 5):
        app.new_browser()
        logged = await post_form(app, "/-/web/login", {"username": "alice", "password": "secret-pw"})
        assert logged.status == 303
    assert app.sessions.held(browser.SESSION_POOL, "alice") == browser.MAX_SESSIONS_PER_USER


# Item 5: login CSRF ---------------------------------------------------------------------


async def attacker_session(app: InProcess) -> tuple[str, str]:
    """An npm login session the attacker opened: the form's path and the poll's path."""
    started = (await app.call("POST", "/-/v1/login")).json()
    return started["loginUrl"].split("5984", 1)[1], started["doneUrl"].split("5984", 1)[1]


@pytest_twisted.ensureDeferred
async def test_a_cross_site_post_of_the_npm_login_form_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """A form on another site posting the attacker's password to their session: 403, no session, no token."""
    app = build(tmp_path)
    await app.user("mallory", "mallory-pw")
    form, done = await attacker_session(app)
    sent = await app.call("POST", form, raw=urlencode({"username": "mallory", "password": "mallory-pw"}).encode(),
                          Content_Type=FORM, Origin="http://attacker.invalid", Sec_Fetch_Site="cross-site")
    assert sent.status == 403 and b"not sent from nopard" in sent.body
    assert "nopard_session" not in sent.headers.get("set-cookie", "")
    assert (await app.call("GET", done)).status == 202


@pytest.mark.parametrize("headers", [
    {"Sec_Fetch_Site": "cross-site"}, {"Sec_Fetch_Site": "same-site"}, {"Origin": "http://attacker.invalid"},
])
@pytest_twisted.ensureDeferred
async def test_a_form_the_browser_marks_as_from_elsewhere_is_refused_even_with_a_token(
    tmp_path: Path, headers: dict[str, str],
) -> None:
    """Sec-Fetch-Site or Origin naming another site: 403 on the npm login form and the browser login."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    form, done = await attacker_session(app)
    sent = await post_form(app, form, {"username": "alice", "password": "secret-pw"}, **headers)
    assert sent.status == 403 and (await app.call("GET", done)).status == 202
    logged = await post_form(app, "/-/web/login", {"username": "alice", "password": "secret-pw"}, **headers)
    assert logged.status == 403 and "nopard_session" not in logged.headers.get("set-cookie", "")


@pytest_twisted.ensureDeferred
async def test_the_npm_login_form_from_nopards_own_page_still_works(tmp_path: Path) -> None:
    """Same-origin headers, as a browser sends them from nopard's page: logged in."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    form, done = await attacker_session(app)
    sent = await post_form(app, form, {"username": "alice", "password": "secret-pw"},
                           Origin="http://127.0.0.1:5984", Sec_Fetch_Site="same-origin")
    assert sent.status == 200 and "token" in (await app.call("GET", done)).json()


# Item 8: no route tells whether a user exists ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_legacy_login_answers_alike_for_a_known_and_an_unknown_user_once_registration_is_closed(
    tmp_path: Path,
) -> None:
    """npm login --auth-type=legacy / npm adduser: a wrong password and an unknown name, same status and words."""
    app = build(tmp_path, max_users="1")
    await app.user("alice", "secret-pw")
    known = await app.call("PUT", "/-/user/org.couchdb.user:alice", {"name": "alice", "password": "wrong-pw"})
    unknown = await app.call("PUT", "/-/user/org.couchdb.user:nobody", {"name": "nobody", "password": "wrong-pw",
                                                                        "email": "not-an-email"})
    assert (known.status, known.json()) == (unknown.status, unknown.json())
    assert known.status == 401 and "incorrect user name or password" in known.json()["error"]


@pytest_twisted.ensureDeferred
async def test_every_login_route_answers_alike_for_a_known_and_an_unknown_user(tmp_path: Path) -> None:
    """Basic auth, the npm login form and the browser login: the same answer for either name."""
    app = build(tmp_path, max_users="1")
    await app.user("alice", "secret-pw")
    answers = []
    for name in ("alice", "nobody"):
        whoami = await app.call("GET", "/-/whoami", Authorization=basic(name, "wrong-pw"))
        form, _done = await web_login(app, "wrong-pw", user=name)
        page = await post_form(app, "/-/web/login", {"username": name, "password": "wrong-pw"})
        answers.append((whoami.status, whoami.json(), form.status, shown_error(form.body),
                        page.status, shown_error(page.body)))
    assert answers[0] == answers[1]
    assert answers[0][2] == 401 and "incorrect user name or password" in answers[0][3]


def shown_error(page: bytes) -> str:
    """The error a login page shows."""
    found = re.search(r'<p class="error" role="alert">([^<]*)</p>', page.decode())
    assert found, page
    return found.group(1)
