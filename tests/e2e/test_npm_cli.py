"""The real npm CLI against a real `twistd -n nopard`: accounts, publish, view, install."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import NopardServer, Npm, make_package

PACKAGES = {"@acme/util": ("1.0.0", "1.1.0"), "plain-widget": ("2.0.0", "2.1.0")}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NopardServer]:
    server = NopardServer(tmp_path_factory.mktemp("nopard"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alice(registry: NopardServer, tmp_path_factory: pytest.TempPathFactory) -> Npm:
    npm = Npm(registry.url, tmp_path_factory.mktemp("alice"))
    status, output = npm.login("adduser", "alice", "correct horse", "alice@example.com")
    assert status == 0, output
    return npm


@pytest.fixture(scope="module")
def published(alice: Npm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    work = tmp_path_factory.mktemp("packages")
    for name, versions in PACKAGES.items():
        for version in versions:
            directory = make_package(work / name.replace("/", "+") / version, name, version)
            alice.run("publish", cwd=directory)
    return PACKAGES


def view(npm: Npm, spec: str, *fields: str) -> object:
    return json.loads(npm.run("view", spec, *fields, "--json").stdout)


def test_adduser_registers_first_user_with_a_bcrypt_entry(alice: Npm, registry: NopardServer) -> None:
    """`npm adduser` creates the first account (bcrypt in htpasswd) and saves a token."""
    assert alice.token() and alice.token().startswith("npd_")
    line = (registry.registry / "users" / "htpasswd").read_text().strip()
    assert line.startswith("alice:$2y$")


def test_whoami_names_the_logged_in_user(alice: Npm) -> None:
    """`npm whoami` prints the user the saved token belongs to."""
    assert alice.run("whoami").stdout.strip() == "alice"


def test_publish_scoped_and_unscoped_keeps_every_version(alice: Npm, published: dict) -> None:
    """Two versions each of a scoped and an unscoped package publish and are listed."""
    for name, versions in published.items():
        assert view(alice, name, "versions") == list(versions)
        assert view(alice, name, "dist-tags") == {"latest": versions[-1]}


def test_view_shows_maintainer_times_and_tarball_url(alice: Npm, registry: NopardServer, published: dict) -> None:
    """`npm view` shows the publisher as maintainer, publish times and a tarball on nopard."""
    info = view(alice, "@acme/util@1.0.0")
    assert info["maintainers"] == ["alice <alice@example.com>"]
    assert info["dist"]["tarball"] == f"{registry.url}@acme/util/-/util-1.0.0.tgz"
    assert set(info["time"]) >= {"created", "modified", "1.0.0", "1.1.0"}
    assert info["_npmUser"] == "alice <alice@example.com>"


def test_republishing_a_version_is_refused(alice: Npm, published: dict, tmp_path: Path) -> None:
    """Publishing a version that exists fails and leaves the first upload in place."""
    directory = make_package(tmp_path / "again", "plain-widget", "2.0.0", description="changed")
    result = alice.run("publish", cwd=directory, check=False)
    assert result.returncode != 0
    assert "previously published versions: 2.0.0" in result.stderr
    assert view(alice, "plain-widget@2.0.0", "description") == "plain-widget test package"


def test_install_into_a_fresh_project(registry: NopardServer, published: dict, tmp_path: Path) -> None:
    """A fresh project with an empty npm cache installs both packages from nopard."""
    npm = Npm(registry.url, tmp_path / "fresh-home")
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "project", "version": "1.0.0"}))
    npm.run("install", "@acme/util@1.0.0", "plain-widget", cwd=project)
    loaded = subprocess.run(
        ["node", "-p", "require('@acme/util') + ' ' + require('plain-widget')"],
        cwd=project, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert loaded == "@acme/util@1.0.0 plain-widget@2.1.0"
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = {lock["packages"][p]["resolved"] for p in ("node_modules/@acme/util", "node_modules/plain-widget")}
    assert resolved == {
        f"{registry.url}@acme/util/-/util-1.0.0.tgz", f"{registry.url}plain-widget/-/plain-widget-2.1.0.tgz"}


def test_login_then_logout_revokes_the_token(registry: NopardServer, published: dict, tmp_path: Path) -> None:
    """`npm login` gets a new token; `npm logout` revokes it on the registry too."""
    npm = Npm(registry.url, tmp_path / "laptop")
    status, output = npm.login("login", "alice", "correct horse")
    assert status == 0, output
    token = npm.token()
    assert registry.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}
    npm.run("logout")
    assert npm.token() is None
    answer = registry.request("GET", "/-/whoami", token=token)
    assert answer.status == 401
    assert "error" in answer.json()


def test_login_with_a_wrong_password_fails(registry: NopardServer, published: dict, tmp_path: Path) -> None:
    """`npm login` with a wrong password fails and saves no token."""
    npm = Npm(registry.url, tmp_path / "intruder")
    status, _ = npm.login("login", "alice", "wrong password")
    assert status != 0
    assert npm.token() is None
