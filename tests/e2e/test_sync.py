"""The sync worker in a real nopard: refresh, backfill, schedule, manners, safety."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.polling import poll_until
from tests.support import BIN, REPO, NopardServer, Npm, files_under, until_upstream_down
from tests.upstream import FakeUpstream


@pytest.fixture
def syncing(start_nopard: Callable[..., NopardServer], fake: FakeUpstream) -> Callable[..., NopardServer]:
    """Start a nopard mirroring the fake upstream whose schedule never fires during a test."""
    def start(name: str = "sync", **settings: str) -> NopardServer:
        env = {"NOPARD_FORWARDER_URL": fake.url, "NOPARD_SYNC_INTERVAL": "3600",
               "NOPARD_UPSTREAM_TIMEOUT": "5", "NOPARD_PROBE_INTERVAL": "1"}
        env.update({f"NOPARD_{k.upper()}": v for k, v in settings.items()})
        return start_nopard(env, name=name)
    return start


def run_sync(server: NopardServer, job: str | None = None) -> list[dict]:
    answer = server.request("POST", "/-/nopard/sync", {"job": job}, headers=server.operator_headers())
    assert answer.status == 200, answer.body
    return answer.json()["reports"]


def admin(server: NopardServer, *args: str) -> subprocess.CompletedProcess:
    # NOPARD_REGISTRY_PATH as the daemon's: nopard-admin reads the operator token from it.
    return subprocess.run([str(BIN / "nopard-admin"), "--registry", server.url, *args],
                          env={**os.environ, "NOPARD_REGISTRY_PATH": str(server.registry)},
                          capture_output=True, text=True, timeout=300)


def test_refresh_picks_up_a_new_upstream_version(syncing, fake: FakeUpstream) -> None:
    """A document cached as fresh is revalidated by the refresh job and the new version served."""
    server = syncing()
    before = server.request("GET", "/debug").json()
    published = fake.change("debug")
    assert server.request("GET", "/debug").json() == before
    [report] = run_sync(server, "refresh")
    assert (report["job"], report["checked"], report["changed"], report["failures"]) == ("refresh", 1, 1, [])
    after = server.request("GET", "/debug").json()
    assert after["dist-tags"]["latest"] == published["version"]


def test_backfill_fetches_tag_targets_nobody_asked_for(syncing, fake: FakeUpstream) -> None:
    """After refresh, backfill downloads the new latest's tarball, so it installs with the upstream down."""
    server = syncing()
    server.request("GET", "/debug")
    published = fake.change("debug")
    refresh, backfill = run_sync(server)
    assert backfill["job"] == "backfill" and backfill["tarballs"] >= 1 and backfill["bytes"] > 0
    fake.fault("blackhole")
    document = server.request("GET", "/debug").json()
    url = document["versions"][published["version"]]["dist"]["tarball"]
    tarball = server.request("GET", "/" + url[len(server.url):])
    assert tarball.status == 200 and tarball.headers["x-nopard-cache"] == "HIT"
    assert hashlib.sha1(tarball.body).hexdigest() == published["shasum"]


@pytest.mark.parametrize("policy", ["none", "tags", "recent:2", "all"])
def test_backfill_policy(syncing, fake: FakeUpstream, policy: str) -> None:
    """NOPARD_BACKFILL none / tags / recent:N / all decide which missing tarballs are fetched."""
    server = syncing(name=f"policy-{policy.replace(':', '-')}", backfill=policy)
    server.request("GET", "/ms")
    fake.change("ms")  # a new latest, above the recorded versions
    run_sync(server, "refresh")
    document = server.request("GET", "/ms").json()
    expected = {"none": 0, "tags": len(set(document["dist-tags"].values())), "recent:2": 2,
                "all": len(document["versions"])}[policy]
    assert len(document["versions"]) >= 3
    [report] = run_sync(server, "backfill")
    assert report["tarballs"] == expected
    assert len([f for f in files_under(server.registry) if f.endswith(".tgz")]) == expected


def test_schedule_runs_jobs_on_its_own(syncing, fake: FakeUpstream) -> None:
    """With a short NOPARD_SYNC_INTERVAL, refresh and backfill run without being asked."""
    server = syncing(name="scheduled", sync_interval="1")
    server.request("GET", "/semver")

    def ended() -> dict | None:
        status = server.request("GET", "/-/nopard/sync").json()
        backfill = status["jobs"]["backfill"]
        return status if backfill and backfill["ended"] else None

    status = poll_until(ended, "a scheduled backfill to end", interval=0.2)
    assert status["jobs"]["refresh"]["checked"] == 1
    assert status["jobs"]["backfill"]["ended"] and status["next_run"]
    assert "sync refresh: checked 1" in server.log()


def test_jobs_wait_while_the_upstream_is_down_and_resume(syncing, fake: FakeUpstream) -> None:
    """With the breaker open the job pauses (a probe now and then, not one request per package),
    then finishes once the upstream is back."""
    server = syncing(meta_ttl="0.001")
    for name in ("debug", "ms", "semver"):
        server.request("GET", f"/{name}")
    fake.fault("500")
    until_upstream_down(server, "/debug")
    fake.reset()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(run_sync(server, "refresh")))
    worker.start()
    time.sleep(2.5)
    status = server.request("GET", "/-/nopard/sync").json()["jobs"]["refresh"]
    assert status["running"] is True
    requests_while_down = len(fake.stats()["requests"])
    assert requests_while_down <= 4  # probes, one a second at most
    fake.fault("none")
    worker.join(timeout=30)
    [report] = result[0]
    assert report["checked"] == 3 and report["failures"] == []


def test_two_instances_never_run_one_job_at_once(syncing, fake: FakeUpstream) -> None:
    """A second nopard on the same store skips a job the first is running."""
    first = syncing(name="shared", backfill="all")
    for name in ("debug", "ms", "semver"):
        first.request("GET", f"/{name}")
    second = NopardServer(first.workdir.parent / "second",
                          {"NOPARD_FORWARDER_URL": fake.url, "NOPARD_REGISTRY_PATH": str(first.registry),
                           "NOPARD_SYNC_INTERVAL": "3600"})
    second.start()
    try:
        fake.fault("slow", delay=2)
        result: list = []
        worker = threading.Thread(target=lambda: result.append(run_sync(first, "backfill")))
        worker.start()
        time.sleep(0.5)
        [skipped] = run_sync(second, "backfill")
        assert skipped["skipped"] == "another nopard instance is running it"
        worker.join(timeout=60)
        assert result[0][0]["tarballs"] >= 3
    finally:
        second.stop()


def test_killed_backfill_leaves_nothing_partial_and_resumes(syncing, fake: FakeUpstream) -> None:
    """SIGKILL in the middle of a backfill: every stored tarball is whole; the next run completes."""
    server = syncing(name="killed", backfill="all", sync_concurrency="2")
    index = json.loads((REPO / "tests" / "data" / "upstream" / "index.json").read_text())
    names = sorted(index["packages"])[:40]
    for name in names:
        server.request("GET", "/" + name.replace("/", "%2f"))
    fake.fault("slow", delay=0.3)
    threading.Thread(target=lambda: suppress_errors(server.request, "POST", "/-/nopard/sync", {"job": "backfill"},
                                                          server.operator_headers()),
                     daemon=True).start()
    time.sleep(2)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    stored_then = verify_stored_tarballs(server.registry)
    assert 0 < stored_then < 40
    fake.fault("none")
    server.start()
    [report] = run_sync(server, "backfill")
    assert report["failures"] == []
    assert verify_stored_tarballs(server.registry) == stored_then + report["tarballs"] >= 40


def suppress_errors(function: Callable, *args: object) -> None:
    """Call ``function``; the process it talks to is about to be killed."""
    try:
        function(*args)
    except OSError:
        pass


def verify_stored_tarballs(registry: Path) -> int:
    """Check every stored upstream tarball against its document's integrity; return how many."""
    count = 0
    for tarball in registry.glob("packages/**/upstream/tarballs/*.tgz"):
        package_dir = tarball.parent.parent
        document = json.loads((package_dir / "package.json").read_text())
        dists = [v["dist"] for v in document["versions"].values() if v["dist"]["tarball"].endswith("/" + tarball.name)]
        assert dists, tarball
        assert hashlib.sha1(tarball.read_bytes()).hexdigest() == dists[0]["shasum"], tarball
        count += 1
    return count


def test_admin_sync_now_prints_the_summary(syncing, fake: FakeUpstream) -> None:
    """`nopard-admin sync --now` runs both jobs and prints one summary line each; plain `sync` shows them."""
    server = syncing()
    server.request("GET", "/semver")
    result = admin(server, "sync", "--now")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refresh: checked 1, changed ")
    assert lines[1].startswith("backfill: checked 1, changed 0, tarballs 1 (")
    shown = admin(server, "sync")
    assert shown.returncode == 0 and "refresh: last run" in shown.stdout


def test_admin_reports_an_unreachable_nopard(tmp_path: Path) -> None:
    """nopard-admin says clearly when it cannot reach nopard, with exit status 2."""
    result = subprocess.run([str(BIN / "nopard-admin"), "--registry", "http://127.0.0.1:9", "sync"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("nopard-admin: cannot reach nopard at http://127.0.0.1:9")


def test_npm_installs_a_version_nobody_asked_for_after_one_sync(syncing, fake: FakeUpstream, tmp_path: Path) -> None:
    """Installed once at the old version; upstream publishes a new one; after one sync cycle, with the
    upstream silent, npm installs the new version from an empty npm cache."""
    server = syncing(name="npm-sync")
    old = server.request("GET", "/ms").json()["dist-tags"]["latest"]
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    Npm(server.url, tmp_path / "npm-1").run("install", f"ms@{old}", cwd=project)
    published = fake.change("ms")
    assert admin(server, "sync", "--now").returncode == 0
    fake.fault("blackhole")
    later = tmp_path / "later"
    later.mkdir()
    (later / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    Npm(server.url, tmp_path / "npm-2").run("install", f"ms@{published['version']}", cwd=later)
    installed = json.loads((later / "node_modules" / "ms" / "package.json").read_text())
    assert installed["version"] == published["version"]


def test_prefetch_of_a_lockfile_then_npm_ci_offline(syncing, fake: FakeUpstream, start_nopard, tmp_path: Path) -> None:
    """`nopard-admin prefetch package-lock.json` on an empty nopard; then, upstream down, `npm ci` succeeds."""
    lockmaker = syncing(name="lockmaker")
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text((REPO / "tests" / "data" / "projects" / "tree" / "package.json").read_text())
    Npm(lockmaker.url, tmp_path / "npm-lock").run("install", "--package-lock-only", "--no-audit", cwd=project)
    empty = syncing(name="empty")
    result = admin(empty, "prefetch", str(project / "package-lock.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "package-lock.json: " in result.stdout and "failures 0" in result.stdout
    fake.fault("blackhole")
    npm = Npm(empty.url, tmp_path / "npm-offline")
    npm.userconfig.write_text(npm.userconfig.read_text() + "replace-registry-host=always\n")
    npm.run("ci", "--no-audit", cwd=project)
    assert (project / "node_modules" / "express" / "package.json").exists()


def test_prefetch_never_sends_local_names_upstream(syncing, fake: FakeUpstream) -> None:
    """A lockfile naming a package published here: prefetch leaves it alone and asks the upstream nothing for it."""
    server = syncing(name="local-prefetch", max_users="1")
    token = server.token("alice", "pw")
    from tests.support import publish_body
    assert server.request("PUT", "/debug", publish_body("debug", "9.0.0"), token=token).status == 201
    fake.reset()
    answer = server.request("POST", "/-/nopard/prefetch", {"packages": [["debug", "9.0.0"], ["ms", "2.1.3"]]},
                            headers=server.operator_headers())
    assert answer.status == 200 and answer.json()["failures"] == []
    paths = [p for _, p in fake.stats()["requests"]]
    assert "/debug" not in paths and "/ms" in paths


def test_npm_installs_a_package_whose_upstream_tarball_url_is_odd(syncing, fake: FakeUpstream, tmp_path: Path) -> None:
    """An upstream tarball at /download/@hosted/odd-url/1.0.0/<sha1>: nopard serves it as
    <base>/@hosted/odd-url/-/odd-url-1.0.0.tgz, backfill keeps it (no failure, no 500), and npm
    installs it from nopard with the upstream silent."""
    server = syncing(name="odd-url", backfill="all")
    base = server.url.rstrip("/")
    document = server.request("GET", "/@hosted%2fodd-url").json()
    assert document["versions"]["1.0.0"]["dist"]["tarball"] == f"{base}/@hosted/odd-url/-/odd-url-1.0.0.tgz"
    [backfill] = run_sync(server, "backfill")
    assert (backfill["tarballs"], backfill["failures"]) == (1, [])
    assert [r for r in fake.stats()["requests"] if r[1].startswith("/download/")] != []
    fake.fault("blackhole")
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    Npm(server.url, tmp_path / "npm").run("install", "@hosted/odd-url", cwd=project)
    installed = json.loads((project / "node_modules" / "@hosted" / "odd-url" / "package.json").read_text())
    lock = json.loads((project / "package-lock.json").read_text())
    assert installed["version"] == "1.0.0"
    assert lock["packages"]["node_modules/@hosted/odd-url"]["resolved"] == f"{base}/@hosted/odd-url/-/odd-url-1.0.0.tgz"
