"""Metrics, the store health probe and the request's upstream wait, without a server."""

from __future__ import annotations

import contextvars
from pathlib import Path
from types import SimpleNamespace

import pytest_twisted
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from nopard.jobs.sync import JobReport
from nopard.ops.metrics import (
    PROBE_FRESH_SECONDS,
    Metrics,
    StoreProbe,
    StoreSize,
    UpstreamWait,
    add_upstream_wait,
    request_upstream_wait,
    route_of,
    upstream_label,
)
from nopard.storage.fs import FilesystemStorage, directory_size
from nopard.upstream.breaker import Breaker

ABBREVIATED = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_routes_are_templates_not_paths() -> None:
    """Requests are labelled by the route they matched, never by the package they named."""
    cases = {
        ("GET", "/debug", None): "document",
        ("GET", "/@types%2fnode", ABBREVIATED): "abbreviated",
        ("HEAD", "/debug", ABBREVIATED): "abbreviated",
        ("PUT", "/@scope/pkg", None): "publish",
        ("GET", "/debug/1.0.0", None): "version",
        ("GET", "/debug/-/debug-1.0.0.tgz", None): "tarball",
        ("PUT", "/-/user/org.couchdb.user:alice", None): "login",
        ("DELETE", "/-/user/token/npd_secret", None): "logout",
        ("POST", "/-/npm/v1/security/advisories/bulk", None): "audit",
        ("GET", "/-/nopard/health", None): "health",
        ("GET", "/-/metrics?x=1", None): "metrics",
        ("GET", "/-/nopard/status", None): "status",
        ("GET", "/-/whatever", None): "other",
        ("GET", "/a/b/c/d", None): "other",
        ("GET", "/%ff", None): "other",
    }
    for (method, path, accept), route in cases.items():
        assert route_of(method, path, accept) == route, path


def test_upstream_labels_drop_credentials() -> None:
    """An upstream URL with user:password@ is labelled without them."""
    assert upstream_label("https://bob:pw@npm.example/path") == "https://npm.example/path"
    assert upstream_label("http://127.0.0.1:4873") == "http://127.0.0.1:4873"


def test_requests_cache_upstream_and_sync_are_counted() -> None:
    """The counters the site, upstream client and sync jobs feed show up in a scrape."""
    metrics = Metrics(reactor)
    metrics.request_finished("document", "GET", 200, 0.01, "HIT")
    metrics.request_finished("tarball", "GET", 200, 0.02, "MISS")
    metrics.request_finished("login", "PUT", 401, 0.1, None)
    metrics.upstream_call("https://up.example", "document", 0.3, None)
    metrics.upstream_call("https://up.example", "document", 2.0, "timeout")
    metrics.sync_finished(JobReport("refresh", checked=3, changed=1, failure_count=1))
    metrics.sync_finished(JobReport("backfill", skipped="another nopard instance is running it"))
    scraped = samples(metrics)
    assert scraped[("nopard_http_requests_total", (("method", "GET"), ("route", "document"), ("status", "200")))] == 1
    assert scraped[("nopard_http_requests_total", (("method", "PUT"), ("route", "login"), ("status", "401")))] == 1
    assert scraped[("nopard_cache_responses_total", (("kind", "document"), ("status", "HIT")))] == 1
    assert scraped[("nopard_cache_responses_total", (("kind", "tarball"), ("status", "MISS")))] == 1
    up = ("upstream", "https://up.example")
    assert scraped[("nopard_upstream_request_duration_seconds_count", (("kind", "document"), up))] == 2
    assert scraped[("nopard_upstream_errors_total", (("reason", "timeout"), up))] == 1
    assert scraped[("nopard_sync_runs_total", (("job", "refresh"), ("result", "finished")))] == 1
    assert scraped[("nopard_sync_runs_total", (("job", "backfill"), ("result", "skipped")))] == 1
    assert scraped[("nopard_sync_packages_checked_total", (("job", "refresh"),))] == 3
    assert scraped[("nopard_sync_failures_total", (("job", "refresh"),))] == 1


def test_a_made_up_method_is_counted_as_other() -> None:
    """A client may send any token as its method (it is answered 405 all the same): each one must
    not add a label set to the metrics, which would grow without bound."""
    metrics = Metrics(reactor)
    for number in range(50):
        metrics.request_finished("ping", f"FOO{number}", 405, 0.001, None)
    metrics.request_finished("ping", "GET", 200, 0.001, None)
    scraped = samples(metrics)
    methods = {dict(labels)["method"] for name, labels in scraped if name == "nopard_http_requests_total"}
    assert methods == {"other", "GET"}
    assert scraped[("nopard_http_requests_total", (("method", "other"), ("route", "ping"), ("status", "405")))] == 50


def test_breaker_state_is_read_at_scrape_time() -> None:
    """The breaker gauge says which state each upstream's breaker is in at the moment of the scrape."""
    now = [0.0]
    breaker = Breaker(lambda: now[0])
    upstream = SimpleNamespace(base_url="http://up.example", breaker=breaker)
    metrics = Metrics(reactor)
    metrics.live.upstreams = lambda: [upstream]

    def state() -> dict[str, float]:
        scraped = samples(metrics)
        return {s: scraped[("nopard_upstream_breaker_state", (("state", s), ("upstream", "http://up.example")))]
                for s in ("closed", "open", "probing")}

    assert state() == {"closed": 1, "open": 0, "probing": 0}
    for _ in range(3):
        breaker.failed()
    assert state() == {"closed": 0, "open": 1, "probing": 0}
    assert samples(metrics)[("nopard_upstream_consecutive_failures", (("upstream", "http://up.example"),))] == 3


def test_upstream_wait_is_charged_to_the_request_in_context() -> None:
    """Upstream time adds up in the UpstreamWait of the request whose context it runs in."""
    wait = UpstreamWait()
    assert wait.ms is None

    def in_request() -> None:
        request_upstream_wait.set(wait)
        add_upstream_wait(0.25)
        add_upstream_wait(0.0501)

    contextvars.copy_context().run(in_request)
    add_upstream_wait(5.0)  # no request here: charged to nobody
    assert wait.ms == 300.1 and wait.calls == 2


def test_directory_size_counts_every_file(tmp_path: Path) -> None:
    """The store's size is the sum of its files' sizes, in every directory."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one").write_bytes(b"x" * 10)
    (tmp_path / "a" / "b" / "two").write_bytes(b"y" * 5)
    assert directory_size(str(tmp_path)) == (15, 2)


@pytest_twisted.ensureDeferred
async def test_store_size_is_walked_at_most_once_a_minute(tmp_path: Path) -> None:
    """The first scrape waits for a walk; later ones within max_age reuse its figures."""
    (tmp_path / "f").write_bytes(b"z" * 7)
    walks = []

    async def measure():
        walks.append(tmp_path)
        return await deferToThread(directory_size, str(tmp_path))

    now = [100.0]
    size = StoreSize(measure, SimpleNamespace(seconds=lambda: now[0]), max_age=60)
    await size.refresh()
    (tmp_path / "g").write_bytes(b"z" * 3)
    now[0] += 30
    await size.refresh()
    assert (size.bytes, size.files, len(walks)) == (7, 1, 1)


@pytest_twisted.ensureDeferred
async def test_store_probe_says_whether_the_store_works(tmp_path: Path) -> None:
    """The probe passes on a working store and leaves nothing; a store that is a file fails it."""
    root = tmp_path / "registry"
    probe = StoreProbe(FilesystemStorage(str(root), deferToThread), reactor)
    assert await probe.check() is None
    assert [p.name for p in root.rglob("*") if p.is_file()] == []
    broken = tmp_path / "not-a-directory"
    broken.write_text("")
    error = await StoreProbe(FilesystemStorage(str(broken), deferToThread), reactor).check()
    assert error is not None and "Error" in error


@pytest_twisted.ensureDeferred
async def test_store_probes_are_shared_and_kept_briefly(tmp_path: Path) -> None:
    """However many ask for the health at once or in a row, the store sees one probe (one write)
    per PROBE_FRESH_SECONDS: an anonymous flood of GET /-/nopard/health costs the store nothing more."""
    clock = Clock()
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    writes: list[str] = []
    write = storage.write

    async def counted(key: str, data: bytes) -> None:
        writes.append(key)
        await write(key, data)

    storage.write = counted  # type: ignore[method-assign]
    probe = StoreProbe(storage, clock)
    assert await gatherResults([Deferred.fromCoroutine(probe.check()) for _ in range(20)]) == [None] * 20
    for _ in range(20):
        assert await probe.check() is None
    assert len(writes) == 1
    clock.advance(PROBE_FRESH_SECONDS)
    assert await probe.check() is None
    assert len(writes) == 2
