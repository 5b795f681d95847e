"""nopard-admin import and export: Verdaccio and nopar folders in, nopard's own format out and back,
checked on the files and through a running nopard and the real npm CLI (tests/admin_cli.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nopard.auth.htpasswd import parse_htpasswd
from nopard.cli.maintenance import call_directly, run_now
from nopard.local.signing import SigningKeys
from nopard.storage.fs import FilesystemStorage
from tests.admin_cli import (
    IMPORTS,
    add_user,
    admin,
    contents,
    flip_a_byte,
    local_copy,
    unsigned,
    verified_by,
)
from tests.support import NopardServer, Npm, files_under, publish_body

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
    assert parse_htpasswd((registry / "users" / "htpasswd").read_text()) == {"dave": lines[0].split(":", 1)[1]}


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
    """Published to a running nopard, exported, imported into a fresh registry: the same files, token
    records too, the versions signed again by the fresh registry's own key."""
    add_user(closed.registry, "alice", "pw", "--email", "alice@example.com")
    token = closed.token("alice", "pw")
    for name, version in (("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")):
        answer = closed.request("PUT", "/" + name.replace("/", "%2f"), publish_body(name, version), token=token)
        assert answer.status in (200, 201), answer.body
    target = tmp_path / "export"
    result = admin(closed.registry, "export", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (f"export: packages 2, versions 3, tarballs 3, unpublished 0, users 1, "
                                              f"profiles 1, mirrored 0, token 1 to {target}; "
                                              "not exported: changes feed 2, signing keys 1")
    assert "signing" not in {Path(name).parts[0] for name in files_under(target)}
    fresh = tmp_path / "fresh"
    imported = admin(fresh, "import", str(target))
    assert imported.returncode == 0, imported.stdout
    wanted = ("packages/", "users/", "tokens/", "htpasswd")
    # Signed again with the fresh registry's own key: the signing keys are not exported.
    fresh_keys = run_now(SigningKeys(FilesystemStorage(str(fresh), call_directly), time.time).public_keys())
    assert verified_by(fresh, fresh_keys) == {("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")}
    assert unsigned(contents(fresh)) == unsigned(
        {k: v for k, v in contents(closed.registry).items() if k.startswith(wanted)}
        | {"signing/keys.json": (fresh / "signing" / "keys.json").read_bytes()})



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
                                              f"users 0, profiles 0, mirrored 0 to {target}")
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
