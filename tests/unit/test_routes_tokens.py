"""Tokens as npm token create asks for them, in-process: expiry, address ranges, names and
descriptions, packages; the web login's session token and its lifetime."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from tests.support import publish_body
from tests.unit.route_harness import InProcess, build
from tests.unit.test_routes_accounts import web_login

PASSWORD = "secret-pw"
DAY = 86400


async def create(app: InProcess, token: str, **fields: object) -> dict:
    """npm token create with ``fields``: the new token's object."""
    created = await app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD, **fields}, token=token)
    assert created.status == 200, created.body
    return created.json()


def token_files(tmp_path: Path) -> int:
    """How many token records the store holds."""
    return len(list((tmp_path / "registry" / "tokens").glob("*.json")))


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_refused_and_removed(tmp_path: Path) -> None:
    """npm token create --expires 1: it works for a day, then is 401 saying it expired, and its record goes."""
    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    created = await create(app, login, expires=1)
    assert created["expires"]
    app.clock.advance(DAY - 60)
    assert (await app.call("GET", "/-/whoami", token=created["token"])).status == 200
    held = token_files(tmp_path)
    app.clock.advance(61)
    refused = await app.call("GET", "/-/whoami", token=created["token"])
    assert refused.status == 401 and "expired" in refused.json()["error"]
    assert token_files(tmp_path) == held - 1


@pytest_twisted.ensureDeferred
async def test_the_sweep_removes_expired_tokens_nobody_used(tmp_path: Path) -> None:
    """TokenStore.sweep (hourly in nopard) removes expired records and keeps live ones."""
    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    await create(app, login, expires=1)
    await create(app, login, expires=3)
    app.clock.advance(2 * DAY)
    assert await app.accounts.tokens.sweep() == 1
    assert token_files(tmp_path) == 2  # the login's and the three-day one


@pytest_twisted.ensureDeferred
async def test_a_token_outside_its_cidr_whitelist_is_403(tmp_path: Path) -> None:
    """--cidr 10.0.0.0/8: from 127.0.0.1 it is 403 naming the ranges (X-Forwarded-For is not believed);
    from 10.1.2.3 it works."""
    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    created = await create(app, login, cidr_whitelist=["10.0.0.0/8"])
    assert created["cidr_whitelist"] == ["10.0.0.0/8"]
    refused = await app.call("GET", "/-/whoami", token=created["token"], X_Forwarded_For="10.1.2.3")
    assert refused.status == 403 and "10.0.0.0/8" in refused.json()["error"]
    inside = await app.call("GET", "/-/whoami", token=created["token"], X_Test_Peer="10.1.2.3")
    assert inside.json() == {"username": "alice"}


@pytest_twisted.ensureDeferred
async def test_token_list_shows_what_create_was_given(tmp_path: Path) -> None:
    """npm token list: name, description, expiry, ranges and read-only, never the token."""
    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    created = await create(app, login, name="ci", description="the build machine", expires=30,
                           cidr_whitelist=["192.168.0.0/16"], packages_and_scopes_permission="read-only")
    listed = (await app.call("GET", "/-/npm/v1/tokens", token=login)).json()["objects"]
    shown = next(entry for entry in listed if entry["key"] == created["key"])
    assert (shown["name"], shown["description"], shown["expires"], shown["cidr_whitelist"], shown["readonly"]) == (
        "ci", "the build machine", created["expires"], ["192.168.0.0/16"], True)
    assert shown["token"] != created["token"]


@pytest.mark.parametrize("fields", [
    {"expires": 0}, {"expires": "1"}, {"expires": 10_000}, {"cidr_whitelist": ["10.0.0.300/8"]},
    {"cidr_whitelist": "10.0.0.0/8"}, {"name": "x" * 500}, {"packages": ["Not A Name!"]},
])
@pytest_twisted.ensureDeferred
async def test_malformed_token_requests_are_400_and_make_nothing(tmp_path: Path, fields: dict) -> None:
    """Bad expiry, ranges, names or packages: 400, no token made."""
    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    held = token_files(tmp_path)
    answer = await app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD, **fields}, token=login)
    assert answer.status == 400 and answer.json()["error"]
    assert token_files(tmp_path) == held


@pytest_twisted.ensureDeferred
async def test_a_token_for_some_packages_writes_only_those(tmp_path: Path) -> None:
    """--packages pkg --scopes @team: it publishes pkg and @team/x, and is 403 for other names."""
    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    limited = (await create(app, login, packages=["pkg"], scopes=["@team"]))["token"]
    for name in ("pkg", "@team/x"):
        assert (await app.call("PUT", f"/{name.replace('/', '%2f')}", publish_body(name, "1.0.0"),
                               token=limited)).status == 201
    other = await app.call("PUT", "/other", publish_body("other", "1.0.0"), token=limited)
    assert other.status == 403 and "pkg" in other.json()["error"]


@pytest_twisted.ensureDeferred
async def test_the_web_login_token_lives_the_session_ttl(tmp_path: Path) -> None:
    """npm login (web): its token is listed with an expiry NOPARD_SESSION_TOKEN_TTL away and refused after."""
    app = build(tmp_path, session_token_ttl="3600")
    await app.user("alice", PASSWORD)
    _sent, done = await web_login(app, PASSWORD)
    token = (await app.call("GET", done)).json()["token"]
    listed = (await app.call("GET", "/-/npm/v1/tokens", token=token)).json()["objects"]
    expiries = [entry["expires"] for entry in listed if entry["token"] == token[:8]]
    assert len(expiries) == 1 and expiries[0] is not None
    app.clock.advance(3599)
    assert (await app.call("GET", "/-/whoami", token=token)).status == 200
    app.clock.advance(2)
    assert (await app.call("GET", "/-/whoami", token=token)).status == 401


@pytest_twisted.ensureDeferred
async def test_the_token_sweep_runs_every_hour(tmp_path: Path) -> None:
    """TokenSweep, as nopard.service starts it: an expired token's record is gone within the hour after."""
    from twisted.logger import Logger

    from nopard.auth.tokens import SWEEP_SECONDS, TokenSweep

    app = build(tmp_path)
    login = await app.user("alice", PASSWORD)
    await create(app, login, expires=1)
    held = token_files(tmp_path)
    sweep = TokenSweep(app.accounts.tokens, Logger(namespace="nopard.test"), app.clock)
    sweep.startService()
    try:
        app.clock.advance(DAY + SWEEP_SECONDS)
        for _ in range(20):  # the store's work runs at once; let the sweep's callbacks settle
            await app.call("GET", "/-/ping")
        assert token_files(tmp_path) == held - 1
    finally:
        sweep.stopService()
