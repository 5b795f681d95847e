"""Account routes in-process: login, whoami, user profiles, tokens, npm's web login."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import pytest_twisted

from tests.support import Response
from tests.unit.route_harness import InProcess, basic, build


@pytest_twisted.ensureDeferred
async def test_registered_user_is_who_their_token_says(tmp_path: Path) -> None:
    """npm adduser then npm whoami: the token names the user."""
    app = build(tmp_path)
    token = await app.user("alice")
    answer = await app.call("GET", "/-/whoami", token=token)
    assert answer.json() == {"username": "alice"}


@pytest_twisted.ensureDeferred
async def test_whoami_without_login_is_401(tmp_path: Path) -> None:
    """npm whoami without a token is 401 with a challenge."""
    answer = await build(tmp_path).call("GET", "/-/whoami")
    assert answer.status == 401 and answer.headers["www-authenticate"].endswith('realm="nopard"')


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_401(tmp_path: Path) -> None:
    """Logging in again with another password is refused (BadCredentials: 401)."""
    app = build(tmp_path)
    await app.user("alice")
    answer = await app.call("PUT", "/-/user/org.couchdb.user:alice", {"name": "alice", "password": "wrong-pw"})
    assert answer.status == 401 and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_bad_token_is_401(tmp_path: Path) -> None:
    """A token nopard never issued is refused, not taken as anonymous."""
    answer = await build(tmp_path).call("GET", "/-/whoami", token="npm_not-a-real-token-at-all-000000")
    assert answer.status == 401


@pytest_twisted.ensureDeferred
async def test_basic_auth_identifies_the_user(tmp_path: Path) -> None:
    """A user name and password in basic auth are as good as a token."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    answer = await app.call("GET", "/-/whoami", Authorization=basic("alice", "secret-pw"))
    assert answer.json() == {"username": "alice"}


@pytest_twisted.ensureDeferred
async def test_user_profile_needs_a_login(tmp_path: Path) -> None:
    """Looking up a user anonymously is 401; logged in, their name and email."""
    app = build(tmp_path)
    token = await app.user("alice")
    assert (await app.call("GET", "/-/user/org.couchdb.user:alice")).status == 401
    answer = await app.call("GET", "/-/user/org.couchdb.user:alice", token=token)
    assert answer.json()["name"] == "alice"


@pytest_twisted.ensureDeferred
async def test_unknown_user_is_404(tmp_path: Path) -> None:
    """Looking up a user nobody registered is 404."""
    app = build(tmp_path)
    token = await app.user("alice")
    answer = await app.call("GET", "/-/user/org.couchdb.user:nobody", token=token)
    assert answer.status == 404


@pytest_twisted.ensureDeferred
async def test_created_token_is_listed_and_works(tmp_path: Path) -> None:
    """npm token create: the new token identifies the user and shows in npm token list."""
    app = build(tmp_path)
    token = await app.user("alice", "secret-pw")
    created = await app.call("POST", "/-/npm/v1/tokens", {"password": "secret-pw"}, token=token)
    assert created.status == 200
    assert (await app.call("GET", "/-/whoami", token=created.json()["token"])).json() == {"username": "alice"}
    listed = await app.call("GET", "/-/npm/v1/tokens", token=token)
    assert listed.json()["total"] == 2


@pytest_twisted.ensureDeferred
async def test_read_only_token_cannot_publish(tmp_path: Path) -> None:
    """A read-only token reads but its writes are 403."""
    app = build(tmp_path)
    token = await app.user("alice", "secret-pw")
    created = await app.call("POST", "/-/npm/v1/tokens", {"password": "secret-pw", "readonly": True}, token=token)
    answer = await app.call("PUT", "/-/package/demo/dist-tags/beta", "1.0.0", token=created.json()["token"])
    assert answer.status == 403


@pytest_twisted.ensureDeferred
async def test_logged_out_token_no_longer_works(tmp_path: Path) -> None:
    """npm logout revokes the token: it is then refused."""
    app = build(tmp_path)
    token = await app.user("alice")
    assert (await app.call("DELETE", f"/-/user/token/{token}", token=token)).status == 200
    assert (await app.call("GET", "/-/whoami", token=token)).status == 401


async def post_form(app: InProcess, path: str, fields: dict[str, str], **headers: str) -> Response:
    """What a browser does: load the page, then post its form back (the client keeps the CSRF cookie)."""
    page = await app.call("GET", path, **headers)
    found = re.search(r'name="csrf" value="([^"]+)"', page.body.decode())
    assert found, page.body
    return await app.call("POST", path, raw=urlencode({**fields, "csrf": found.group(1)}).encode(),
                          Content_Type="application/x-www-form-urlencoded", **headers)


async def web_login(app: InProcess, password: str, user: str = "alice", **headers: str) -> tuple[Response, str]:
    """Start an npm web login and post its form as ``user``: the form's answer, and the path npm polls."""
    started = (await app.call("POST", "/-/v1/login", **headers)).json()
    done = started["doneUrl"].split("5984", 1)[1]
    assert (await app.call("GET", done)).status == 202
    form = started["loginUrl"].split("5984", 1)[1]
    sent = await post_form(app, form, {"username": user, "password": password})
    return sent, done


@pytest_twisted.ensureDeferred
async def test_web_login_gives_npm_the_token_once_the_form_is_sent(tmp_path: Path) -> None:
    """npm login --auth-type=web: 202 while waiting, then the token once the form was sent."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    sent, done = await web_login(app, "secret-pw")
    assert sent.status == 200 and b"logged in" in sent.body
    token = (await app.call("GET", done)).json()["token"]
    assert (await app.call("GET", "/-/whoami", token=token)).json() == {"username": "alice"}


@pytest_twisted.ensureDeferred
async def test_web_login_form_with_a_wrong_password_is_401(tmp_path: Path) -> None:
    """The npm login form posted with a wrong password is shown again, answered 401, no challenge."""
    app = build(tmp_path)
    await app.user("alice", "secret-pw")
    sent, _done = await web_login(app, "nope")
    assert sent.status == 401 and sent.headers["content-type"].startswith("text/html")
    assert "www-authenticate" not in sent.headers


@pytest_twisted.ensureDeferred
async def test_unknown_web_login_session_is_404(tmp_path: Path) -> None:
    """npm polling a login session nopard does not know is 404."""
    answer = await build(tmp_path).call("GET", "/-/v1/done/no-such-session")
    assert answer.status == 404
