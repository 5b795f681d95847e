"""The real npm CLI installing a real dependency tree through nopard: cold, warm, and
with the upstream silent and every document stale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import poll_until
from tests.support import REPO, NopardServer, Npm, locked_versions, new_project
from tests.upstream import FakeUpstream

TREE = REPO / "tests" / "data" / "projects" / "tree"
# Connections nopard may open to a silent upstream during a whole install: a few
# stale revalidations before the breaker opens, and a probe now and then.
MAX_OFFLINE_CONNECTIONS = 12
# Upstream requests one install may make with the upstream silent and every document stale.
MAX_OFFLINE_REQUESTS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A fake upstream, a nopard mirroring it, and a project installed cold through it."""
    work = tmp_path_factory.mktemp("mirror-npm")
    with FakeUpstream() as upstream:
        server = NopardServer(work / "nopard", {"NOPARD_FORWARDER_URL": upstream.url})
        server.start()
        try:  # a failed install must not leave nopard running past the tests
            project = new_project(TREE, work / "cold", with_lock=False)
            started = time.monotonic()
            Npm(server.url, work / "npm-cold").run("install", "--no-audit", cwd=project)
            timings = {"cold": time.monotonic() - started}
            yield {"work": work, "upstream": upstream, "server": server, "project": project, "timings": timings}
        finally:
            server.stop()


def test_cold_install_goes_through_nopard(world: dict) -> None:
    """A cold `npm install` of ~200 packages fetches every document and tarball via nopard."""
    project, server = world["project"], world["server"]
    versions = locked_versions(project)
    assert len(versions) > 150
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = {entry["resolved"] for path, entry in lock["packages"].items() if path}
    assert all(url.startswith(server.url) for url in resolved)
    distinct = {(path.rsplit("node_modules/", 1)[-1], version) for path, version in versions.items()}
    # Each copy is written once the fetches pause (NOPARD_MIRROR_WRITE_DELAY), every one of them.
    poll_until(lambda: len(list(server.registry.rglob("upstream/tarballs/*.tgz"))) >= len(distinct),
               "every fetched tarball written to the store")
    assert len(list(server.registry.rglob("upstream/tarballs/*.tgz"))) == len(distinct)


def test_warm_install_from_an_empty_npm_cache(world: dict) -> None:
    """`npm ci` with an empty npm cache installs the same tree from nopard without the upstream."""
    upstream, server = world["upstream"], world["server"]
    project = new_project(world["project"], world["work"] / "warm", with_lock=True)
    upstream.reset()
    started = time.monotonic()
    Npm(server.url, world["work"] / "npm-warm").run("ci", "--no-audit", cwd=project)
    world["timings"]["warm"] = time.monotonic() - started
    assert locked_versions(project) == locked_versions(world["project"])
    assert upstream.stats()["requests"] == []


def test_npm_audit_goes_through_nopard(world: dict) -> None:
    """`npm audit` through nopard reaches the upstream's audit endpoint and reports no problems."""
    result = Npm(world["server"].url, world["work"] / "npm-audit").run("audit", "--json", cwd=world["project"])
    assert json.loads(result.stdout)["metadata"]["vulnerabilities"]["total"] == 0


def test_offline_install_with_every_document_stale(world: dict) -> None:
    """Upstream accepting connections but never answering, every document stale: `npm ci` and a
    lockfile-less `npm install` both succeed, opening only a small constant number of connections.
    """
    upstream, old = world["upstream"], world["server"]
    old.stop()
    # Same registry, same port (the lockfile's tarball URLs name it), and every document stale.
    server = NopardServer(old.workdir, {"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_META_TTL": "0.001",
                                        "NOPARD_STALE_DEADLINE": "1", "NOPARD_PORT": str(old.port)})
    server.port = old.port
    server.start()
    try:
        upstream.fault("blackhole")
        upstream.reset()
        project = new_project(world["project"], world["work"] / "offline-ci", with_lock=True)
        started = time.monotonic()
        Npm(server.url, world["work"] / "npm-offline").run("ci", "--no-audit", cwd=project)
        world["timings"]["offline"] = time.monotonic() - started
        assert locked_versions(project) == locked_versions(world["project"])
        assert len(upstream.stats()["requests"]) <= MAX_OFFLINE_REQUESTS

        fresh = new_project(world["project"], world["work"] / "offline-install", with_lock=False)
        upstream.reset()
        # With the audit on: it fails fast (503) and npm installs anyway.
        Npm(server.url, world["work"] / "npm-offline-2").run("install", "--audit", cwd=fresh)
        assert locked_versions(fresh) == locked_versions(world["project"])
        # Every document is asked for, each stale: one request probes at a time, the others are
        # served stale at once (each used to wait on its own revalidation).
        assert len(upstream.stats()["requests"]) <= MAX_OFFLINE_REQUESTS
        attempts = upstream.stats()["connections"]
        print(f"timings {world['timings']}, upstream connection attempts while offline: {attempts}")
        assert attempts <= MAX_OFFLINE_CONNECTIONS
        assert "STALE" in server.log()
        assert "method=POST path=/-/npm/v1/security/advisories/bulk status=503" in server.log()
    finally:
        upstream.fault("none")
        server.stop()


def test_a_corrupt_upstream_tarball_fails_the_install_and_is_kept_nowhere(tmp_path: Path) -> None:
    """The upstream sends a tarball that does not match its integrity: nopard streams it while it
    arrives and cuts the download before its end, so `npm install` fails, npm caches nothing (an
    --offline install cannot find it) and nopard stores nothing; once the upstream is fixed, the
    install works and the tarball is stored."""
    with FakeUpstream() as upstream:
        server = NopardServer(tmp_path / "nopard", {"NOPARD_FORWARDER_URL": upstream.url})
        server.start()
        try:
            project = tmp_path / "project"
            project.mkdir()
            (project / "package.json").write_text(json.dumps({"name": "p", "version": "1.0.0",
                                                              "dependencies": {"ms": "2.1.3"}}))
            npm = Npm(server.url, tmp_path / "npm")
            upstream.fault("corrupt", paths=["/ms/-/"])
            failed = npm.run("install", "--no-audit", cwd=project, check=False)
            assert failed.returncode != 0 and not (project / "node_modules" / "ms").exists()
            assert not list(server.registry.rglob("*.tgz"))
            assert "integrity-mismatch" in server.log() or "checksum mismatch" in server.log()
            upstream.fault("none")
            offline = npm.run("install", "--no-audit", "--offline", cwd=project, check=False)
            assert offline.returncode != 0 and not (project / "node_modules" / "ms").exists()
            npm.run("install", "--no-audit", cwd=project)
            assert json.loads((project / "node_modules" / "ms" / "package.json").read_text())["version"] == "2.1.3"
            poll_until(lambda: [path.name for path in server.registry.rglob("*.tgz")] == ["ms-2.1.3.tgz"],
                       "the good tarball written to the store")
        finally:
            server.stop()
        # Stopped, so every copy that waited is written: the refused tarball was never among them.
        assert [path.name for path in server.registry.rglob("*.tgz")] == ["ms-2.1.3.tgz"]
