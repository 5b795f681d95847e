"""npm 11, yarn 1, yarn 4 and pnpm 10 against a real `twistd -n nopard` mirroring the fake
upstream: each installs a tree of scoped and unscoped local packages and mirrored ones, its
lockfile names nopard's conventional tarball URLs (or nothing, where the client rebuilds them),
a second install from that lockfile with an empty cache works, and each publishes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package_managers import PACKAGE_MANAGERS, PackageManager, Yarn1, Yarn4
from tests.support import NopardServer, make_package, publish_directory
from tests.upstream import FakeUpstream

USER, PASSWORD, EMAIL = "alice", "correct horse", "alice@example.com"
CLIENTS = list(PACKAGE_MANAGERS)
# What the project below resolves to: two local packages, four mirrored from the fake upstream.
TREE = {"@acme/lib": "1.0.0", "internal-util": "1.2.0", "debug": "4.4.3", "ms": "2.1.3",
        "semver": "7.8.6", "@types/estree": "1.0.10"}
PROJECT = {"name": "client-project", "version": "1.0.0", "private": True, "license": "MIT",
           "dependencies": {"@acme/lib": "^1.0.0", "internal-util": "^1.2.0", "debug": "^4.4.0",
                            "semver": "^7.0.0", "@types/estree": "*"}}
LOADS = ("[require('internal-util'), require('@acme/lib'), require('debug/package.json').version,"
         " require('semver').valid('1.2.3'), require('@types/estree/package.json').version].join(' ')")
LOADED = "internal-util@1.2.0 @acme/lib@1.0.0 ms:1000 @acme/lib@1.0.0 4.4.3 1.2.3 1.0.10"


@pytest.fixture(scope="module")
def world(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A nopard mirroring the fake upstream, with @acme/lib and internal-util published to it."""
    upstream.healthy()
    work = tmp_path_factory.mktemp("clients")
    server = NopardServer(work / "nopard", {"NOPARD_FORWARDER_URL": upstream.url})
    server.start()
    token = server.token(USER, PASSWORD)
    lib = make_package(work / "packages" / "lib", "@acme/lib", "1.0.0")
    util = make_package(work / "packages" / "util", "internal-util", "1.2.0",
                        dependencies={"@acme/lib": "^1.0.0", "ms": "^2.1.3"})
    (util / "index.js").write_text(
        "module.exports = 'internal-util@1.2.0 ' + require('@acme/lib') + ' ms:' + require('ms')('1s');\n")
    for directory in (lib, util):
        answer = publish_directory(server, token, directory)
        assert answer.status == 201, answer.body
    yield {"work": work, "server": server, "token": token, "upstream": upstream}
    server.stop()


def conventional(server: NopardServer, name: str, version: str) -> str:
    """nopard's tarball URL for name@version: `<base>/<name>/-/<unscoped>-<version>.tgz`."""
    return f"{server.url}{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def integrity(server: NopardServer, name: str, version: str) -> str:
    """The dist.integrity nopard serves for name@version."""
    answer = server.request("GET", "/" + name.replace("/", "%2f"))
    assert answer.status == 200, answer.body
    return answer.json()["versions"][version]["dist"]["integrity"]


def client(name: str, world: dict, home: str) -> PackageManager:
    return PACKAGE_MANAGERS[name](world["server"].url, world["work"] / name / home)


def new_project(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "package.json").write_text(json.dumps(PROJECT, indent=2))
    return directory


def loaded(project: Path) -> str:
    return subprocess.run(["node", "-p", LOADS], cwd=project, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def yarn1_resolved(lock: str) -> dict[str, str]:
    """name@version -> resolved URL (without the #sha1 fragment), from a yarn 1 lockfile."""
    found = {}
    for block in lock.split("\n\n"):
        header = re.match(r'^"?((?:@[^/@"]+/)?[^@"]+)@', block.strip())
        version = re.search(r'^  version "([^"]+)"', block, re.M)
        resolved = re.search(r'^  resolved "([^"#]+)(?:#[0-9a-f]+)?"', block, re.M)
        if header and version and resolved:
            found[f"{header.group(1)}@{version.group(1)}"] = resolved.group(1)
    return found


def check_lockfile(name: str, project: Path, world: dict) -> None:
    """What each client's lockfile records about where the tree came from."""
    server = world["server"]
    lock = (project / PACKAGE_MANAGERS[name].lockfile).read_text()
    if name == "npm":
        packages = json.loads(lock)["packages"]
        resolved = {f"{p.rsplit('node_modules/', 1)[-1]}@{e['version']}": e["resolved"]
                    for p, e in packages.items() if p}
        assert resolved == {f"{n}@{v}": conventional(server, n, v) for n, v in TREE.items()}
    elif name == "yarn1":
        # yarn 1 records dist.tarball as served: nopard's conventional URL.
        assert yarn1_resolved(lock) == {f"{n}@{v}": conventional(server, n, v) for n, v in TREE.items()}
        for n, v in TREE.items():
            assert f"integrity {integrity(server, n, v)}" in lock
    elif name == "pnpm":
        # pnpm records a `tarball:` only when dist.tarball is not the conventional URL of the
        # registry it installed from: nopard's URLs are, so none is recorded, and the integrity
        # is nopard's.
        assert "lockfileVersion: '9.0'" in lock
        assert "tarball:" not in lock
        for n, v in TREE.items():
            key = f"'{n}@{v}'" if n.startswith("@") else f"{n}@{v}"
            assert f"\n  {key}:\n    resolution: {{integrity: {integrity(server, n, v)}}}" in lock
    elif name == "yarn4":
        # yarn 4 records `name@npm:version` and a checksum of its own archive; it would add
        # `::__archiveUrl=<url>` if dist.tarball were not the conventional URL.
        assert "__archiveUrl" not in lock and "127.0.0.1" not in lock
        for n, v in TREE.items():
            entry = re.search(rf'^  resolution: "{re.escape(n)}@npm:{re.escape(v)}"\n(?:  .*\n|    .*\n)*?'
                              rf'  checksum: 10c0/[0-9a-f]{{128}}$', lock, re.M)
            assert entry, f"{n}@{v} not locked in\n{lock}"
        rc = (project / ".yarnrc.yml").read_text()
        assert f'npmRegistryServer: "{server.url.rstrip("/")}"' in rc


@pytest.mark.parametrize("name", CLIENTS)
def test_install_tree_and_reinstall_from_lockfile(name: str, world: dict) -> None:
    """The client installs local (scoped, unscoped) and mirrored packages through nopard; the
    lockfile points at nopard; a fresh HOME and cache install again from that lockfile alone."""
    work, server = world["work"] / name, world["server"]
    project = new_project(work / "project")
    client(name, world, "home").install(project)
    assert loaded(project) == LOADED
    check_lockfile(name, project, world)

    # A second machine: empty cache and store, frozen lockfile.
    again = new_project(work / "again")
    shutil.copy(project / PACKAGE_MANAGERS[name].lockfile, again / PACKAGE_MANAGERS[name].lockfile)
    before = server.log().count("\n")
    client(name, world, "home-again").frozen_install(again)
    assert loaded(again) == LOADED
    lockfile = PACKAGE_MANAGERS[name].lockfile
    assert (again / lockfile).read_text() == (project / lockfile).read_text()
    # Every tarball came from nopard's conventional path (yarn 4 spells the scope's slash %2f).
    later = re.sub("%2f", "/", "\n".join(server.log().splitlines()[before:]), flags=re.I)
    for n, v in TREE.items():
        path = conventional(server, n, v)[len(server.url) - 1:]
        assert f"method=GET path={path} status=200" in later, f"no GET {path}:\n{later}"


def publishable(world: dict, client_name: str, scoped: bool) -> tuple[str, Path]:
    name = f"@acme/{client_name}-pub" if scoped else f"{client_name}-pub"
    directory = make_package(world["work"] / client_name / "pub", name, "1.0.0")
    return name, directory


def check_published(world: dict, name: str) -> None:
    """nopard serves the version the client published, with its tarball at the conventional URL."""
    server = world["server"]
    answer = server.request("GET", "/" + name.replace("/", "%2f"))
    assert answer.status == 200, answer.body
    document = answer.json()
    assert document["dist-tags"]["latest"] == "1.0.0"
    dist = document["versions"]["1.0.0"]["dist"]
    assert dist["tarball"] == conventional(server, name, "1.0.0")
    assert document["versions"]["1.0.0"]["_npmUser"]["name"] == USER
    tarball = server.request("GET", dist["tarball"][len(server.url) - 1:])
    assert tarball.status == 200
    assert "sha512-" + base64.b64encode(hashlib.sha512(tarball.body).digest()).decode() == dist["integrity"]


@pytest.mark.parametrize("name", ["npm", "pnpm", "yarn1"])
def test_publish_with_a_saved_token(name: str, world: dict) -> None:
    """npm, pnpm and yarn 1 publish a scoped package with a token saved in their config."""
    package, directory = publishable(world, name, scoped=True)
    manager = client(name, world, "publisher")
    manager.save_token(world["token"])
    manager.publish(directory)
    check_published(world, package)


def test_yarn1_login_then_publish_asks_for_the_password(world: dict) -> None:
    """`yarn login` saves username and email; `yarn publish` asks the password, logs in
    (legacy PUT with Basic auth), publishes, then revokes its token."""
    yarn = client("yarn1", world, "login")
    directory = make_package(world["work"] / "yarn1" / "login-pub", "yarn1-login-pub", "1.0.0")
    assert isinstance(yarn, Yarn1)
    status, output = yarn.login_and_publish(directory, USER, PASSWORD, EMAIL)
    assert status == 0, output
    assert "Published." in output and "Revoked login token." in output
    check_published(world, "yarn1-login-pub")


def test_yarn4_npm_login_then_publish(world: dict) -> None:
    """`yarn npm login` (user, password) saves a token in ~/.yarnrc.yml; `yarn npm publish` uses it."""
    yarn = client("yarn4", world, "login")
    assert isinstance(yarn, Yarn4)
    name, directory = publishable(world, "yarn4", scoped=True)
    status, output = yarn.login(directory, USER, PASSWORD)
    assert status == 0, output
    rc = (yarn.home / ".yarnrc.yml").read_text()
    token = re.search(r"npmAuthToken: (\S+)", rc).group(1).strip('"')
    assert world["server"].request("GET", "/-/whoami", token=token).json() == {"username": USER}
    yarn.publish(directory)
    check_published(world, name)
