"""Operator routes in-process: ping, the root document, health, metrics, status, the sync trigger,
who may run sync and prefetch, and what anonymous readers see of reports and upstream URLs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest_twisted

from tests.unit.route_harness import OPERATOR_TOKEN, build

OPERATOR = {"X_Nopard_Operator_Token": OPERATOR_TOKEN}
HIDING_RULES = {"packages": [{"pattern": "secret-*", "access": ["alice"], "publish": ["alice"]},
                             {"pattern": "**", "access": ["$all"], "publish": ["$all"], "proxy": ["$all"]}]}


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
    answer = await build(tmp_path).call("POST", "/-/nopard/sync", {"job": "dance"}, **OPERATOR)
    assert answer.status == 400 and "refresh" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_sync_trigger_from_behind_a_proxy_needs_a_login(tmp_path: Path) -> None:
    """An anonymous request forwarded by a proxy (not nopard-admin on this machine) is 401."""
    answer = await build(tmp_path).call("POST", "/-/nopard/sync", {"job": "refresh"}, X_Forwarded_For="192.0.2.1")
    assert answer.status == 401


@pytest_twisted.ensureDeferred
async def test_prefetch_refuses_a_malformed_body(tmp_path: Path) -> None:
    """POST /-/nopard/prefetch with anything but name/version pairs is 400 saying the shape."""
    answer = await build(tmp_path).call("POST", "/-/nopard/prefetch", {"packages": "left-pad"}, **OPERATOR)
    assert answer.status == 400 and "packages" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_utf8_is_a_json_400(tmp_path: Path) -> None:
    """A percent-encoded path that does not decode as UTF-8 is refused in JSON."""
    answer = await build(tmp_path).call("GET", "/%ff%fe")
    assert answer.status == 400 and "UTF-8" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_sync_and_prefetch_from_loopback_without_the_token_are_refused(tmp_path: Path) -> None:
    """From 127.0.0.1, without X-Forwarded-For (a reverse proxy that adds none) and without the
    operator token, anonymous sync and prefetch are 401: the address grants nothing."""
    app = build(tmp_path)
    sync = await app.call("POST", "/-/nopard/sync", {"job": "refresh"})
    prefetch = await app.call("POST", "/-/nopard/prefetch", {"packages": [["left-pad", "1.0.0"]]})
    assert (sync.status, prefetch.status) == (401, 401)
    assert "admin" in sync.json()["error"] and "nopard-admin" in sync.json()["error"]


@pytest_twisted.ensureDeferred
async def test_sync_and_prefetch_refuse_users_who_are_not_admins(tmp_path: Path) -> None:
    """A logged-in user not named in NOPARD_ADMINS gets 403 for sync and prefetch."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("bob")
    sync = await app.call("POST", "/-/nopard/sync", {"job": "refresh"}, token=token)
    prefetch = await app.call("POST", "/-/nopard/prefetch", {"packages": []}, token=token)
    assert (sync.status, prefetch.status) == (403, 403)


@pytest_twisted.ensureDeferred
async def test_sync_and_prefetch_for_an_admin_and_for_the_operator_token(tmp_path: Path) -> None:
    """An admin's login and nopard-admin's operator token both run sync and prefetch."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("root")
    assert (await app.call("POST", "/-/nopard/sync", {"job": "refresh"}, token=token)).status == 200
    assert (await app.call("POST", "/-/nopard/sync", {"job": "refresh"}, **OPERATOR)).status == 200
    assert (await app.call("POST", "/-/nopard/prefetch", {"packages": []}, token=token)).status == 200
    assert (await app.call("POST", "/-/nopard/prefetch", {"packages": []}, **OPERATOR)).status == 200


@pytest_twisted.ensureDeferred
async def test_a_wrong_operator_token_is_401(tmp_path: Path) -> None:
    """A request with a token that is not this nopard's is refused, whoever logged in."""
    app = build(tmp_path)
    answer = await app.call("POST", "/-/nopard/sync", {"job": "refresh"}, X_Nopard_Operator_Token="o" * 42 + "x")
    assert answer.status == 401 and "X-Nopard-Operator-Token" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_sync_report_hides_names_the_reader_may_not_read(tmp_path: Path) -> None:
    """The last prefetch report names a hidden package only to those who may read it: anonymous
    readers see neither its name nor its failure in the count; alice and the operator see it."""
    app = build(tmp_path, rules=HIDING_RULES)
    alice = await app.user("alice")
    answer = await app.call("POST", "/-/nopard/prefetch", {"packages": [["secret-plans", "1.0.0"]]}, **OPERATOR)
    assert answer.status == 200

    def failures(answer: object) -> tuple[int, list[str]]:
        report = answer.json()["jobs"]["prefetch"]  # type: ignore[attr-defined]
        return report["failure_count"], [f["package"] for f in report["failures"]]

    anonymous = await app.call("GET", "/-/nopard/sync")
    assert b"secret-plans" not in anonymous.body and failures(anonymous) == (0, [])
    assert failures(await app.call("GET", "/-/nopard/sync", token=alice)) == (1, ["secret-plans"])
    assert failures(await app.call("GET", "/-/nopard/sync", **OPERATOR)) == (1, ["secret-plans"])


CREDENTIALED = {"forwarder_url": "http://mirror-user:hunter2pw@127.0.0.1:9/",
                "scope_upstreams": "@corp=https://corp-user:corp-secret@127.0.0.1:8/"}


@pytest_twisted.ensureDeferred
async def test_health_and_status_never_show_upstream_credentials(tmp_path: Path) -> None:
    """Forwarder and scope upstream URLs with user:password@ appear without them in the health
    answer, /-/nopard/status and the status page, for anonymous readers."""
    app = build(tmp_path, **CREDENTIALED)
    health = await app.call("GET", "/-/nopard/health")
    status = await app.call("GET", "/-/nopard/status")
    page = await app.call("GET", "/-/web/status")
    for answer in (health, status, page):
        assert answer.status == 200
        assert b"hunter2pw" not in answer.body and b"corp-secret" not in answer.body
        assert b"mirror-user" not in answer.body and b"corp-user" not in answer.body
    assert {u["url"] for u in health.json()["upstreams"]} == {"http://<redacted>@127.0.0.1:9",
                                                           "https://<redacted>@127.0.0.1:8"}
    assert b"&lt;redacted&gt;@127.0.0.1:8" in page.body or b"<redacted>@127.0.0.1:8" in page.body
