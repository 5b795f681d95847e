"""nopard-admin on the registry directory: help and errors, users and tokens.

Every test runs the installed console script (.venv/bin/nopard-admin) as a subprocess, as an
operator would, and checks its output and exit status; where it matters, a real nopard then
shows the effect over HTTP or through the real npm CLI. fsck and gc, import and export, and the
operator token have their own modules (test_admin_s3.py: fsck, gc, export and import on every backend;
test_admin_import.py, test_admin_token.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pexpect
import pytest

from nopard.auth.htpasswd import parse_htpasswd, verify_password
from tests.admin_cli import (
    ADMIN,
    add_user,
    admin,
    admin_env,
)
from tests.support import NopardServer

# Help and errors -----------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ("user", "add"), ("user", "passwd"), ("user", "remove"), ("user", "reset-2fa"), ("user", "list"), ("token", "list"),
    ("token", "revoke"), ("fsck",), ("gc",), ("import",), ("export",), ("advisories", "import"),
])
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    """`nopard-admin <command> --help` prints its usage and exits 0."""
    result = admin(None, *command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: nopard-admin {' '.join(command)}")


def test_top_level_help_lists_the_new_commands() -> None:
    """`nopard-admin --help` (the module docstring) describes every command."""
    result = admin(None, "--help")
    for command in ("user add", "user passwd", "user remove", "user reset-2fa", "user list", "token list",
                    "token revoke", "fsck", "gc [--dry-run]", "import FROM", "export TO", "advisories import PATH"):
        assert f"nopard-admin {command}" in result.stdout


def test_missing_registry_directory_is_exit_2(tmp_path: Path) -> None:
    """A registry directory that does not exist: one clear line, exit 2."""
    result = admin(None, "fsck", "--registry-path", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr == f"nopard-admin: registry directory {tmp_path / 'nowhere'} does not exist " \
                            "(set NOPARD_REGISTRY_PATH or --registry-path)\n"


def test_registry_path_option_beats_the_environment(registry: Path, tmp_path: Path) -> None:
    """--registry-path wins over NOPARD_REGISTRY_PATH, as the daemon's own options do."""
    other = tmp_path / "other"
    other.mkdir()
    result = admin(registry, "user", "add", "bob", "--password-stdin", "--registry-path", str(other), stdin="pw\n")
    assert result.returncode == 0
    assert "bob" in parse_htpasswd((other / "users" / "htpasswd").read_text())
    assert not (registry / "users" / "htpasswd").exists()


# Users -----------------------------------------------------------------------


def test_user_add_writes_a_bcrypt_line_and_a_profile(registry: Path) -> None:
    """`user add` appends an htpasswd -B style line and writes users/<name>.json with the email."""
    result = add_user(registry, "alice", "s3cret", "--email", "alice@example.com")
    assert result.stdout == "added user alice\n"
    hashed = parse_htpasswd((registry / "users" / "htpasswd").read_text())["alice"]
    assert hashed.startswith("$2y$") and verify_password("s3cret", hashed)
    profile = json.loads((registry / "users" / "alice.json").read_text())
    assert profile["name"] == "alice" and profile["email"] == "alice@example.com" and profile["created"]


def test_user_add_then_login_over_http(closed: NopardServer) -> None:
    """With registration closed, a user added by nopard-admin logs in to the running nopard."""
    # Refused as a wrong password would be: a closed registry does not tell who exists.
    assert closed.login("alice", "s3cret").status == 401
    add_user(closed.registry, "alice", "s3cret")
    answer = closed.login("alice", "s3cret")
    assert answer.status == 201
    assert closed.request("GET", "/-/whoami", token=answer.json()["token"]).json() == {"username": "alice"}


def test_user_add_asks_twice_and_refuses_a_mismatch(registry: Path) -> None:
    """On a terminal the password is asked twice; two different answers add nobody, exit 2."""
    child = pexpect.spawn(ADMIN, ["user", "add", "alice"], env=admin_env(registry), encoding="utf-8", timeout=30)
    child.expect("Password: ")
    child.sendline("one")
    child.expect("Password again: ")
    child.sendline("two")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "the two passwords differ" in child.before
    assert not (registry / "users" / "htpasswd").exists()


def test_user_add_on_a_terminal_with_matching_passwords(registry: Path) -> None:
    """Two matching answers on a terminal add the user."""
    child = pexpect.spawn(ADMIN, ["user", "add", "alice"], env=admin_env(registry), encoding="utf-8", timeout=30)
    for prompt in ("Password: ", "Password again: "):
        child.expect(prompt)
        child.sendline("s3cret")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "added user alice" in child.before
    assert verify_password("s3cret", parse_htpasswd((registry / "users" / "htpasswd").read_text())["alice"])


def test_user_add_refuses_an_existing_user(registry: Path) -> None:
    """Adding a user twice: exit 2, the first password stays."""
    add_user(registry, "alice", "first")
    result = admin(registry, "user", "add", "alice", "--password-stdin", stdin="second\n")
    assert result.returncode == 2
    assert "user alice already exists" in result.stderr
    assert verify_password("first", parse_htpasswd((registry / "users" / "htpasswd").read_text())["alice"])


def test_user_add_refuses_an_invalid_name(registry: Path) -> None:
    """A user name nopard would refuse at login is refused here too, exit 2."""
    result = admin(registry, "user", "add", "no/slash", "--password-stdin", stdin="pw\n")
    assert result.returncode == 2 and "invalid user name" in result.stderr


def test_user_passwd_changes_the_password(registry: Path) -> None:
    """`user passwd` replaces the hash in place; the old password stops working."""
    add_user(registry, "alice", "old")
    add_user(registry, "bob", "bobs")
    result = admin(registry, "user", "passwd", "alice", "--password-stdin", stdin="new\n")
    assert (result.returncode, result.stdout) == (0, "changed the password of alice\n")
    entries = parse_htpasswd((registry / "users" / "htpasswd").read_text())
    assert list(entries) == ["alice", "bob"]
    assert verify_password("new", entries["alice"]) and not verify_password("old", entries["alice"])


def test_user_reset_2fa_turns_the_second_factor_off(registry: Path) -> None:
    """`user reset-2fa` removes the profile's two-factor secret and keeps the rest; again: says none."""
    add_user(registry, "alice", "pw", "--email", "alice@example.com")
    profile = registry / "users" / "alice.json"
    stored = json.loads(profile.read_text())
    profile.write_text(json.dumps({**stored, "tfa": {"mode": "auth-and-writes", "secret": "JBSWY3DPEHPK3PXP"}}))
    result = admin(registry, "user", "reset-2fa", "alice")
    assert result.returncode == 0 and "turned off two-factor authentication of alice" in result.stdout
    kept = json.loads(profile.read_text())
    assert "tfa" not in kept and kept["email"] == "alice@example.com"
    again = admin(registry, "user", "reset-2fa", "alice")
    assert (again.returncode, again.stdout) == (0, "alice has no two-factor authentication\n")


@pytest.mark.parametrize("args", [("passwd", "bob", "--password-stdin"), ("remove", "bob")])
def test_unknown_user_is_exit_2(registry: Path, args: tuple[str, ...]) -> None:
    """`user passwd` / `user remove` of a user who does not exist: a clear error, exit 2."""
    add_user(registry, "alice", "pw")
    result = admin(registry, "user", *args, stdin="pw\n")
    assert result.returncode == 2
    assert result.stderr == (
        "nopard-admin: no user bob in the store's users/htpasswd (nopard-admin user list shows them)\n")


def test_user_remove_revokes_their_tokens(closed: NopardServer) -> None:
    """`user remove` deletes the user, their profile and every token of theirs; others keep theirs."""
    add_user(closed.registry, "alice", "pw")
    add_user(closed.registry, "bob", "pw")
    alices = [closed.token("alice", "pw"), closed.token("alice", "pw")]
    bobs = closed.token("bob", "pw")
    result = admin(closed.registry, "user", "remove", "alice")
    assert (result.returncode, result.stdout) == (0, "removed user alice (2 tokens revoked)\n")
    for token in alices:
        assert closed.request("GET", "/-/whoami", token=token).status == 401
    assert closed.request("GET", "/-/whoami", token=bobs).json() == {"username": "bob"}
    assert "alice" not in parse_htpasswd((closed.registry / "users" / "htpasswd").read_text())
    assert not (closed.registry / "users" / "alice.json").exists()


def test_user_list_shows_emails_and_token_counts(closed: NopardServer) -> None:
    """`user list`: one line per user with email, creation time and number of tokens."""
    add_user(closed.registry, "bob", "pw")
    add_user(closed.registry, "alice", "pw", "--email", "alice@example.com")
    closed.token("alice", "pw")
    result = admin(closed.registry, "user", "list")
    assert result.returncode == 0
    alice, bob = result.stdout.splitlines()
    assert alice.startswith("alice  alice@example.com  created 20") and alice.endswith("  1 tokens")
    assert bob.startswith("bob    -  created 20") and bob.endswith("  0 tokens")


def test_user_list_of_an_empty_registry(registry: Path) -> None:
    """No users yet: says so, exit 0."""
    result = admin(registry, "user", "list")
    assert (result.returncode, result.stdout) == (0, "no users in the store's users/htpasswd\n")


# Tokens ----------------------------------------------------------------------


def test_token_list_shows_records_never_tokens(closed: NopardServer) -> None:
    """`token list`: key, user, created and access of each token; never the token itself."""
    add_user(closed.registry, "alice", "pw")
    token = closed.token("alice", "pw")
    record = json.loads(next((closed.registry / "tokens").glob("*.json")).read_text())
    result = admin(closed.registry, "token", "list")
    assert result.returncode == 0
    assert result.stdout == f"{record['key']}  alice  {record['created']}  read-write\n"
    assert token not in result.stdout


def test_token_list_filters_by_user(closed: NopardServer) -> None:
    """`token list --user NAME` lists only that user's tokens."""
    for name in ("alice", "bob"):
        add_user(closed.registry, name, "pw")
        closed.token(name, "pw")
    lines = admin(closed.registry, "token", "list", "--user", "bob").stdout.splitlines()
    assert len(lines) == 1 and "  bob  " in lines[0]
    assert admin(closed.registry, "token", "list", "--user", "carol").stdout == "no tokens of carol\n"


def test_token_revoke_by_key(closed: NopardServer) -> None:
    """`token revoke KEY` revokes that token only; the user's other token still works."""
    add_user(closed.registry, "alice", "pw")
    first, second = closed.token("alice", "pw"), closed.token("alice", "pw")
    first_key = json.loads((closed.registry / "tokens" / f"{_sha256(first)}.json").read_text())["key"]
    result = admin(closed.registry, "token", "revoke", first_key)
    assert (result.returncode, result.stdout) == (0, f"revoked token {first_key} of alice\n")
    assert closed.request("GET", "/-/whoami", token=first).status == 401
    assert closed.request("GET", "/-/whoami", token=second).json() == {"username": "alice"}


def test_token_revoke_of_an_unknown_key_is_exit_2(registry: Path) -> None:
    """An unknown key: a clear error, exit 2."""
    result = admin(registry, "token", "revoke", "no-such-key")
    assert result.returncode == 2
    assert result.stderr == "nopard-admin: no token has key no-such-key (nopard-admin token list shows them)\n"


def _sha256(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()
