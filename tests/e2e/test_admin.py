"""nopard-admin on the registry directory: users, tokens, fsck, gc, import and export.

Every test runs the installed console script (.venv/bin/nopard-admin) as a subprocess, as an
operator would, and checks its output and exit status; where it matters, a real nopard then
shows the effect over HTTP or through the real npm CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from nopard.auth.htpasswd import parse_htpasswd, verify_password
from nopard.cli.maintenance import call_directly, run_now
from nopard.domain import signatures
from nopard.local.signing import SigningKeys
from nopard.storage.fs import FilesystemStorage
from tests.support import BIN, REPO, NopardServer, Npm, files_under, publish_body
from tests.upstream import FakeUpstream

IMPORTS = REPO / "tests" / "data" / "imports"
UPSTREAM_DATA = REPO / "tests" / "data" / "upstream"
ADMIN = str(BIN / "nopard-admin")
LONG_AGO = time.time() - 3600


def admin_env(registry: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPARD_")}
    if registry is not None:
        env["NOPARD_REGISTRY_PATH"] = str(registry)
    return env


def admin(registry: Path | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run nopard-admin with NOPARD_REGISTRY_PATH set to ``registry``."""
    return subprocess.run([ADMIN, *args], env=admin_env(registry), input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120)


def add_user(registry: Path, name: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    result = admin(registry, "user", "add", name, "--password-stdin", *extra, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """An empty registry directory, as nopard creates at its first start."""
    path = tmp_path / "nopard" / "registry"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def closed(start_nopard: Callable[..., NopardServer]) -> NopardServer:
    """A running nopard with registration closed (NOPARD_MAX_USERS=0)."""
    return start_nopard({"NOPARD_MAX_USERS": "0"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def mirror_copy(registry: Path, name: str, base: str = "http://upstream.example") -> Path:
    """Lay out a mirrored package as nopard stores it: upstream document, meta, every recorded tarball."""
    area = registry / "packages" / name / "upstream"
    (area / "tarballs").mkdir(parents=True)
    text = (UPSTREAM_DATA / "packuments" / f"{name}.json").read_text().replace("{{UPSTREAM}}", base)
    (area / "package.json").write_text(text)
    (area / "meta.json").write_text(json.dumps({"fetched_at": time.time(), "etag": None, "last_modified": None}))
    for tarball in (UPSTREAM_DATA / "tarballs" / name).glob("*.tgz"):
        shutil.copy(tarball, area / "tarballs" / tarball.name)
    return area


def local_copy(registry: Path, name: str, *versions: str) -> Path:
    """Lay out a local package as nopard's publish does: tarballs, then the document naming them."""
    import base64
    import hashlib

    from tests.support import tarball_bytes

    area = registry / "packages" / name
    (area / "tarballs").mkdir(parents=True)
    document = {"_id": name, "name": name, "dist-tags": {"latest": versions[-1]}, "versions": {}, "time": {},
                "maintainers": [{"name": "alice", "email": "alice@example.com"}], "readme": ""}
    for version in versions:
        data = tarball_bytes(name, version)
        filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        (area / "tarballs" / filename).write_bytes(data)
        document["versions"][version] = {"name": name, "version": version, "_id": f"{name}@{version}", "dist": {
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            "shasum": hashlib.sha1(data).hexdigest(), "tarball": filename}}
    (area / "package.json").write_text(json.dumps(document))
    return area


def leftover(path: Path, data: bytes = b"x") -> Path:
    """A file untouched for an hour (fsck leaves younger ones alone: they may be writes in progress)."""
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def contents(path: Path) -> dict[str, bytes]:
    """The stored objects below ``path``; dot-names are the filesystem backend's own (lock files)."""
    return {
        name: (path / name).read_bytes()
        for name in files_under(path)
        if not any(part.startswith(".") for part in Path(name).parts)
    }


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
    assert "bob" in parse_htpasswd((other / "htpasswd").read_text())
    assert not (registry / "htpasswd").exists()


# Users -----------------------------------------------------------------------


def test_user_add_writes_a_bcrypt_line_and_a_profile(registry: Path) -> None:
    """`user add` appends an htpasswd -B style line and writes users/<name>.json with the email."""
    result = add_user(registry, "alice", "s3cret", "--email", "alice@example.com")
    assert result.stdout == "added user alice\n"
    hashed = parse_htpasswd((registry / "htpasswd").read_text())["alice"]
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
    assert not (registry / "htpasswd").exists()


def test_user_add_on_a_terminal_with_matching_passwords(registry: Path) -> None:
    """Two matching answers on a terminal add the user."""
    child = pexpect.spawn(ADMIN, ["user", "add", "alice"], env=admin_env(registry), encoding="utf-8", timeout=30)
    for prompt in ("Password: ", "Password again: "):
        child.expect(prompt)
        child.sendline("s3cret")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "added user alice" in child.before
    assert verify_password("s3cret", parse_htpasswd((registry / "htpasswd").read_text())["alice"])


def test_user_add_refuses_an_existing_user(registry: Path) -> None:
    """Adding a user twice: exit 2, the first password stays."""
    add_user(registry, "alice", "first")
    result = admin(registry, "user", "add", "alice", "--password-stdin", stdin="second\n")
    assert result.returncode == 2
    assert "user alice already exists" in result.stderr
    assert verify_password("first", parse_htpasswd((registry / "htpasswd").read_text())["alice"])


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
    entries = parse_htpasswd((registry / "htpasswd").read_text())
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
        f"nopard-admin: no user bob in {registry / 'htpasswd'} (nopard-admin user list shows them)\n")


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
    assert "alice" not in parse_htpasswd((closed.registry / "htpasswd").read_text())
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
    assert (result.returncode, result.stdout) == (0, f"no users in {registry / 'htpasswd'}\n")


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


# fsck and gc -------------------------------------------------------------------


def test_fsck_of_a_healthy_registry_is_exit_0(registry: Path) -> None:
    """Local and mirrored packages whose tarballs all verify: 'all well', exit 0."""
    mirror_copy(registry, "ms")
    local_copy(registry, "@acme/tool", "1.0.0", "1.1.0")
    result = admin(registry, "fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 2 documents, 4 tarballs checked; all well\n")


def test_fsck_agrees_with_what_nopard_publishes(closed: NopardServer) -> None:
    """Packages published over HTTP to a running nopard pass fsck."""
    add_user(closed.registry, "alice", "pw")
    token = closed.token("alice", "pw")
    for name, version in (("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")):
        answer = closed.request("PUT", "/" + name.replace("/", "%2f"), publish_body(name, version), token=token)
        assert answer.status in (200, 201), answer.body
    result = admin(closed.registry, "fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 2 documents, 3 tarballs checked; all well\n")


def test_fsck_quarantines_a_corrupt_tarball(registry: Path) -> None:
    """A flipped byte: the tarball moves to .quarantine/<same path>, is reported, exit 1."""
    mirror_copy(registry, "ms")
    tarball = registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz"
    flip_a_byte(tarball)
    corrupted = tarball.read_bytes()
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "corrupt packages/ms/upstream/tarballs/ms-2.1.3.tgz: does not match the checksums of version 2.1.3; "
        "moved to .quarantine/packages/ms/upstream/tarballs/ms-2.1.3.tgz",
        "fsck: 1 documents, 2 tarballs checked; 1 problems (1 corrupt)",
    ]
    assert not tarball.exists()
    quarantined = registry / ".quarantine" / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz"
    assert quarantined.read_bytes() == corrupted


def test_gc_after_fsck_leaves_a_clean_registry(registry: Path) -> None:
    """fsck (exit 1) quarantines; gc removes the quarantine (exit 0); a second fsck exits 0."""
    mirror_copy(registry, "ms")
    flip_a_byte(registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.0.0.tgz")
    assert admin(registry, "fsck").returncode == 1
    again = admin(registry, "fsck")
    assert again.returncode == 1 and again.stdout.startswith(
        "quarantined .quarantine/packages/ms/upstream/tarballs/ms-2.0.0.tgz: awaiting gc\n")
    collected = admin(registry, "gc")
    assert collected.returncode == 0
    assert collected.stdout.splitlines()[0].startswith(
        "removed .quarantine/packages/ms/upstream/tarballs/ms-2.0.0.tgz (quarantined, ")
    assert not (registry / ".quarantine").exists()
    assert admin(registry, "fsck").returncode == 0


def test_fsck_reports_a_local_document_naming_a_missing_tarball(registry: Path) -> None:
    """A local document naming a tarball that is not stored is reported (gc cannot fix it), exit 1."""
    area = local_copy(registry, "tool", "1.0.0", "2.0.0")
    (area / "tarballs" / "tool-1.0.0.tgz").unlink()
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert "missing packages/tool/tarballs/tool-1.0.0.tgz: version 1.0.0 names it, but it is not stored" \
        in result.stdout.splitlines()
    collected = admin(registry, "gc")
    assert collected.stdout == (
        "gc: removed 0 files (0 bytes); 1 problems gc cannot fix (nopard-admin fsck lists them)\n")


def test_mirrored_documents_may_name_tarballs_not_fetched(registry: Path) -> None:
    """A mirrored document naming versions never downloaded is normal: not reported."""
    area = mirror_copy(registry, "ms")
    (area / "tarballs" / "ms-2.0.0.tgz").unlink()
    assert admin(registry, "fsck").returncode == 0


def test_fsck_reports_orphan_tarballs(registry: Path) -> None:
    """A tarball no document names (untouched for a while) is an orphan; gc removes it."""
    area = local_copy(registry, "tool", "1.0.0")
    orphan = leftover(area / "tarballs" / "tool-0.9.0.tgz")
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert "orphan packages/tool/tarballs/tool-0.9.0.tgz: no document names it" in result.stdout.splitlines()
    collected = admin(registry, "gc")
    assert "removed packages/tool/tarballs/tool-0.9.0.tgz (orphan, 1 bytes)" in collected.stdout.splitlines()
    assert not orphan.exists() and (area / "tarballs" / "tool-1.0.0.tgz").exists()


def test_fsck_reports_leftover_temporary_files(registry: Path) -> None:
    """Old .tmp-*, .spool/.fetch-* and .htpasswd-* files are reported; fresh ones (writes in progress) are not."""
    local_copy(registry, "tool", "1.0.0")
    (registry / ".spool").mkdir()
    old = [leftover(registry / "packages" / "tool" / ".tmp-abc123"), leftover(registry / ".spool" / ".fetch-xyz"),
           leftover(registry / ".htpasswd-q1w2e3")]
    (registry / ".spool" / ".fetch-fresh").write_bytes(b"downloading")
    result = admin(registry, "fsck")
    assert result.returncode == 1
    reported = [line.split(":")[0] for line in result.stdout.splitlines()[:-1]]
    assert reported == ["temporary .htpasswd-q1w2e3", "temporary .spool/.fetch-xyz",
                        "temporary packages/tool/.tmp-abc123"]
    assert admin(registry, "gc").returncode == 0
    assert not any(path.exists() for path in old) and (registry / ".spool" / ".fetch-fresh").exists()


def test_fsck_reports_an_unreadable_document(registry: Path) -> None:
    """A document that is not JSON is reported and its tarballs are left alone, even by gc."""
    area = local_copy(registry, "tool", "1.0.0")
    (area / "package.json").write_text('{"name": "tool", "versions": ')
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == \
        "unreadable packages/tool/package.json: not a package document (tarballs beside it left alone)"
    admin(registry, "gc")
    assert (area / "tarballs" / "tool-1.0.0.tgz").exists()


def test_gc_dry_run_removes_nothing(registry: Path) -> None:
    """`gc --dry-run` prints what it would remove and leaves every file (and no quarantine)."""
    area = mirror_copy(registry, "ms")
    flip_a_byte(area / "tarballs" / "ms-2.1.3.tgz")
    leftover(registry / ".tmp-left")
    before = contents(registry)
    size = len(before["packages/ms/upstream/tarballs/ms-2.1.3.tgz"])
    result = admin(registry, "gc", "--dry-run")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "would remove .tmp-left (temporary, 1 bytes)",
        f"would remove packages/ms/upstream/tarballs/ms-2.1.3.tgz (corrupt, {size} bytes)",
        f"gc: would remove 2 files ({1 + size} bytes)",
    ]
    assert contents(registry) == before


def test_fsck_quarantined_tarball_is_fetched_again(start_nopard: Callable[..., NopardServer],
                                                   upstream: FakeUpstream) -> None:
    """On a running mirror: a corrupted cached tarball is quarantined and nopard fetches a good copy again."""
    upstream.fault("none")
    server = start_nopard({"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_SYNC_INTERVAL": "0"})
    document = server.request("GET", "/ms").json()
    path = "/" + document["versions"]["2.1.3"]["dist"]["tarball"][len(server.url):]
    good = server.request("GET", path).body
    stored = server.registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz"
    assert admin(server.registry, "fsck").returncode == 0
    flip_a_byte(stored)
    assert admin(server.registry, "fsck").returncode == 1
    again = server.request("GET", path)
    assert again.status == 200 and again.body == good and again.headers["x-nopard-cache"] == "MISS"
    assert admin(server.registry, "gc").returncode == 0
    assert admin(server.registry, "fsck").returncode == 0


# Import ------------------------------------------------------------------------


def test_import_of_the_verdaccio_fixture(registry: Path) -> None:
    """A Verdaccio config folder: private packages become local, the cached one mirrored, alice imported."""
    result = admin(registry, "import", str(IMPORTS / "verdaccio"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"importing a verdaccio registry from {IMPORTS / 'verdaccio' / 'storage'}",
        "imported @acme/strings: 2 versions (2.0.0, 2.1.0-beta.1)",
        "imported greeter: 2 versions (1.0.0, 1.1.0)",
        "mirrored ms: 1 of 2 tarballs (cached from an upstream)",
        "imported user alice",
        "import: packages 2 local, 1 mirrored, 0 unchanged; versions 5; users 1; nothing left out",
    ]
    strings = json.loads((registry / "packages" / "@acme" / "strings" / "package.json").read_text())
    assert strings["dist-tags"] == {"latest": "2.0.0", "next": "2.1.0-beta.1"}
    assert strings["maintainers"] == [{"name": "alice", "email": "alice@example.com"}]
    assert strings["readme"].startswith("# @acme/strings")
    assert set(strings["time"]) == {"created", "modified", "2.0.0", "2.1.0-beta.1"}
    assert not {"_attachments", "_distfiles", "_uplinks"} & set(strings)
    assert strings["versions"]["2.0.0"]["dist"]["tarball"] == "strings-2.0.0.tgz"
    assert (registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz").exists()
    assert not (registry / "packages" / "ms" / "package.json").exists()
    assert admin(registry, "fsck").returncode == 0


def test_imported_packages_install_with_npm(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """After importing the Verdaccio fixture, npm installs greeter (and its scoped dependency) from nopard."""
    (tmp_path / "nopard").mkdir()
    assert admin(tmp_path / "nopard" / "registry", "import", str(IMPORTS / "verdaccio" / "storage")).returncode == 0
    server = start_nopard({"NOPARD_MAX_USERS": "0"})
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    Npm(server.url, tmp_path / "npm-home").run("install", "greeter", cwd=project)
    installed = json.loads((project / "node_modules" / "greeter" / "package.json").read_text())
    assert installed["version"] == "1.1.0"
    output = subprocess.run(["node", "-e", "console.log(require('greeter')('nopard'))"], cwd=project,
                            capture_output=True, text=True, check=True).stdout
    assert output == "HELLO NOPARD!\n"


def test_imported_user_logs_in(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """The bcrypt line of Verdaccio's htpasswd works as it is: alice logs in to nopard."""
    (tmp_path / "nopard").mkdir()
    admin(tmp_path / "nopard" / "registry", "import", str(IMPORTS / "verdaccio"))
    server = start_nopard({"NOPARD_MAX_USERS": "0"})
    assert server.login("alice", "wonderland").status == 201


def test_imported_cached_package_installs_with_the_upstream_down(start_nopard: Callable[..., NopardServer],
                                                                  tmp_path: Path) -> None:
    """The package Verdaccio had cached lands in nopard's mirror: it installs with the upstream unreachable."""
    (tmp_path / "nopard").mkdir()
    admin(tmp_path / "nopard" / "registry", "import", str(IMPORTS / "verdaccio"))
    server = start_nopard({"NOPARD_FORWARDER_URL": "http://127.0.0.1:9", "NOPARD_SYNC_INTERVAL": "0"})
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    Npm(server.url, tmp_path / "npm-home").run("install", "ms@2.1.3", cwd=project)
    assert json.loads((project / "node_modules" / "ms" / "package.json").read_text())["version"] == "2.1.3"


def test_import_into_a_running_nopard(closed: NopardServer) -> None:
    """Imported while nopard runs: the new packages are served at once, no restart."""
    assert closed.request("GET", "/greeter").status == 404
    assert admin(closed.registry, "import", str(IMPORTS / "verdaccio")).returncode == 0
    answer = closed.request("GET", "/greeter")
    assert answer.status == 200 and answer.json()["dist-tags"]["latest"] == "1.1.0"


def test_import_twice_changes_nothing(registry: Path) -> None:
    """A second import of the same folder writes nothing and says so."""
    admin(registry, "import", str(IMPORTS / "verdaccio"))
    before = contents(registry)
    result = admin(registry, "import", str(IMPORTS / "verdaccio"))
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == [
        "unchanged @acme/strings", "unchanged greeter", "unchanged ms (mirrored here already)",
        "import: packages 0 local, 0 mirrored, 3 unchanged; versions 0; users 0; nothing left out",
    ]
    assert contents(registry) == before


def test_import_skips_missing_and_corrupt_tarballs(registry: Path, tmp_path: Path) -> None:
    """Versions whose tarball is missing or does not verify are skipped and listed; exit 1."""
    source = tmp_path / "verdaccio"
    shutil.copytree(IMPORTS / "verdaccio", source)
    (source / "storage" / "greeter" / "greeter-1.0.0.tgz").unlink()
    flip_a_byte(source / "storage" / "@acme" / "strings" / "strings-2.1.0-beta.1.tgz")
    result = admin(registry, "import", str(source))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "skipped @acme/strings@2.1.0-beta.1: its tarball does not match its checksums" in lines
    assert "skipped greeter@1.0.0: its tarball is missing" in lines
    assert lines[-1].endswith("; 2 things left out (listed)")
    strings = json.loads((registry / "packages" / "@acme" / "strings" / "package.json").read_text())
    assert list(strings["versions"]) == ["2.0.0"] and strings["dist-tags"] == {"latest": "2.0.0"}
    assert not (registry / "packages" / "@acme" / "strings" / "tarballs" / "strings-2.1.0-beta.1.tgz").exists()


def test_import_reports_unsupported_password_hashes(registry: Path, tmp_path: Path) -> None:
    """--htpasswd FILE: bcrypt lines come as they are; an MD5 ($apr1$) line is reported and left out."""
    htpasswd = tmp_path / "users.htpasswd"
    lines = [subprocess.run(["htpasswd", "-nb" + flag, user, "pw"], capture_output=True, text=True,
                            check=True).stdout.strip() for flag, user in (("B", "dave"), ("m", "carol"))]
    htpasswd.write_text("\n".join(lines) + "\n")
    result = admin(registry, "import", str(IMPORTS / "nopar"), "--htpasswd", str(htpasswd))
    assert result.returncode == 1
    assert "imported user dave" in result.stdout.splitlines()
    assert "skipped user carol: nopard cannot check a Apache MD5 ($apr1$) password hash " \
           "(add them with nopard-admin user add carol)" in result.stdout.splitlines()
    assert parse_htpasswd((registry / "htpasswd").read_text()) == {"dave": lines[0].split(":", 1)[1]}


def test_import_of_a_nopar_registry(registry: Path) -> None:
    """A nopar registry folder: its packages become local (shasum-only dists kept), ms mirrored."""
    result = admin(registry, "import", str(IMPORTS / "nopar"))
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == f"importing a nopar registry from {IMPORTS / 'nopar'}"
    greeter = json.loads((registry / "packages" / "greeter" / "package.json").read_text())
    assert list(greeter["versions"]) == ["1.0.0", "1.1.0"]
    assert not {"_proxied", "_mtime", "_attachments"} & set(greeter)
    upstream = json.loads((registry / "packages" / "ms" / "upstream" / "package.json").read_text())
    assert upstream["versions"]["2.1.3"]["dist"]["tarball"] == "https://registry.example/ms/-/ms-2.1.3.tgz"
    assert admin(registry, "fsck").returncode == 0


def test_import_of_a_folder_that_is_no_registry_is_exit_2(registry: Path, tmp_path: Path) -> None:
    """FROM missing, or holding no registry: one clear line, exit 2, nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    result = admin(registry, "import", str(empty))
    assert result.returncode == 2
    assert result.stderr.startswith(f"nopard-admin: {empty} holds no registry nopard can import: ")
    missing = admin(registry, "import", str(tmp_path / "nowhere"))
    assert (missing.returncode, missing.stderr) == (2, f"nopard-admin: {tmp_path / 'nowhere'} is not a directory\n")
    assert files_under(registry) == []


# Export ------------------------------------------------------------------------


def test_export_then_import_gives_the_same_documents(closed: NopardServer, tmp_path: Path) -> None:
    """Published to a running nopard, exported, imported into a fresh registry: the same files, tokens aside."""
    add_user(closed.registry, "alice", "pw", "--email", "alice@example.com")
    token = closed.token("alice", "pw")
    for name, version in (("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")):
        answer = closed.request("PUT", "/" + name.replace("/", "%2f"), publish_body(name, version), token=token)
        assert answer.status in (200, 201), answer.body
    target = tmp_path / "export"
    result = admin(closed.registry, "export", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (f"export: packages 2, versions 3, tarballs 3, unpublished 0, users 1, "
                                              f"profiles 1 to {target}; not exported: signing keys 1, token 1")
    assert "tokens" not in {Path(name).parts[0] for name in files_under(target)}
    fresh = tmp_path / "fresh"
    imported = admin(fresh, "import", str(target))
    assert imported.returncode == 0, imported.stdout
    wanted = ("packages/", "users/", "htpasswd")
    # Signed again with the fresh registry's own key: the signing keys are not exported.
    fresh_keys = run_now(SigningKeys(FilesystemStorage(str(fresh), call_directly), time.time).public_keys())
    assert verified_by(fresh, fresh_keys) == {("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")}
    assert unsigned(contents(fresh)) == unsigned(
        {k: v for k, v in contents(closed.registry).items() if k.startswith(wanted)}
        | {"signing/keys.json": (fresh / "signing" / "keys.json").read_bytes()})


def verified_by(registry: Path, keys: list[dict]) -> set[tuple[str, str]]:
    """(name, version) of the local versions whose one signature verifies with one of ``keys``."""
    verified = set()
    for path in registry.glob("packages/**/package.json"):
        document = json.loads(path.read_text())
        for version, manifest in document["versions"].items():
            [signature] = manifest["dist"]["signatures"]
            message = signatures.signed_message(document["name"], version, manifest["dist"])
            if any(signatures.verify(key, message, signature["sig"]) for key in keys):
                verified.add((document["name"], version))
    return verified


def unsigned(files: dict[str, bytes]) -> dict[str, Any]:
    """The stored objects, each package document without its versions' signatures."""
    def strip(name: str, data: bytes) -> object:
        if not name.endswith("/package.json"):
            return data
        document = json.loads(data)
        for manifest in document["versions"].values():
            manifest["dist"].pop("signatures", None)
        return document
    return {name: strip(name, data) for name, data in files.items()}


def test_export_fails_when_the_store_holds_more_than_it_wrote(registry: Path, tmp_path: Path) -> None:
    """A package folder whose name nopard cannot parse and a key of no kind export knows: export
    still writes the rest, then exits 1 saying what the store holds that it did not write."""
    local_copy(registry, "greeter", "1.0.0")
    odd = registry / "packages" / "Not A Name"
    odd.mkdir(parents=True)
    (odd / "package.json").write_text('{"name": "Not A Name", "versions": {}}')
    (registry / "packages" / "greeter" / "notes.json").write_text("{}")
    target = tmp_path / "export"
    result = admin(registry, "export", str(target))
    assert result.returncode == 1
    assert "left out 2 unknown keys the store holds (2 held, 0 written)" in result.stdout.splitlines()
    assert result.stderr.startswith("nopard-admin: export INCOMPLETE: the store holds more than was written "
                                    "(2 unknown)")
    assert (target / "packages" / "greeter" / "package.json").exists()


def test_export_and_import_round_trip_packages_named_upstream(registry: Path, tmp_path: Path) -> None:
    """Packages called upstream and @scope/upstream, and a whole unpublishing, are exported (exit 0,
    counted) and imported back into a fresh registry unchanged."""
    local_copy(registry, "upstream", "1.0.0", "1.1.0")
    local_copy(registry, "@scope/upstream", "2.0.0")
    gone = registry / "packages" / "retired"
    gone.mkdir(parents=True)
    (gone / "unpublished.json").write_text('{"versions": ["1.0.0"]}')
    target = tmp_path / "export"
    result = admin(registry, "export", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (f"export: packages 2, versions 3, tarballs 3, unpublished 1, "
                                              f"users 0, profiles 0 to {target}")
    fresh = tmp_path / "fresh"
    imported = admin(fresh, "import", str(target))
    assert imported.returncode == 0, imported.stdout
    back, before = unsigned(contents(fresh)), unsigned(contents(registry))
    # Every document, tarball and the unpublishing, and the key the imported versions are signed with.
    assert set(back) == set(before) | {"signing/keys.json"}
    for key in before:
        if key.endswith("package.json"):
            assert back[key]["versions"] == before[key]["versions"], key
        else:
            assert back[key] == before[key], key


def test_export_refuses_a_folder_that_is_not_empty(registry: Path, tmp_path: Path) -> None:
    """TO must be new or empty: otherwise exit 2 and nothing written."""
    target = tmp_path / "used"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = admin(registry, "export", str(target))
    assert result.returncode == 2
    assert result.stderr == f"nopard-admin: {target} exists and is not an empty directory: export into a new one\n"
    assert files_under(target) == ["keep.txt"]


# The operator token: sync and prefetch --------------------------------------------------


def admin_http(server: NopardServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """nopard-admin talking to ``server``, with its registry directory as the daemon's."""
    return subprocess.run([ADMIN, "--registry", server.url, *args],
                          env={**admin_env(server.registry), **(env or {})}, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def syncable(start_nopard: Callable[..., NopardServer], upstream: FakeUpstream) -> Callable[..., NopardServer]:
    """Start a nopard mirroring the fake upstream, its schedule quiet during a test."""
    def start(name: str = "nopard", **env: str) -> NopardServer:
        return start_nopard({"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_SYNC_INTERVAL": "3600", **env}, name=name)
    return start


def test_nopard_admin_runs_sync_and_prefetch_with_its_token(syncable, tmp_path: Path) -> None:
    """nopard writes its operator token at start, mode 0600; nopard-admin reads it and runs
    sync --now and prefetch through the real nopard."""
    server = syncable()
    token_file = server.registry / ".nopard-admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    result = admin_http(server, "sync", "--now")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refresh: checked 0")
    lock = tmp_path / "package-lock.json"
    lock.write_text(json.dumps({"name": "p", "lockfileVersion": 3, "packages": {
        "": {"name": "p"}, "node_modules/ms": {"version": "2.1.3"}}}))
    prefetched = admin_http(server, "prefetch", str(lock))
    assert prefetched.returncode == 0, prefetched.stdout + prefetched.stderr
    assert "failures 0" in prefetched.stdout and server.request("GET", "/ms").status == 200


def test_loopback_without_the_token_is_refused_sync_and_prefetch(syncable) -> None:
    """A request from 127.0.0.1 without X-Forwarded-For (a proxy adding none) and without the
    token: sync and prefetch are 401; with the token they run."""
    server = syncable()
    assert server.request("POST", "/-/nopard/sync", {"job": "refresh"}).status == 401
    assert server.request("POST", "/-/nopard/prefetch", {"packages": []}).status == 401
    assert server.request("POST", "/-/nopard/sync", {"job": "refresh"}, server.operator_headers()).status == 200


def test_each_instance_has_its_own_token(syncable) -> None:
    """Two instances with their own registries: each nopard-admin call works against its own, and
    one instance's token is refused by the other."""
    first, second = syncable("first"), syncable("second")
    assert first.operator_headers() != second.operator_headers()
    assert admin_http(first, "sync", "--now", "--job", "refresh").returncode == 0
    assert admin_http(second, "sync", "--now", "--job", "refresh").returncode == 0
    crossed = admin_http(first, "--token-file", str(second.registry / ".nopard-admin-token"), "sync", "--now")
    assert crossed.returncode == 2 and "nopard answered 401" in crossed.stderr


def test_the_token_survives_a_restart_and_a_token_file_setting(syncable, tmp_path: Path) -> None:
    """NOPARD_ADMIN_TOKEN_FILE puts the token elsewhere; a restart keeps it, so nopard-admin's
    copy stays valid."""
    token_file = tmp_path / "run" / "operator.token"
    server = syncable(NOPARD_ADMIN_TOKEN_FILE=str(token_file))
    before = token_file.read_text()
    server.stop()
    server.start()
    assert token_file.read_text() == before
    result = admin_http(server, "sync", "--now", env={"NOPARD_ADMIN_TOKEN_FILE": str(token_file)})
    assert result.returncode == 0, result.stderr


def test_nopard_admin_without_a_readable_token_says_why(syncable, tmp_path: Path) -> None:
    """No token file where nopard-admin looks: exit 2, naming the file and what to do."""
    server = syncable()
    result = admin_http(server, "sync", "--now", env={"NOPARD_REGISTRY_PATH": str(tmp_path / "elsewhere")})
    assert result.returncode == 2
    assert "no operator token file" in result.stderr and "--token-file" in result.stderr
