"""Users, passwords and tokens, without HTTP."""

from __future__ import annotations

import base64
import subprocess
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from nopard.auth import Accounts, Identity
from nopard.auth.htpasswd import HtpasswdFile, hash_password, parse_htpasswd, verify_password
from nopard.auth.tokens import TokenStore, token_hash
from nopard.domain.errors import AuthenticationRequired, BadCredentials, InvalidInput, PermissionDenied
from nopard.settings.config import LiveSettings, load_settings
from nopard.storage.fs import FilesystemStorage


def make_accounts(tmp_path: Path, **env: str) -> Accounts:
    settings = LiveSettings(load_settings({}, {f"NOPARD_{k.upper()}": v for k, v in env.items()}, cwd=str(tmp_path)))
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    users = HtpasswdFile(str(tmp_path / "registry" / "htpasswd"), deferToThread)
    return Accounts(settings, users, TokenStore(storage), storage, now=lambda: "2026-01-01T00:00:00.000Z")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_hash_is_htpasswd_bcrypt_and_verifies() -> None:
    """New hashes use htpasswd -B's $2y$ form and verify only the right password."""
    hashed = hash_password("s3cret")
    assert hashed.startswith("$2y$10$")
    assert verify_password("s3cret", hashed) and not verify_password("other", hashed)


def test_apache_htpasswd_lines_verify(tmp_path: Path) -> None:
    """Lines written by Apache's `htpasswd -B` and `htpasswd -s` verify."""
    path = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-B", "-b", "-c", str(path), "bcrypt-user", "pw1"], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-s", "-b", str(path), "sha-user", "pw2"], check=True, capture_output=True)
    entries = parse_htpasswd(path.read_text())
    assert verify_password("pw1", entries["bcrypt-user"]) and not verify_password("pw2", entries["bcrypt-user"])
    assert verify_password("pw2", entries["sha-user"]) and not verify_password("pw1", entries["sha-user"])


def test_unknown_hash_formats_never_verify() -> None:
    """Plain-text or unknown hash formats are never accepted."""
    assert not verify_password("pw", "pw")
    assert not verify_password("pw", "$apr1$abc$def")


def test_parse_skips_comments_and_blank_lines() -> None:
    """Comments and blank lines are not users."""
    assert parse_htpasswd("# admin\n\nalice:$2y$x\n bob:{SHA}y \n") == {"alice": "$2y$x", "bob": "{SHA}y"}


@pytest_twisted.ensureDeferred
async def test_first_login_registers_then_registration_closes(tmp_path: Path) -> None:
    """With the default NOPARD_MAX_USERS=1, the first login registers and the second new user is refused
    (as a wrong password is: BadCredentials)."""
    accounts = make_accounts(tmp_path)
    assert (await accounts.login("alice", "pw", "a@example.com")).startswith("npd_")
    with pytest.raises(BadCredentials):
        await accounts.login("bob", "pw", "b@example.com")
    assert accounts.users.users() == ["alice"]
    assert await accounts.profile("alice") == {"name": "alice", "email": "a@example.com"}


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused(tmp_path: Path) -> None:
    """An existing user with a wrong password gets BadCredentials, no token."""
    accounts = make_accounts(tmp_path)
    await accounts.login("alice", "pw")
    with pytest.raises(BadCredentials):
        await accounts.login("alice", "PW")


@pytest.mark.parametrize("name, password, email", [
    ("", "pw", None), ("a:b", "pw", None), ("../x", "pw", None), ("alice", "", None),
    ("alice", None, None), ("alice", "x" * 73, None), ("alice", "pw", "not-an-email"), (["x"], "pw", None),
])
@pytest_twisted.ensureDeferred
async def test_invalid_login_input_writes_nothing(tmp_path: Path, name, password, email) -> None:
    """Bad names, passwords or emails are InvalidInput and nothing is written."""
    accounts = make_accounts(tmp_path)
    with pytest.raises(InvalidInput):
        await accounts.login(name, password, email)
    assert not (tmp_path / "registry").exists()


@pytest_twisted.ensureDeferred
async def test_concurrent_registrations_respect_max_users(tmp_path: Path) -> None:
    """Five simultaneous registrations with NOPARD_MAX_USERS=2: exactly two accounts exist."""
    from twisted.internet import defer

    accounts = make_accounts(tmp_path, max_users="2")
    attempts = [defer.Deferred.fromCoroutine(accounts.login(f"user{n}", "pw")) for n in range(5)]
    results = await defer.DeferredList(attempts, consumeErrors=True)
    assert sum(1 for ok, _ in results if ok) == 2
    assert len(accounts.users.users()) == 2


@pytest_twisted.ensureDeferred
async def test_bearer_and_basic_identify_the_user(tmp_path: Path) -> None:
    """A token or Basic credentials identify their user; nothing identifies anonymous."""
    accounts = make_accounts(tmp_path)
    token = await accounts.login("alice", "pw")
    assert await accounts.identify(f"Bearer {token}") == Identity("alice")
    assert await accounts.identify(basic("alice", "pw")) == Identity("alice")
    assert await accounts.identify(None) == Identity(None)


@pytest.mark.parametrize("header", [
    "Bearer npd_" + "x" * 43, "Bearer garbage", basic("alice", "wrong"), basic("nobody", "pw"),
    "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest abc",
])
@pytest_twisted.ensureDeferred
async def test_bad_credentials_are_refused(tmp_path: Path, header: str) -> None:
    """Unknown tokens, wrong passwords, malformed or unknown schemes raise BadCredentials."""
    accounts = make_accounts(tmp_path)
    await accounts.login("alice", "pw")
    with pytest.raises(BadCredentials):
        await accounts.identify(header)


@pytest_twisted.ensureDeferred
async def test_revoked_token_no_longer_identifies(tmp_path: Path) -> None:
    """After logout the token is refused; revoking twice says there was nothing the second time."""
    accounts = make_accounts(tmp_path)
    token = await accounts.login("alice", "pw")
    assert await accounts.logout(token) is True
    assert await accounts.logout(token) is False
    with pytest.raises(BadCredentials):
        await accounts.identify(f"Bearer {token}")


@pytest_twisted.ensureDeferred
async def test_token_of_a_removed_user_is_refused(tmp_path: Path) -> None:
    """Removing a user from htpasswd makes their tokens useless at once."""
    accounts = make_accounts(tmp_path)
    token = await accounts.login("alice", "pw")
    (tmp_path / "registry" / "htpasswd").write_text("# emptied by an admin\n")
    with pytest.raises(BadCredentials):
        await accounts.identify(f"Bearer {token}")


@pytest_twisted.ensureDeferred
async def test_tokens_are_stored_as_hashes(tmp_path: Path) -> None:
    """The store holds the token's SHA-256 as key, never the token."""
    accounts = make_accounts(tmp_path)
    token = await accounts.login("alice", "pw")
    stored = list((tmp_path / "registry" / "tokens").iterdir())
    assert [p.name for p in stored] == [f"{token_hash(token)}.json"]
    assert token.encode() not in stored[0].read_bytes()


def test_policy_defaults(tmp_path: Path) -> None:
    """By default reads are open and writes need a user."""
    accounts = make_accounts(tmp_path)
    accounts.require_read(Identity(None))
    with pytest.raises(AuthenticationRequired):
        accounts.require_write(Identity(None))
    assert accounts.require_write(Identity("alice")) == "alice"


def test_policy_settings(tmp_path: Path) -> None:
    """NOPARD_AUTH_READ=yes closes reads; NOPARD_AUTH_WRITE=no opens writes to anonymous."""
    accounts = make_accounts(tmp_path, auth_read="yes", auth_write="no")
    with pytest.raises(AuthenticationRequired):
        accounts.require_read(Identity(None))
    assert accounts.require_write(Identity(None)) is None


def test_readonly_tokens_cannot_write(tmp_path: Path) -> None:
    """A read-only identity is refused on writes."""
    with pytest.raises(PermissionDenied):
        make_accounts(tmp_path).require_write(Identity("alice", readonly=True))


@pytest_twisted.ensureDeferred
async def test_bcrypt_runs_off_the_reactor_thread(tmp_path: Path) -> None:
    """Hashing and checking passwords run in the given thread runner, not on the reactor thread."""
    threads = {}

    def recording_runner(function, *args):
        def run():
            threads[function.__name__] = threading.current_thread()
            return function(*args)
        return deferToThread(run)

    users = HtpasswdFile(str(tmp_path / "htpasswd"), recording_runner)
    await users.add("alice", "pw")
    assert await users.check("alice", "pw") is True
    assert set(threads) >= {"hash_password", "verify_password"}
    assert threading.current_thread() not in threads.values()


@pytest_twisted.ensureDeferred
async def test_repeated_basic_checks_cost_one_bcrypt(tmp_path: Path) -> None:
    """Checking the same right password again does not run bcrypt again; a wrong one always does."""
    calls = []

    def counting_runner(function, *args):
        calls.append(function.__name__)
        return deferToThread(function, *args)

    users = HtpasswdFile(str(tmp_path / "htpasswd"), counting_runner)
    await users.add("alice", "pw")
    for _ in range(3):
        assert await users.check("alice", "pw") is True
    for _ in range(2):
        assert await users.check("alice", "nope") is False
    assert calls.count("verify_password") == 3


@pytest_twisted.ensureDeferred
async def test_changed_password_in_file_invalidates_cached_check(tmp_path: Path) -> None:
    """After an admin changes a user's hash in the file, the old password stops working."""
    path = tmp_path / "htpasswd"
    users = HtpasswdFile(str(path), deferToThread)
    await users.add("alice", "old")
    assert await users.check("alice", "old") is True
    path.write_text(f"alice:{hash_password('new')}\n")
    assert await users.check("alice", "old") is False
    assert await users.check("alice", "new") is True


@pytest_twisted.ensureDeferred
async def test_a_closed_registry_spends_the_same_bcrypt_work_and_answer_on_known_and_unknown_names(
    tmp_path: Path,
) -> None:
    """Registration closed: a wrong password and an unknown name each cost one bcrypt check and get
    the same BadCredentials message, whatever else the body carries (an invalid email)."""
    accounts = make_accounts(tmp_path)
    await accounts.login("alice", "pw")
    checks: list[str] = []

    def counted(function, *args, **kwargs):
        checks.append(function.__name__)
        return deferToThread(function, *args, **kwargs)

    accounts.users._run = counted
    messages = []
    for name, email in (("alice", None), ("nobody", "not-an-email")):
        with pytest.raises(BadCredentials) as refused:
            await accounts.login(name, "wrong", email)
        messages.append(refused.value.message)
    assert messages[0] == messages[1] and "incorrect user name or password" in messages[0]
    assert checks == ["verify_password", "verify_password"]
