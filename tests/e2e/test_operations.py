"""What operators see of a running nopard: its log lines, logfile rotation, metrics and health."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.polling import poll_text, poll_until
from tests.support import NopardServer, publish_body, until_upstream_down
from tests.upstream import FakeUpstream

ABBREVIATED = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARN|ERROR|CRITICAL) [a-z-]+( |$)")


@pytest.fixture
def mirror(start_nopard: Callable[..., NopardServer], fake: FakeUpstream) -> Callable[..., NopardServer]:
    """Start a nopard mirroring the fake upstream; keyword arguments are NOPARD_* settings."""
    def start(**settings: str) -> NopardServer:
        env = {"NOPARD_FORWARDER_URL": fake.url, "NOPARD_STALE_DEADLINE": "0.5", "NOPARD_UPSTREAM_TIMEOUT": "3",
               "NOPARD_MAX_USERS": "5", "NOPARD_SYNC_INTERVAL": "0"}
        env.update({f"NOPARD_{k.upper()}": v for k, v in settings.items()})
        return start_nopard(env, name=f"ops-{time.monotonic_ns()}")
    return start


def access_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if TEXT_LINE.match(line) and " INFO access " in line]


def scrape(server: NopardServer) -> dict[tuple[str, tuple], float]:
    """GET /-/metrics, parsed: (sample name, sorted labels) -> value."""
    answer = server.request("GET", "/-/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.body.decode())
        for sample in family.samples
    }


def labels(**pairs: str) -> tuple:
    return tuple(sorted(pairs.items()))


# Log lines ---------------------------------------------------------------------


def test_access_line_carries_user_cache_status_and_upstream_time(mirror) -> None:
    """An access line is time, level, 'access', then key=value fields: the user, how it was served,
    and how long the request waited on the upstream ('-' when it did not ask it)."""
    server = mirror()
    token = server.token("alice", "pw")
    assert server.request("GET", "/debug", token=token).headers["x-nopard-cache"] == "MISS"
    assert server.request("GET", "/debug", token=token).headers["x-nopard-cache"] == "HIT"
    text = poll_text(server.log, "cache=HIT")
    pattern = re.compile(
        r" INFO access client=127\.0\.0\.1 user=alice method=GET path=/debug status=200 bytes=\d+ "
        r"ms=(?P<ms>[\d.]+) cache=(?P<cache>MISS|HIT) upstream_ms=(?P<upstream>[\d.]+|-)$"
    )
    found = {m["cache"]: m for m in map(pattern.search, access_lines(text)) if m}
    assert set(found) == {"MISS", "HIT"}
    assert 0 < float(found["MISS"]["upstream"]) <= float(found["MISS"]["ms"])
    assert found["HIT"]["upstream"] == "-"


def test_upstream_down_and_stale_serving_are_visible(mirror, fake: FakeUpstream) -> None:
    """With the upstream failing: a WARN upstream-down line, STALE access lines, and the breaker gauge at open."""
    server = mirror(meta_ttl="0.001")
    server.request("GET", "/debug")
    fake.fault("500")
    until_upstream_down(server, "/debug")
    text = poll_text(server.log, " WARN upstream-down ")
    [down] = [line for line in text.splitlines() if " WARN upstream-down " in line]
    assert TEXT_LINE.match(down)
    assert f" url={fake.url.rstrip('/')} failures=3 msg=" in down and "serving from nopard's copies" in down
    document_reads = [line for line in access_lines(text) if " path=/debug " in line][1:]
    assert document_reads and all(" cache=STALE " in line for line in document_reads)
    scraped = scrape(server)
    upstream = fake.url.rstrip("/")
    assert scraped[("nopard_upstream_breaker_state", labels(state="open", upstream=upstream))] == 1
    assert scraped[("nopard_upstream_breaker_state", labels(state="closed", upstream=upstream))] == 0
    assert scraped[("nopard_upstream_errors_total", labels(reason="http_5xx", upstream=upstream))] >= 3
    # How many reads it took depends on timing (until_upstream_down): each one was counted STALE.
    assert scraped[("nopard_cache_responses_total", labels(kind="document", status="STALE"))] == len(document_reads)


def test_json_lines_are_one_object_each(mirror) -> None:
    """NOPARD_LOG_FORMAT=json: each of nopard's lines is a JSON object with time, level, event,
    namespace, the fields and the message."""
    server = mirror(log_format="json")
    server.request("GET", "/debug", headers={"Accept": ABBREVIATED})
    text = poll_text(server.log, '"event":"access"')
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert not access_lines(text)
    [started] = [r for r in records if r["event"] == "started"]
    assert started["level"] == "info" and started["namespace"] == "nopard" and "nopard serving" in started["message"]
    [access] = [r for r in records if r["event"] == "access" and r["path"] == "/debug"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["time"])
    assert {k: access[k] for k in ("level", "namespace", "client", "user", "method", "status", "cache")} == {
        "level": "info", "namespace": "nopard.access", "client": "127.0.0.1", "user": "-", "method": "GET",
        "status": 200, "cache": "MISS",
    }
    assert access["upstream_ms"] > 0 and access["ms"] >= access["upstream_ms"]
    assert access["message"].startswith("127.0.0.1 - GET /debug 200 ")


# The logfile ----------------------------------------------------------------------


def test_logfile_rotates_by_size(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """NOPARD_LOGFILE rotates at NOPARD_LOG_MAX_SIZE and keeps NOPARD_LOG_BACKUPS old files."""
    logfile = tmp_path / "logs" / "nopard.log"
    logfile.parent.mkdir()
    server = start_nopard({"NOPARD_LOGFILE": str(logfile), "NOPARD_LOG_MAX_SIZE": "4kb", "NOPARD_LOG_BACKUPS": "2"})
    for number in range(150):
        server.request("GET", f"/-/ping?{number}")
    poll_text(logfile.read_text, "path=/-/ping?149 ")
    assert sorted(p.name for p in logfile.parent.iterdir()) == ["nopard.log", "nopard.log.1", "nopard.log.2"]
    for path in logfile.parent.iterdir():
        assert path.stat().st_size <= 4096 + 200
        assert all(TEXT_LINE.match(line) for line in path.read_text().splitlines())
    assert "path=/-/ping?148 " in (logfile.parent / "nopard.log.1").read_text() + logfile.read_text()


def test_sigusr1_reopens_the_logfile(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """After logrotate moves NOPARD_LOGFILE away, SIGUSR1 makes nopard create and write a new one."""
    logfile = tmp_path / "nopard.log"
    server = start_nopard({"NOPARD_LOGFILE": str(logfile)})
    server.request("GET", "/-/ping?before")
    poll_text(logfile.read_text, "path=/-/ping?before ")
    moved = tmp_path / "nopard.log-20261121"
    os.rename(logfile, moved)
    server.process.send_signal(signal.SIGUSR1)
    poll_until(logfile.exists, "SIGUSR1 to create a new logfile", 10)
    server.request("GET", "/-/ping?after")
    poll_text(logfile.read_text, "path=/-/ping?after ")
    assert server.process.poll() is None
    assert "?after" not in moved.read_text() and "?before" not in logfile.read_text()


# Secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_password_or_token_ever_reaches_the_log(
    start_nopard: Callable[..., NopardServer], log_format: str
) -> None:
    """Logging in, using the token and Basic credentials, logging out, failing to log in, and a
    request that fails with a traceback: the whole log holds no password and no token."""
    server = start_nopard({"NOPARD_MAX_USERS": "5", "NOPARD_LOG_FORMAT": log_format})
    password, wrong, other = (f"{word}-{secrets.token_hex(8)}" for word in ("correct", "wrong", "bobs"))
    token = server.token("alice", password)
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    wrong_basic = base64.b64encode(f"alice:{wrong}".encode()).decode()
    assert server.request("GET", "/-/whoami", token=token).status == 200
    assert server.request("GET", "/-/whoami", headers={"Authorization": f"Basic {basic}"}).status == 200
    assert server.request("GET", "/-/whoami", headers={"Authorization": f"Basic {wrong_basic}"}).status == 401
    assert server.login("alice", wrong).status == 401
    assert server.request("DELETE", f"/-/user/token/{token}", token=token).status == 200
    assert server.request("GET", "/-/whoami", token=token).status == 401
    # A store that breaks under a registration: the request fails with a logged traceback.
    shutil.rmtree(server.registry / "users")
    (server.registry / "users").write_text("not a directory")
    assert server.login("bob", other).status == 500
    text = poll_text(server.log, "unexpected error on /-/user/org.couchdb.user:bob")
    assert "Traceback" in text and ("NotADirectoryError" in text or "FileExistsError" in text)
    for secret in (password, wrong, other, token, token[len("npd_"):], basic, wrong_basic):
        assert secret not in text
    assert "/-/user/token/<redacted>" in text


# Metrics --------------------------------------------------------------------------------


def test_metrics_count_requests_cache_upstream_sync_and_storage(mirror, fake: FakeUpstream) -> None:
    """GET /-/metrics, parsed: requests by route and status, cache results, upstream latency,
    the breaker, sync counters and the bytes stored."""
    server = mirror()
    token = server.token("alice", "pw")
    assert server.request("PUT", "/local-pkg", publish_body("local-pkg", "1.0.0"), token=token).status == 201
    document = server.request("GET", "/debug").json()
    server.request("GET", "/debug", headers={"Accept": ABBREVIATED})
    version = document["dist-tags"]["latest"]
    tarball = "/" + document["versions"][version]["dist"]["tarball"][len(server.url):]
    assert server.request("GET", tarball).status == 200
    assert server.request("POST", "/-/nopard/sync", {"job": "refresh"},
                          headers=server.operator_headers()).status == 200
    scraped = scrape(server)
    upstream = fake.url.rstrip("/")

    def requests(route: str, method: str, status: str) -> float:
        return scraped.get(("nopard_http_requests_total", labels(method=method, route=route, status=status)), 0)

    assert requests("login", "PUT", "201") == 1
    assert requests("publish", "PUT", "201") == 1
    assert requests("document", "GET", "200") == 1
    assert requests("abbreviated", "GET", "200") == 1
    assert requests("tarball", "GET", "200") == 1
    assert requests("sync", "POST", "200") == 1
    assert not any(dict(key[1]).get("route", "").startswith("/") for key in scraped)
    assert scraped[("nopard_http_request_duration_seconds_count", labels(route="tarball"))] == 1
    assert scraped[("nopard_cache_responses_total", labels(kind="document", status="MISS"))] == 1
    assert scraped[("nopard_cache_responses_total", labels(kind="document", status="HIT"))] == 1
    assert scraped[("nopard_cache_responses_total", labels(kind="tarball", status="MISS"))] == 1
    assert scraped[("nopard_upstream_request_duration_seconds_count", labels(kind="document", upstream=upstream))] >= 1
    assert scraped[("nopard_upstream_request_duration_seconds_count", labels(kind="tarball", upstream=upstream))] == 1
    assert scraped[("nopard_upstream_breaker_state", labels(state="closed", upstream=upstream))] == 1
    assert scraped[("nopard_sync_runs_total", labels(job="refresh", result="finished"))] == 1
    assert scraped[("nopard_sync_packages_checked_total", labels(job="refresh"))] == 1
    assert scraped[("nopard_memory_cache_entries", ())] >= 1
    stored = sum(p.stat().st_size for p in server.registry.rglob("*") if p.is_file())
    assert 0 < scraped[("nopard_store_bytes", ())] <= stored + 4096
    assert scraped[("nopard_info", labels(version="0.1.0"))] == 1


def test_metrics_follow_the_read_policy(mirror) -> None:
    """With NOPARD_AUTH_READ=yes, /-/metrics needs a token, as every read does."""
    server = mirror(auth_read="yes")
    assert server.request("GET", "/-/metrics").status == 401
    token = server.token("alice", "pw")
    assert server.request("GET", "/-/metrics", token=token).status == 200


# Health ---------------------------------------------------------------------------------


def test_health_is_200_while_the_store_works_and_503_when_it_does_not(
    start_nopard: Callable[..., NopardServer],
) -> None:
    """/-/nopard/health needs no login; it answers 503 while the registry directory is unusable
    (here: replaced by a regular file), and 200 again once it is back."""
    server = start_nopard({"NOPARD_AUTH_READ": "yes"})
    healthy = server.request("GET", "/-/nopard/health")
    assert healthy.status == 200 and healthy.json()["status"] == "ok"
    assert server.request("GET", "/-/nopard/status").status == 401
    moved = server.registry.with_name("registry.away")
    os.rename(server.registry, moved)
    server.registry.write_text("not a directory")
    try:
        # A probe's answer is kept PROBE_FRESH_SECONDS (2 s): the next one sees the broken store.
        broken = poll_until(lambda: (answer := server.request("GET", "/-/nopard/health")).status == 503 and answer,
                            "health to see the broken store")
        assert broken.json()["status"] == "unavailable" and broken.json()["error"]
    finally:
        server.registry.unlink()
        os.rename(moved, server.registry)
    poll_until(lambda: server.request("GET", "/-/nopard/health").status == 200, "health to see the store back")
    assert not list((server.registry / "health").iterdir())
