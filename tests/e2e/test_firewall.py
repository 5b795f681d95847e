"""The supply-chain firewall with real clients (issue 16): npm, pnpm and yarn 4 install the newest
version old enough; a lockfile pinning a young or a blocked version fails with nopard's reason,
also with the upstream blackholed; a block added on one instance applies on another at once.

The fake upstream serves a package generated here with times relative to the real now.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fake_documents import iso, manifest, package_doc, small_tarball
from tests.fake_publish import digests
from tests.package_managers import PACKAGE_MANAGERS, PackageManager
from tests.polling import poll_until
from tests.redis_server import RedisServer
from tests.support import BIN, NopardServer
from tests.upstream import FakeUpstream

NAME = "fresh-pkg"
AGES = {"1.0.0": timedelta(days=30), "1.1.0": timedelta(days=10), "1.2.0": timedelta(hours=1)}
CLIENTS = ("npm", "pnpm", "yarn4")
REASON = "maintainer account hijacked"


def generated_upstream(data: Path) -> Path:
    """An upstream data folder holding NAME, its versions published AGES before now."""
    now = datetime.now(UTC)
    versions, times = {}, {}
    (data / "tarballs" / NAME).mkdir(parents=True)
    (data / "packuments").mkdir(parents=True)
    for version, age in AGES.items():
        tarball = small_tarball(NAME, version)
        (data / "tarballs" / NAME / f"{NAME}-{version}.tgz").write_bytes(tarball)
        versions[version] = manifest(NAME, version, digests(tarball), {})
        times[version] = iso(now - age)
    (data / "packuments" / f"{NAME}.json").write_text(json.dumps(package_doc(NAME, versions, times)))
    return data


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with FakeUpstream(generated_upstream(tmp_path_factory.mktemp("generated"))) as fake:
        yield fake


def project(path: Path, client: PackageManager) -> Path:
    path.mkdir(parents=True)
    (path / "package.json").write_text(json.dumps({"name": "app", "version": "1.0.0", "private": True,
                                                   "dependencies": {NAME: "^1.0.0"}}))
    client.prepare(path)
    return path


def installed(path: Path) -> str:
    return json.loads((path / "node_modules" / NAME / "package.json").read_text())["version"]


def fails_with(client: PackageManager, path: Path, words: str) -> None:
    """A frozen install of ``path`` (its caches empty) fails, and the client shows nopard's ``words``."""
    shutil.rmtree(path / "node_modules", ignore_errors=True)
    client.prepare(path)
    args = {"npm": ("ci", "--no-audit"), "pnpm": ("install", "--frozen-lockfile"),
            "yarn4": ("install", "--immutable")}[client.name]
    result = client.run(*args, cwd=path, check=False)
    assert result.returncode != 0, result.stdout
    assert words in result.stdout + result.stderr, result.stdout + result.stderr


def restart(old: NopardServer, env: dict[str, str]) -> NopardServer:
    """The same registry on the same port (the lockfiles' tarball URLs name it), with ``env``."""
    old.stop()
    server = NopardServer(old.workdir, {**env, "NOPARD_PORT": str(old.port)})
    server.port = old.port
    return server.start()


def admin(server: NopardServer, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "nopard-admin"), "--registry", server.url, "--token-file",
         str(server.registry / ".nopard-admin-token"), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("name", CLIENTS)
def test_clients_get_the_newest_old_enough_version_and_pinned_ones_fail(
        name: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Quarantine, then a block, then both with the upstream blackholed, through one client."""
    upstream.healthy()
    env = {"NOPARD_FORWARDER_URL": upstream.url}
    server = NopardServer(tmp_path / "nopard", env).start()
    homes = iter(range(100))

    def client() -> PackageManager:  # every install from an empty cache
        return PACKAGE_MANAGERS[name](server.url, tmp_path / f"home-{next(homes)}")

    try:
        pinned_young = project(tmp_path / "young", first := client())
        first.install(pinned_young)
        assert installed(pinned_young) == "1.2.0"  # no quarantine yet: the lockfile pins it
        quarantined = {**env, "NOPARD_MIN_RELEASE_AGE": "3d"}
        server = restart(server, quarantined)
        old_enough = project(tmp_path / "old-enough", second := client())
        second.install(old_enough)
        assert installed(old_enough) == "1.1.0"
        fails_with(client(), pinned_young, "quarantined")

        assert "blocked fresh-pkg@1.1.0" in admin(server, "block", "add", f"{NAME}@1.1.0", "--reason", REASON)
        blocked = project(tmp_path / "blocked", third := client())
        third.install(blocked)
        assert installed(blocked) == "1.0.0"
        fails_with(client(), old_enough, REASON)

        upstream.fault("blackhole")
        server = restart(server, {**quarantined, "NOPARD_META_TTL": "0.001", "NOPARD_STALE_DEADLINE": "1"})
        again = project(tmp_path / "offline", fourth := client())
        fourth.install(again)
        assert installed(again) == "1.0.0"
        fails_with(client(), pinned_young, "quarantined")
        fails_with(client(), old_enough, REASON)
    finally:
        server.stop()
        upstream.healthy()


def test_a_block_on_one_instance_applies_on_the_other_at_once(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Two instances sharing a store and Redis: a block added through one is in force on the other."""
    upstream.healthy()
    with RedisServer() as redis:
        shared = {"NOPARD_FORWARDER_URL": upstream.url, "REDIS_URL": redis.url,
                  "NOPARD_REGISTRY_PATH": str(tmp_path / "registry")}
        one = NopardServer(tmp_path / "one", {**shared, "NOPARD_ADMIN_TOKEN_FILE": str(tmp_path / "one.token")})
        two = NopardServer(tmp_path / "two", {**shared, "NOPARD_ADMIN_TOKEN_FILE": str(tmp_path / "two.token")})
        one.start(), two.start()
        try:
            for server in (one, two):
                poll_until(lambda s=server: s.request("GET", "/-/nopard/health").json()["redis"]["state"] == "up",
                           "redis up")
                assert "1.2.0" in server.request("GET", f"/{NAME}").json()["versions"]
                assert server.request("GET", f"/{NAME}/-/{NAME}-1.2.0.tgz").status == 200
            added = one.request("POST", "/-/nopard/blocks", {"spec": f"{NAME}@>=1.2.0", "reason": REASON},
                                headers=one.operator_headers())
            assert added.status == 201, added.body
            document = two.request("GET", f"/{NAME}").json()
            assert "1.2.0" not in document["versions"] and document["dist-tags"]["latest"] == "1.1.0"
            refused = two.request("GET", f"/{NAME}/-/{NAME}-1.2.0.tgz")
            assert refused.status == 451 and REASON in refused.json()["error"]
        finally:
            one.stop(), two.stop()


def test_nopard_admin_block_add_list_remove(upstream: FakeUpstream, tmp_path: Path) -> None:
    """nopard-admin block: add prints the block, list shows it, remove by name@range lifts it."""
    server = NopardServer(tmp_path / "nopard", {"NOPARD_FORWARDER_URL": upstream.url}).start()
    try:
        assert "blocked fresh-pkg@>=1.1.0 <1.2.0" in admin(server, "block", "add", f"{NAME}@>=1.1.0 <1.2.0",
                                                          "--reason", REASON)
        listed = admin(server, "block", "list")
        assert f"{NAME}@>=1.1.0 <1.2.0  admin" in listed and REASON in listed
        assert "1.1.0" not in server.request("GET", f"/{NAME}").json()["versions"]
        assert "unblocked fresh-pkg@>=1.1.0 <1.2.0" in admin(server, "block", "remove", f"{NAME}@>=1.1.0 <1.2.0")
        assert admin(server, "block", "list").strip() == "no blocks"
        assert "1.1.0" in server.request("GET", f"/{NAME}").json()["versions"]
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
