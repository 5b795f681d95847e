"""Operator routes in-process: ping, the root document, health, metrics, status, the sync trigger."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest_twisted

from tests.unit.route_harness import build


@pytest_twisted.ensureDeferred
async def test_ping_answers_an_empty_object(tmp_path: Path) -> None:
    """npm ping gets 200 and {}."""
    answer = await build(tmp_path).call("GET", "/-/ping")
    assert (answer.status, answer.json()) == (200, {})


@pytest_twisted.ensureDeferred
async def test_root_names_the_registry_to_clients(tmp_path: Path) -> None:
    """GET / without a browser's Accept header is a small JSON document."""
    answer = await build(tmp_path).call("GET", "/")
    assert answer.json()["registry"] == "nopard"


@pytest_twisted.ensureDeferred
async def test_health_is_ok_while_the_store_works(tmp_path: Path) -> None:
    """A working store and no Redis configured: 200, status ok, the upstream listed."""
    answer = await build(tmp_path).call("GET", "/-/nopard/health")
    assert answer.status == 200 and answer.json()["status"] == "ok"
    assert [u["state"] for u in answer.json()["upstreams"]] == ["closed"]


@pytest_twisted.ensureDeferred
async def test_health_is_503_when_the_store_fails(tmp_path: Path) -> None:
    """A store that cannot be written (its directory became a file) makes health answer 503."""
    app = build(tmp_path)
    shutil.rmtree(tmp_path / "registry", ignore_errors=True)
    (tmp_path / "registry").write_text("not a directory")
    answer = await app.call("GET", "/-/nopard/health")
    assert answer.status == 503 and answer.json()["status"] == "unavailable"


@pytest_twisted.ensureDeferred
async def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    """/-/metrics answers Prometheus' text format, never cached."""
    answer = await build(tmp_path).call("GET", "/-/metrics")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["cache-control"] == "no-store" and b"# TYPE" in answer.body


@pytest_twisted.ensureDeferred
async def test_metrics_need_a_login_when_reads_do(tmp_path: Path) -> None:
    """With NOPARD_AUTH_READ on, anonymous metrics are 401."""
    answer = await build(tmp_path, auth_read="yes").call("GET", "/-/metrics")
    assert answer.status == 401 and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_status_names_the_version_and_the_cache(tmp_path: Path) -> None:
    """/-/nopard/status reports nopard's version, the cache and the upstreams."""
    answer = await build(tmp_path).call("GET", "/-/nopard/status")
    assert answer.status == 200 and {"nopard", "cache", "upstreams", "redis"} <= set(answer.json())


@pytest_twisted.ensureDeferred
async def test_sync_status_lists_the_jobs(tmp_path: Path) -> None:
    """GET /-/nopard/sync answers each job's state."""
    answer = await build(tmp_path).call("GET", "/-/nopard/sync")
    assert answer.status == 200 and isinstance(answer.json(), dict)


@pytest_twisted.ensureDeferred
async def test_sync_trigger_refuses_an_unknown_job(tmp_path: Path) -> None:
    """POST /-/nopard/sync with a job nopard does not have is 400 naming the known ones."""
    answer = await build(tmp_path).call("POST", "/-/nopard/sync", {"job": "dance"})
    assert answer.status == 400 and "refresh" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_sync_trigger_from_behind_a_proxy_needs_a_login(tmp_path: Path) -> None:
    """An anonymous request forwarded by a proxy (not nopard-admin on this machine) is 401."""
    answer = await build(tmp_path).call("POST", "/-/nopard/sync", {"job": "refresh"}, X_Forwarded_For="192.0.2.1")
    assert answer.status == 401


@pytest_twisted.ensureDeferred
async def test_prefetch_refuses_a_malformed_body(tmp_path: Path) -> None:
    """POST /-/nopard/prefetch with anything but name/version pairs is 400 saying the shape."""
    answer = await build(tmp_path).call("POST", "/-/nopard/prefetch", {"packages": "left-pad"})
    assert answer.status == 400 and "packages" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_utf8_is_a_json_400(tmp_path: Path) -> None:
    """A percent-encoded path that does not decode as UTF-8 is refused in JSON."""
    answer = await build(tmp_path).call("GET", "/%ff%fe")
    assert answer.status == 400 and "UTF-8" in answer.json()["error"]
