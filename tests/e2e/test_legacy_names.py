"""Names valid only for old packages, through a real `twistd -n nopard` with the real clients.

npm publishes and installs an uppercase name published here and one mirrored from the fake
upstream; pnpm installs names with a leading "-" (npm 11 refuses those itself, before asking
any registry: its validate-npm-package-name has no exception for old packages yet).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package_managers import Pnpm, registry_key
from tests.support import NopardServer, Npm, make_package, publish_directory
from tests.upstream import FakeUpstream

USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module")
def world(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A nopard mirroring the fake upstream (which serves JSONStream-legacy, -legacy-dash, @con/legacy-device)."""
    upstream.healthy()
    work = tmp_path_factory.mktemp("legacy-names")
    server = NopardServer(work / "nopard", {"NOPARD_FORWARDER_URL": upstream.url})
    server.start()
    yield {"work": work, "server": server, "token": server.token(USER, PASSWORD)}
    server.stop()


def project(directory: Path, dependencies: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "package.json").write_text(json.dumps(
        {"name": "legacy-project", "version": "1.0.0", "private": True, "dependencies": dependencies}))
    return directory


def required(directory: Path, names: list[str]) -> list[str]:
    """What node's require() gives for each name, in ``directory``."""
    script = "console.log(JSON.stringify(JSON.parse(process.env.NAMES).map(n => require(n))))"
    # The names go in the environment: node would read "-x" arguments as options of its own.
    result = subprocess.run(["node", "-e", script], cwd=directory, capture_output=True, text=True, check=True,
                            timeout=60, env={**os.environ, "NAMES": json.dumps(names)})
    return json.loads(result.stdout)


def test_npm_publishes_and_installs_uppercase_names_local_and_mirrored(world: dict) -> None:
    """`npm publish` of LegacyUpper-x, then `npm install` of it and of the mirrored JSONStream-legacy and
    @con/legacy-device: each installs from nopard."""
    npm = Npm(world["server"].url, world["work"] / "npm")
    with open(npm.userconfig, "a") as npmrc:
        npmrc.write(f"{registry_key(world['server'].url)}:_authToken={world['token']}\n")
    npm.run("publish", cwd=make_package(world["work"] / "upper", "LegacyUpper-x", "1.0.0"))
    target = project(world["work"] / "npm-project", {"LegacyUpper-x": "^1.0.0", "JSONStream-legacy": "1.0.0",
                                                     "@con/legacy-device": "1.0.0"})
    npm.run("install", "--no-audit", cwd=target)
    assert required(target, ["LegacyUpper-x", "JSONStream-legacy", "@con/legacy-device"]) == [
        "LegacyUpper-x@1.0.0", "JSONStream-legacy@1.0.0", "@con/legacy-device@1.0.0"]
    lock = json.loads((target / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/JSONStream-legacy"]["resolved"].startswith(world["server"].url)


def test_pnpm_installs_names_with_a_leading_hyphen_local_and_mirrored(world: dict) -> None:
    """A name starting with "-" published here (over HTTP, as npm 11 will not) and one mirrored both
    install with pnpm; npm 11 refuses the name on its own side."""
    server = world["server"]
    answer = publish_directory(server, world["token"], make_package(world["work"] / "dash", "-local-dash", "1.0.0"))
    assert answer.status == 201, answer.body
    pnpm = Pnpm(server.url, world["work"] / "pnpm")
    target = project(world["work"] / "pnpm-project", {"-local-dash": "1.0.0", "-legacy-dash": "1.0.0"})
    pnpm.install(target)
    assert required(target, ["-local-dash", "-legacy-dash"]) == ["-local-dash@1.0.0", "-legacy-dash@1.0.0"]
    refused = Npm(server.url, world["work"] / "npm-dash").run("install", "--no-audit", cwd=target, check=False)
    assert refused.returncode != 0 and "cannot start with a hyphen" in refused.stdout + refused.stderr
