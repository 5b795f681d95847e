"""Brute-force limits and web login sessions, on a fake clock."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from nopard.auth import Accounts, Identity
from nopard.auth.htpasswd import HtpasswdFile
from nopard.auth.limits import LoginLimiter
from nopard.auth.tokens import TokenStore
from nopard.auth.weblogin import WebLogins
from nopard.domain.errors import BadCredentials, NotFound, TooManyAttempts
from nopard.settings.config import LiveSettings, load_settings
from nopard.storage.fs import FilesystemStorage


def live(**env: str) -> LiveSettings:
    return LiveSettings(load_settings({}, {f"NOPARD_{k.upper()}": v for k, v in env.items()}, cwd="/tmp"))


def make_accounts(tmp_path: Path, clock: Clock, **env: str) -> Accounts:
    settings = LiveSettings(load_settings({}, {f"NOPARD_{k.upper()}": v for k, v in env.items()}, cwd=str(tmp_path)))
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    users = HtpasswdFile(str(tmp_path / "registry" / "htpasswd"), deferToThread)
    return Accounts(
        settings, users, TokenStore(storage), storage, now=lambda: "2026-01-01T00:00:00.000Z",
        limiter=LoginLimiter(settings, clock),
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_limiter_refuses_after_the_threshold_and_frees_with_the_window() -> None:
    """N failures in the window: refused with the seconds until the oldest leaves it."""
    clock = Clock()
    limiter = LoginLimiter(live(login_attempts="3", login_window="60"), clock)
    for _ in range(3):
        limiter.check("alice", "10.0.0.1")
        limiter.failed("alice", "10.0.0.1")
        clock.advance(10)
    with pytest.raises(TooManyAttempts) as refused:
        limiter.check("alice", "10.0.0.1")
    assert refused.value.retry_after == 30  # first failure at 0, now 30, window 60
    with pytest.raises(TooManyAttempts):
        limiter.check("bob", "10.0.0.1")  # another account from the same address
    limiter.check("bob", "10.0.0.2")
    clock.advance(30)
    limiter.check("alice", "10.0.0.1")  # the first failure left the window


def test_failures_from_elsewhere_never_lock_the_owner_out() -> None:
    """Anyone failing on purpose for alice's account, from as many addresses as they like,
    leaves alice's own address free: an account is counted per address, never as a whole."""
    clock = Clock()
    limiter = LoginLimiter(live(login_attempts="3", login_window="60"), clock)
    for attacker in range(20):
        for _ in range(3):
            limiter.failed("alice", f"10.0.1.{attacker}")
        with pytest.raises(TooManyAttempts):
            limiter.check("alice", f"10.0.1.{attacker}")
    limiter.check("alice", "10.0.0.1")


def test_limiter_window_slides() -> None:
    """Failures spread wider than the window never add up to a refusal."""
    clock = Clock()
    limiter = LoginLimiter(live(login_attempts="2", login_window="10"), clock)
    for _ in range(10):
        limiter.check("alice", None)
        limiter.failed("alice", None)
        clock.advance(11)
    limiter.check("alice", None)


def test_success_resets_the_account_but_not_the_address() -> None:
    """A right password clears the account's count at that address; the address keeps its own."""
    clock = Clock()
    limiter = LoginLimiter(live(login_attempts="4", login_window="60"), clock)
    limiter.failed("alice", "10.0.0.1")
    limiter.failed("alice", "10.0.0.1")
    limiter.succeeded("alice", "10.0.0.1")
    limiter.failed("alice", "10.0.0.1")
    limiter.check("alice", "10.0.0.1")  # the account's count there started again: 1 of 4 (the address has 3)
    limiter.failed("carol", "10.0.0.1")
    with pytest.raises(TooManyAttempts):
        limiter.check("dave", "10.0.0.1")  # the address has 4 failures: refused for any account


def test_limiter_memory_is_bounded() -> None:
    """Past max_keys, the oldest keys are forgotten."""
    clock = Clock()
    limiter = LoginLimiter(live(login_attempts="1", login_window="60"), clock, max_keys=10)
    for n in range(100):
        limiter.failed(f"user{n}", None)
    assert len(limiter._failures) == 10
    limiter.check("user0", None)
    with pytest.raises(TooManyAttempts):
        limiter.check("user99", None)


@pytest_twisted.ensureDeferred
async def test_login_is_limited_without_checking_the_password(tmp_path: Path) -> None:
    """Over the limit even the right password gets 429; after the window it works again."""
    clock = Clock()
    accounts = make_accounts(tmp_path, clock, login_attempts="3", login_window="300")
    await accounts.login("alice", "right", address="10.0.0.1")
    for _ in range(3):
        with pytest.raises(BadCredentials):
            await accounts.login("alice", "wrong", address="10.0.0.1")
    with pytest.raises(TooManyAttempts) as refused:
        await accounts.login("alice", "right", address="10.0.0.1")
    assert 0 < refused.value.retry_after <= 300
    # Another address is not refused: failing on purpose cannot lock the owner out.
    assert (await accounts.identify(basic("alice", "right"), "10.0.0.7")).user == "alice"
    clock.advance(301)
    assert (await accounts.login("alice", "right", address="10.0.0.1")).startswith("npd_")


@pytest_twisted.ensureDeferred
async def test_success_resets_the_count_of_the_account(tmp_path: Path) -> None:
    """Failures below the limit, then a success: the count starts again."""
    clock = Clock()
    accounts = make_accounts(tmp_path, clock, login_attempts="3")
    await accounts.login("alice", "right")
    for _ in range(5):
        for _ in range(2):
            with pytest.raises(BadCredentials):
                await accounts.identify(basic("alice", "wrong"))
        assert (await accounts.identify(basic("alice", "right"))).user == "alice"


@pytest_twisted.ensureDeferred
async def test_token_creation_checks_the_password_and_counts_failures(tmp_path: Path) -> None:
    """create_token needs the password; its failures count like logins."""
    clock = Clock()
    accounts = make_accounts(tmp_path, clock, login_attempts="2")
    await accounts.login("alice", "right")
    alice = Identity("alice")
    created = await accounts.create_token(alice, {"password": "right", "readonly": True, "name": "ci"})
    assert created["token"].startswith("npd_") and created["readonly"] is True and created["name"] == "ci"
    record = await accounts.tokens.lookup(created["token"])
    assert record.readonly and record.shown == created["token"][:8]
    for _ in range(2):
        with pytest.raises(BadCredentials):
            await accounts.create_token(alice, {"password": "wrong"})
    with pytest.raises(TooManyAttempts):
        await accounts.create_token(alice, {"password": "right"})


@pytest_twisted.ensureDeferred
async def test_revoke_owned_only_touches_the_callers_tokens(tmp_path: Path) -> None:
    """By key or by token; another user's token is not theirs to revoke."""
    clock = Clock()
    accounts = make_accounts(tmp_path, clock, max_users="2")
    alice_token = await accounts.login("alice", "pw")
    bob_token = await accounts.login("bob", "pw")
    bob_key = (await accounts.tokens.lookup(bob_token)).key
    assert not await accounts.tokens.revoke_owned("alice", bob_token)
    assert not await accounts.tokens.revoke_owned("alice", bob_key)
    assert await accounts.tokens.revoke_owned("bob", bob_key)
    assert await accounts.tokens.revoke_owned("alice", alice_token)
    assert await accounts.tokens.records() == []


@pytest_twisted.ensureDeferred
async def test_web_login_session_gets_a_token_once(tmp_path: Path) -> None:
    """start -> poll waits -> form submitted -> poll gives the token once -> gone."""
    clock = Clock()
    accounts = make_accounts(tmp_path, clock)
    logins = WebLogins(accounts, clock)
    session_id = await logins.start(create=True)
    assert len(session_id) >= 40 and all(c.isalnum() or c in "-_" for c in session_id)
    assert (await logins.session(session_id)).create is True
    assert await logins.poll(session_id) is None
    assert await logins.submit(session_id, {"username": "alice", "password": "pw", "email": "a@example.com"}, None)
    token = await logins.poll(session_id)
    assert (await accounts.identify(f"Bearer {token}")).user == "alice"
    with pytest.raises(NotFound):
        await logins.poll(session_id)


@pytest_twisted.ensureDeferred
async def test_web_login_wrong_password_keeps_the_session_and_registration_follows_max_users(
    tmp_path: Path,
) -> None:
    """A wrong password leaves the session waiting; a new user past NOPARD_MAX_USERS is refused alike."""
    clock = Clock()
    accounts = make_accounts(tmp_path, clock)
    await accounts.login("alice", "pw")
    logins = WebLogins(accounts, clock)
    session_id = await logins.start()
    with pytest.raises(BadCredentials):
        await logins.submit(session_id, {"username": "alice", "password": "nope"}, "10.0.0.1")
    with pytest.raises(BadCredentials):
        await logins.submit(session_id, {"username": "mallory", "password": "pw"}, "10.0.0.1")
    assert await logins.poll(session_id) is None
    assert await logins.submit(session_id, {"username": "alice", "password": "pw"}, "10.0.0.1") == "alice"
