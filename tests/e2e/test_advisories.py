"""Advisories offline with the real npm 11: OSV records imported with nopard-admin, then
`npm audit` through nopard with the upstream blackholed reports them as npm prints advisories."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package_managers import Pnpm
from tests.support import BIN, REPO, NopardServer, Npm
from tests.upstream import FakeUpstream

RECORDS = REPO / "tests" / "data" / "advisories"
GHSA = "GHSA-2222-3333-4444"
MAL = "MAL-2099-0001"


def project(directory: Path, dependencies: dict[str, str]) -> Path:
    """A project depending on exact ``dependencies``."""
    directory.mkdir(parents=True)
    (directory / "package.json").write_text(json.dumps({"name": "app", "version": "1.0.0", "private": True,
                                                        "dependencies": dependencies}))
    return directory


def import_records(server: NopardServer, path: Path) -> subprocess.CompletedProcess:
    """nopard-admin advisories import ``path`` into ``server``'s registry."""
    return subprocess.run([str(BIN / "nopard-admin"), "advisories", "import", str(path),
                           "--registry-path", str(server.registry)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A nopard mirroring a fake upstream, a project with ms 2.0.0 installed through it, the test records imported."""
    work = tmp_path_factory.mktemp("advisories")
    with FakeUpstream() as upstream:
        server = NopardServer(work / "nopard", {"NOPARD_FORWARDER_URL": upstream.url,
                                                "NOPARD_UPSTREAM_TIMEOUT": "2"}).start()
        npm = Npm(server.url, work / "npm")
        app = project(work / "app", {"ms": "2.0.0"})
        npm.run("install", "--no-audit", cwd=app)
        imported = import_records(server, RECORDS)
        assert imported.returncode == 0, imported.stderr
        yield {"work": work, "upstream": upstream, "server": server, "npm": npm, "app": app,
               "imported": imported.stdout}
        server.stop()


def test_the_import_prints_its_summary(world: dict) -> None:
    """Two npm records stored, the PyPI one skipped, in one line."""
    assert world["imported"].splitlines()[0] == ("advisories: 3 records read, 2 new, 0 updated, 0 unchanged, "
                                                 "0 withdrawn, 1 of other ecosystems skipped, 0 malformed skipped")


def test_npm_audit_json_reports_the_imported_advisory_with_the_upstream_blackholed(world: dict) -> None:
    """`npm audit --json`, upstream silent: ms is high, via the GHSA record's `<2.1.3` (which npm
    narrows to the versions it knows: 2.0.0)."""
    world["upstream"].fault("blackhole")
    try:
        result = world["npm"].run("audit", "--json", cwd=world["app"], check=False)
    finally:
        world["upstream"].fault("none")
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    vulnerability = report["vulnerabilities"]["ms"]
    assert (vulnerability["severity"], vulnerability["range"]) == ("high", "2.0.0")
    [via] = vulnerability["via"]
    assert (via["range"], via["severity"], via["name"]) == ("<2.1.3", "high", "ms")
    assert GHSA in via["title"] and via["url"].endswith(f"/-/npm/v1/security/advisories/{GHSA}")
    assert via["cwe"] == ["CWE-1333"] and via["cvss"]["score"] == 7.5
    assert report["metadata"]["vulnerabilities"]["high"] == 1


def test_npm_audit_prints_the_advisory_with_the_upstream_blackholed(world: dict) -> None:
    """`npm audit`, upstream silent: the text report names ms, its range, severity and title."""
    world["upstream"].fault("blackhole")
    try:
        result = world["npm"].run("audit", cwd=world["app"], check=False)
    finally:
        world["upstream"].fault("none")
    assert result.returncode == 1, result.stderr
    assert "ms  2.0.0" in result.stdout and "Severity: high" in result.stdout
    assert f"Inefficient regular expression in ms (a record written for nopard's tests) ({GHSA})" in result.stdout
    assert "1 high severity vulnerability" in result.stdout


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A nopard whose advisories come from the fake upstream's OSV zip (NOPARD_ADVISORIES_URL), audits local."""
    work = tmp_path_factory.mktemp("advisories-sync")
    with FakeUpstream() as upstream:
        server = NopardServer(work / "nopard", {"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_AUDIT": "local",
                                                "NOPARD_ADVISORIES_URL": upstream.url + "osv/npm/all.zip",
                                                "NOPARD_SYNC_INTERVAL": "0"}).start()
        npm = Npm(server.url, work / "npm")
        app = project(work / "app", {"ms": "2.0.0"})
        npm.run("install", "--no-audit", cwd=app)
        # Locked to the version the malware record names, before nopard knows the record.
        locked = project(work / "locked", {"balanced-match": "5.0.0"})
        npm.run("install", "--no-audit", cwd=locked)
        yield {"work": work, "upstream": upstream, "server": server, "npm": npm, "app": app, "locked": locked}
        server.stop()


def sync_advisories(server: NopardServer) -> dict:
    """Run the advisories job now (nopard-admin sync --now --job advisories); its report."""
    answer = server.request("POST", "/-/nopard/sync", json.dumps({"job": "advisories"}),
                            headers={"Content-Type": "application/json", **server.operator_headers()})
    assert answer.status == 200, answer.body
    [report] = answer.json()["reports"]
    return report


def test_the_sync_worker_imports_the_zip_then_only_its_changes(synced: dict) -> None:
    """First run imports the zip; an unchanged zip is a 304 (nothing read); a record added upstream arrives
    with the next run, and npm audit (NOPARD_AUDIT=local, the upstream never asked) reports both advisories."""
    server, upstream = synced["server"], synced["upstream"]
    first = sync_advisories(server)
    assert (first["checked"], first["changed"], first["failure_count"]) == (3, 2, 0)
    assert (sync_advisories(server)["checked"]) == 0
    record = json.loads((RECORDS / f"{GHSA}.json").read_text())
    upstream.control("POST", "/advisories", {**record, "id": "GHSA-2222-3333-6666", "summary": "Another flaw in ms",
                                              "database_specific": {"severity": "CRITICAL"}})
    try:
        third = sync_advisories(server)
    finally:
        upstream.control("POST", "/advisories/reset")
    assert (third["checked"], third["changed"]) == (4, 1)
    upstream.reset()
    result = synced["npm"].run("audit", "--json", cwd=synced["app"], check=False)
    vulnerability = json.loads(result.stdout)["vulnerabilities"]["ms"]
    assert vulnerability["severity"] == "critical"
    assert sorted(via["severity"] for via in vulnerability["via"]) == ["critical", "high"]
    assert not [path for _, path in upstream.stats()["requests"] if "security" in path]


def test_pnpm_audit_reads_the_quick_audit_with_the_upstream_blackholed(world: dict) -> None:
    """pnpm 10 posts the quick audit: with the upstream silent it reports ms's advisory, high, in <2.1.3."""
    pnpm = Pnpm(world["server"].url, world["work"] / "pnpm")
    app = project(world["work"] / "pnpm-app", {"ms": "2.0.0"})
    pnpm.install(app)
    world["upstream"].fault("blackhole")
    try:
        result = pnpm.run("audit", "--json", cwd=app, check=False)
    finally:
        world["upstream"].fault("none")
    assert result.returncode == 1, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert "advisories" in answer, result.stdout[:3000]
    [advisory] = answer["advisories"].values()
    assert (advisory["module_name"], advisory["severity"], advisory["vulnerable_versions"]) == ("ms", "high", "<2.1.3")
    assert GHSA in advisory["title"] and advisory["findings"][0]["version"] == "2.0.0"


def test_the_synced_malware_record_blocks_its_version_at_once(synced: dict) -> None:
    """After the sync imported MAL-2099-0001: `npm ci` of a lockfile pinning balanced-match 5.0.0 fails
    naming the record, and a fresh `npm install balanced-match` gets 4.0.4 (latest moved back)."""
    sync_advisories(synced["server"])  # idempotent: the records are in after the test above
    again = synced["work"] / "locked-again"
    again.mkdir()
    for name in ("package.json", "package-lock.json"):
        (again / name).write_text((synced["locked"] / name).read_text())
    npm = Npm(synced["server"].url, synced["work"] / "npm-after-sync")
    refused = npm.run("ci", "--no-audit", cwd=again, check=False)
    assert refused.returncode != 0 and MAL in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    fresh = project(synced["work"] / "fresh", {})
    npm.run("install", "--no-audit", "balanced-match", cwd=fresh)
    assert json.loads((fresh / "node_modules" / "balanced-match" / "package.json").read_text())["version"] == "4.0.4"


def test_a_malware_version_imported_offline_is_not_installable(world: dict) -> None:
    """After nopard-admin advisories import: balanced-match resolves to 4.0.4, and 5.0.0 is not offered."""
    npm = Npm(world["server"].url, world["work"] / "npm-after-import")
    fresh = project(world["work"] / "fresh", {})
    npm.run("install", "--no-audit", "balanced-match", cwd=fresh)
    assert json.loads((fresh / "node_modules" / "balanced-match" / "package.json").read_text())["version"] == "4.0.4"
    assert npm.run("install", "--no-audit", "balanced-match@5.0.0", cwd=fresh, check=False).returncode != 0
