"""Two-factor authentication in-process: npm profile enable-2fa / disable-2fa, one-time passwords
on logins and writes, replays and wrong codes, recovery codes, npm access set mfa=..."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest_twisted
from twisted.internet import reactor, task

from nopard.auth.twofactor import TwoFactor, accept, matching_step
from tests.support import publish_body
from tests.unit.route_harness import InProcess, basic, build
from tests.unit.test_routes_accounts import post_form

PASSWORD = "secret-pw"


def code(secret: str, app: InProcess, steps: int = 0) -> str:
    """The authenticator's code at the app's clock (``steps`` of 30 s later or earlier)."""
    return pyotp.TOTP(secret).at(app.clock.seconds() + 30 * steps)


class YieldingReads:
    """A store whose reads answer a turn of the reactor later, as a real thread pool does, so two
    requests can interleave between a read and the write after it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(self, key: str) -> bytes | None:
        """The inner store's read, answered one reactor turn later."""
        data = await self._inner.read(key)
        await task.deferLater(reactor, 0, lambda: None)
        return data


async def enable(app: InProcess, token: str, mode: str = "auth-and-writes") -> tuple[str, list[str]]:
    """npm profile enable-2fa ``mode``: the secret of the otpauth URL, and the recovery codes."""
    started = await app.call("POST", "/-/npm/v1/user", {"tfa": {"mode": mode, "password": PASSWORD}}, token=token)
    assert started.status == 200, started.body
    url = started.json()["tfa"]
    assert url.startswith("otpauth://totp/")
    secret = parse_qs(urlparse(url).query)["secret"][0]
    confirmed = await app.call("POST", "/-/npm/v1/user", {"tfa": [code(secret, app)]}, token=token)
    assert confirmed.status == 200, confirmed.body
    app.clock.advance(30)  # the next write needs the next code: the first one was used
    return secret, confirmed.json()["tfa"]


async def publish(app: InProcess, token: str, version: str, otp: str | None = None, name: str = "pkg") -> int:
    """npm publish (with --otp when given): the status."""
    headers = {"npm-otp": otp} if otp else {}
    return (await app.call("PUT", f"/{name}", publish_body(name, version), token=token, **headers)).status


@pytest_twisted.ensureDeferred
async def test_enable_2fa_hands_out_a_secret_then_recovery_codes(tmp_path: Path) -> None:
    """enable-2fa: pending with an otpauth URL, on after the first code, recovery codes shown; the
    profile shows the mode, never the secret, and the record holding it is readable by nopard alone."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, recovery = await enable(app, token)
    assert len(recovery) == 5 and all(len(c) == 64 for c in recovery)
    profile = await app.call("GET", "/-/npm/v1/user", token=token)
    assert profile.json()["tfa"] == {"pending": False, "mode": "auth-and-writes"}
    assert secret not in profile.body.decode()
    record = tmp_path / "registry" / "users" / "alice.json"
    assert secret in record.read_text() and os.stat(record).st_mode & 0o777 == 0o600


@pytest_twisted.ensureDeferred
async def test_a_wrong_first_code_leaves_2fa_pending(tmp_path: Path) -> None:
    """A wrong confirmation code is 401 (OTP) and 2FA stays off."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    await app.call("POST", "/-/npm/v1/user", {"tfa": {"mode": "auth-only", "password": PASSWORD}}, token=token)
    wrong = await app.call("POST", "/-/npm/v1/user", {"tfa": ["000000"]}, token=token)
    assert wrong.status == 401 and wrong.headers["www-authenticate"] == "OTP"
    assert (await app.call("GET", "/-/npm/v1/user", token=token)).json()["tfa"]["pending"] is True
    assert await publish(app, token, "1.0.0") == 201


@pytest_twisted.ensureDeferred
async def test_enable_2fa_needs_the_password(tmp_path: Path) -> None:
    """A wrong password starts nothing."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    answer = await app.call("POST", "/-/npm/v1/user", {"tfa": {"mode": "auth-only", "password": "nope"}}, token=token)
    assert answer.status == 401
    assert (await app.call("GET", "/-/npm/v1/user", token=token)).json()["tfa"] is None


@pytest_twisted.ensureDeferred
async def test_auth_and_writes_asks_publish_for_a_one_time_password(tmp_path: Path) -> None:
    """Without --otp a publish is 401 with the OTP challenge npm knows; with the code it is published."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token)
    refused = await app.call("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token)
    assert refused.status == 401 and refused.headers["www-authenticate"] == "OTP"
    assert "one-time password" in refused.json()["error"]
    assert (await app.call("GET", "/pkg")).status == 404
    assert await publish(app, token, "1.0.0", code(secret, app)) == 201
    assert (await app.call("GET", "/-/whoami", token=token)).status == 200  # reads need no code


@pytest_twisted.ensureDeferred
async def test_a_used_code_is_refused_to_another_credential(tmp_path: Path) -> None:
    """Replay: the code one token used is refused with another token, and so is an older code;
    the same token may send it again (npm sends --otp with each request of one command)."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    other = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token)
    now = code(secret, app)
    assert await publish(app, token, "1.0.0", now) == 201
    assert await publish(app, token, "1.0.1", now) == 201
    replayed = await app.call("PUT", "/pkg", publish_body("pkg", "1.0.2"), token=other, **{"npm-otp": now})
    assert replayed.status == 401 and "used already" in replayed.json()["error"]
    assert await publish(app, other, "1.0.2", code(secret, app, -1)) == 401
    app.clock.advance(30)
    assert await publish(app, other, "1.0.2", code(secret, app)) == 201


@pytest_twisted.ensureDeferred
async def test_codes_outside_the_window_are_refused(tmp_path: Path) -> None:
    """A code two steps old (or ahead) is refused; one step either side is taken (clock drift)."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token)
    app.clock.advance(120)
    assert await publish(app, token, "1.0.0", code(secret, app, -2)) == 401
    assert await publish(app, token, "1.0.0", code(secret, app, 2)) == 401
    assert await publish(app, token, "1.0.0", code(secret, app, 1)) == 201


@pytest_twisted.ensureDeferred
async def test_wrong_codes_are_bounded_by_the_login_limits(tmp_path: Path) -> None:
    """After NOPARD_LOGIN_ATTEMPTS wrong codes, even the right one is 429 until the window passes."""
    app = build(tmp_path, login_attempts="3", login_window="60")
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token)
    for _ in range(3):
        assert await publish(app, token, "1.0.0", "123456" if code(secret, app) != "123456" else "654321") == 401
    assert await publish(app, token, "1.0.0", code(secret, app)) == 429
    app.clock.advance(61)
    assert await publish(app, token, "1.0.0", code(secret, app)) == 201


@pytest_twisted.ensureDeferred
async def test_a_recovery_code_stands_in_once(tmp_path: Path) -> None:
    """A recovery code is taken as the one-time password, once."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    _secret, recovery = await enable(app, token)
    assert await publish(app, token, "1.0.0", recovery[0]) == 201
    assert await publish(app, token, "1.0.1", recovery[0]) == 401


@pytest_twisted.ensureDeferred
async def test_auth_only_asks_logins_not_writes(tmp_path: Path) -> None:
    """auth-only: a publish needs no code; npm login (legacy) and Basic credentials do, after a right password."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token, "auth-only")
    assert await publish(app, token, "1.0.0") == 201
    login = {"name": "alice", "password": PASSWORD}
    refused = await app.call("PUT", "/-/user/org.couchdb.user:alice", login)
    assert refused.status == 401 and refused.headers["www-authenticate"] == "OTP"
    wrong_password = await app.call("PUT", "/-/user/org.couchdb.user:alice", {**login, "password": "nope"})
    assert wrong_password.headers["www-authenticate"] != "OTP"  # the code is asked for after the password only
    assert (await app.call("GET", "/-/whoami", Authorization=basic("alice", PASSWORD))).status == 401
    logged_in = await app.call("PUT", "/-/user/org.couchdb.user:alice", login, **{"npm-otp": code(secret, app)})
    assert logged_in.status == 201 and logged_in.json()["token"]


@pytest_twisted.ensureDeferred
async def test_web_login_asks_for_the_code(tmp_path: Path) -> None:
    """npm login (web): the form refuses a 2FA account without its code, and logs it in with it."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token, "auth-only")
    started = (await app.call("POST", "/-/v1/login")).json()
    form = started["loginUrl"].split("5984", 1)[1]
    refused = await post_form(app, form, {"username": "alice", "password": PASSWORD})
    assert refused.status == 401 and b"one-time password" in refused.body
    sent = await post_form(app, form, {"username": "alice", "password": PASSWORD, "otp": code(secret, app)})
    assert sent.status == 200
    assert (await app.call("GET", started["doneUrl"].split("5984", 1)[1])).json()["token"]


@pytest_twisted.ensureDeferred
async def test_disable_2fa_needs_a_code(tmp_path: Path) -> None:
    """disable-2fa without a code is 401 (OTP); with it, writes need none any more."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token)
    off = {"tfa": {"mode": "disable", "password": PASSWORD}}
    assert (await app.call("POST", "/-/npm/v1/user", off, token=token)).status == 401
    done = await app.call("POST", "/-/npm/v1/user", off, token=token, **{"npm-otp": code(secret, app)})
    assert done.status == 200 and done.json()["tfa"] is None
    assert await publish(app, token, "1.0.0") == 201


@pytest_twisted.ensureDeferred
async def test_token_create_needs_a_code_with_2fa(tmp_path: Path) -> None:
    """npm token create with 2FA on (any mode) needs the code too."""
    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token, "auth-only")
    assert (await app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD}, token=token)).status == 401
    created = await app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD}, token=token,
                             **{"npm-otp": code(secret, app)})
    assert created.status == 200 and created.json()["token"]


@pytest_twisted.ensureDeferred
async def test_mfa_publish_asks_every_publisher_for_a_code(tmp_path: Path) -> None:
    """npm access set mfa=publish: a maintainer without 2FA is 403, one with auth-only needs a code;
    mfa=none lifts it."""
    app = build(tmp_path)
    alice = await app.user("alice", PASSWORD)
    assert await publish(app, alice, "1.0.0") == 201
    require = {"publish_requires_tfa": True, "automation_token_overrides_tfa": False}
    assert (await app.call("POST", "/-/package/pkg/access", require, token=alice)).status == 200
    refused = await app.call("PUT", "/pkg", publish_body("pkg", "1.0.1"), token=alice)
    assert refused.status == 403 and "enable-2fa" in refused.json()["error"]
    secret, _codes = await enable(app, alice, "auth-only")
    assert await publish(app, alice, "1.0.1") == 401
    assert await publish(app, alice, "1.0.1", code(secret, app)) == 201
    app.clock.advance(30)
    lift = await app.call("POST", "/-/package/pkg/access", {"publish_requires_tfa": False}, token=alice,
                          **{"npm-otp": code(secret, app)})
    assert lift.status == 200
    assert await publish(app, alice, "1.0.2") == 201


@pytest_twisted.ensureDeferred
async def test_mfa_automation_lets_bypass_tokens_publish(tmp_path: Path) -> None:
    """mfa=automation: a --bypass-2fa token publishes without a code; mfa=publish refuses it."""
    app = build(tmp_path)
    alice = await app.user("alice", PASSWORD)
    assert await publish(app, alice, "1.0.0") == 201
    secret, _codes = await enable(app, alice, "auth-only")
    automation = await app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD, "bypass_2fa": True}, token=alice,
                                **{"npm-otp": code(secret, app)})
    bot = automation.json()["token"]
    app.clock.advance(30)
    both = {"publish_requires_tfa": True, "automation_token_overrides_tfa": True}
    assert (await app.call("POST", "/-/package/pkg/access", both, token=alice)).status == 200
    assert await publish(app, bot, "1.0.1") == 201
    app.clock.advance(30)
    only_codes = await app.call("POST", "/-/package/pkg/access", {"publish_requires_tfa": True}, token=alice,
                                **{"npm-otp": code(secret, app)})
    assert only_codes.status == 200
    assert await publish(app, bot, "1.0.2") == 401


@pytest_twisted.ensureDeferred
async def test_access_set_refuses_bad_bodies_and_strangers(tmp_path: Path) -> None:
    """A malformed body is 400, another user 403, npm access set status 400; nothing changes."""
    app = build(tmp_path)
    alice = await app.user("alice", PASSWORD)
    bob = await app.user("bob", PASSWORD)
    assert await publish(app, alice, "1.0.0") == 201
    assert (await app.call("POST", "/-/package/pkg/access", {"publish_requires_tfa": "yes"}, token=alice)).status == 400
    assert (await app.call("POST", "/-/package/pkg/access", {"access": "public"}, token=alice)).status == 400
    assert (await app.call("POST", "/-/package/pkg/access", {"publish_requires_tfa": True}, token=bob)).status == 403
    assert await publish(app, alice, "1.0.1") == 201


def test_accept_binds_a_step_to_its_credential() -> None:
    """The pure rule: a step, once used, is refused to other credentials and older steps to all."""
    secret = pyotp.random_base32()
    now = 1_800_000_000.0
    current = pyotp.TOTP(secret).at(now)
    step = matching_step(secret, current, now)
    assert step is not None
    used, _why = accept({"secret": secret}, current, now, "token:a")
    assert used is not None and used["last_step"] == step
    assert accept(used, current, now, "token:a")[0] is not None
    assert accept(used, current, now, "token:b")[0] is None
    assert accept(used, pyotp.TOTP(secret).at(now - 30), now, "token:a")[0] is None
    assert matching_step(secret, "12345", now) is None and matching_step(secret, "abcdef", now) is None


@pytest_twisted.ensureDeferred
async def test_one_code_sent_twice_at_once_is_taken_once(tmp_path: Path) -> None:
    """Two credentials sending the same code at the same moment: one is taken, the other refused."""
    from twisted.internet.defer import Deferred, DeferredList

    from nopard.domain.errors import OneTimePasswordRequired

    app = build(tmp_path)
    token = await app.user("alice", PASSWORD)
    secret, _codes = await enable(app, token)
    now = code(secret, app)
    twofactor = TwoFactor(YieldingReads(app.storage), app.clock.seconds)
    both = [Deferred.fromCoroutine(twofactor.verify("alice", now, f"token:{n}", None)) for n in "ab"]
    results = await DeferredList(both, consumeErrors=True)
    assert sorted(ok for ok, _ in results) == [False, True]
    assert [r.type for ok, r in results if not ok] == [OneTimePasswordRequired]
