"""What operators measure: Prometheus metrics (GET /-/metrics), the store
health probe (GET /-/nopard/health), and the time a request spent waiting on
upstreams (the access line's upstream_ms).

Everything lives in one CollectorRegistry built by the service, never in
prometheus_client's global one. Counters are updated where things happen (the
site, the upstream client, the sync jobs); breaker states, memory use and
store size are read at scrape time.

Under NOPARD_WORKERS the supervisor gives every worker one PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode, set before any worker imports it): counters
and histograms are written there by each worker, and whichever worker answers a
scrape adds up every worker's (``shared_dir``), dead workers' included, so totals
never go back. The gauges read at scrape time are the answering worker's own, and
``nopard_worker`` says which worker that was.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime

from nopard import __version__
from nopard.domain import names
from nopard.domain.urls import without_credentials
from nopard.ops.singleflight import SingleFlight
from nopard.storage import Storage, keys

RunInThread = Callable[..., Awaitable[Any]]

UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES = ("closed", "open", "probing")
ABBREVIATED_TYPE = "application/vnd.npm.install-v1+json"


# The time one request waits on upstreams ---------------------------------


class UpstreamWait:
    """The time one HTTP request spent waiting on upstream calls (their sum)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def add(self, seconds: float) -> None:
        """Count one upstream call that took ``seconds``."""
        self.seconds += seconds
        self.calls += 1

    @property
    def ms(self) -> float | None:
        """Milliseconds waited, rounded; None when the request made no upstream call."""
        return round(self.seconds * 1000, 1) if self.calls else None


# Set by the site around a request's processing; the coroutines a route starts
# copy the context, so upstream calls made on its behalf find its UpstreamWait.
request_upstream_wait: ContextVar[UpstreamWait | None] = ContextVar("nopard_request_upstream_wait", default=None)


def add_upstream_wait(seconds: float) -> None:
    """Charge an upstream call's time to the request it was made for, if any."""
    wait = request_upstream_wait.get()
    if wait is not None:
        wait.add(seconds)


# Routes ----------------------------------------------------------------------

_FIXED_ROUTES = {
    "/-/ping": "ping",
    "/-/whoami": "whoami",
    "/-/metrics": "metrics",
    "/-/nopard/health": "health",
    "/-/nopard/status": "status",
    "/-/nopard/sync": "sync",
    "/-/nopard/prefetch": "prefetch",
}
_PREFIX_ROUTES = (
    ("/-/user/token/", "logout"),
    ("/-/user/", "login"),
    ("/-/npm/v1/security/", "audit"),
    ("/-/", "other"),
)


# The methods counted under their own name; any other is "other" (a client may send any token as
# its method: each must not add a label set to the metrics).
HTTP_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})


def route_of(method: str, path: str, accept: str | None = None) -> str:
    """The route template a request matched, as a metric label (never the raw path).

    document, abbreviated, version, tarball, publish, login, logout, audit,
    whoami, ping, status, sync, prefetch, health, metrics; ``other`` for the rest.
    """
    path = path.split("?", 1)[0]
    if path in _FIXED_ROUTES:
        return _FIXED_ROUTES[path]
    for prefix, route in _PREFIX_ROUTES:
        if path.startswith(prefix):
            return route
    try:
        target = names.parse_package_path(path)
    except Exception:
        return "other"
    if target.kind != "document":
        return target.kind
    if method == "PUT":
        return "publish"
    if method in ("GET", "HEAD") and ABBREVIATED_TYPE in (accept or ""):
        return "abbreviated"
    return "document"


def upstream_label(url: str) -> str:
    """An upstream's URL as a label: without any user:password@."""
    return without_credentials(url, marked=False)


# Metrics -------------------------------------------------------------------------


class Metrics:
    """nopard's metrics in their own registry; the web site, upstreams and sync jobs update them."""

    def __init__(self, clock: IReactorTime, shared_dir: str | None = None, worker: str | None = None) -> None:
        self._clock = clock
        self.registry = CollectorRegistry()
        registry = self.registry
        # What a scrape sees: this registry, or every worker's counters (see the module's doc).
        self.exposed = registry
        if shared_dir is not None:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=shared_dir)
        Info("nopard", "nopard's version.", registry=self.exposed).info({"version": __version__})
        self.requests = Counter(
            "nopard_http_requests", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=registry,
        )
        self.request_seconds = Histogram(
            "nopard_http_request_duration_seconds", "Time to answer HTTP requests, by route.",
            ["route"], registry=registry,
        )
        self.cache = Counter(
            "nopard_cache_responses", "Documents and tarballs served, by how: "
            "LOCAL, HIT, MISS, STALE, REVALIDATED.", ["kind", "status"], registry=registry,
        )
        self.upstream_seconds = Histogram(
            "nopard_upstream_request_duration_seconds",
            "Time upstream requests took (failed ones too), by upstream and kind (document, tarball, forward).",
            ["upstream", "kind"], buckets=UPSTREAM_BUCKETS, registry=registry,
        )
        self.upstream_errors = Counter(
            "nopard_upstream_errors", "Failed upstream requests, by upstream and reason "
            "(timeout, unreachable, http_5xx, rate_limited, broken).", ["upstream", "reason"], registry=registry,
        )
        self.sync_runs = Counter(
            "nopard_sync_runs", "Sync job runs, by job and result (finished, skipped).",
            ["job", "result"], registry=registry,
        )
        self.sync_checked = Counter(
            "nopard_sync_packages_checked", "Packages the sync jobs looked at.", ["job"], registry=registry
        )
        self.sync_changed = Counter(
            "nopard_sync_packages_changed", "Documents the sync jobs found changed upstream.", ["job"],
            registry=registry,
        )
        self.sync_tarballs = Counter(
            "nopard_sync_tarballs_fetched", "Tarballs the sync jobs fetched.", ["job"], registry=registry
        )
        self.sync_bytes = Counter(
            "nopard_sync_fetched_bytes", "Tarball bytes the sync jobs fetched.", ["job"], registry=registry
        )
        self.sync_failures = Counter(
            "nopard_sync_failures", "Packages a sync job failed on.", ["job"], registry=registry
        )
        self.sync_last_end = Gauge(
            "nopard_sync_last_run_end_timestamp_seconds", "When each job's last run ended (Unix time).",
            ["job"], registry=registry, multiprocess_mode="max",
        )
        self.mirror_evictions = Counter(
            "nopard_mirror_evictions", "Upstream tarballs evicted to keep the mirror under NOPARD_MIRROR_MAX_SIZE.",
            registry=registry,
        )
        self.live = LiveCollector(worker)
        self.exposed.register(self.live)
        self.history: Any = None  # nopard.ops.history.History: the status page's last day
        # Each label set's children, looked up once: ``labels()`` (validation, a lock) cost more
        # than counting. Bounded: routes, statuses and methods (HTTP_METHODS, else other) are small sets.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._cache_children: dict[tuple[str, str], Any] = {}

    def request_finished(
        self, route: str, method: str, status: int, seconds: float, cache_status: str | None
    ) -> None:
        """Count one answered request, and how its document or tarball was served."""
        labels = (route, method if method in HTTP_METHODS else "other", status)
        counted = self._request_children.get(labels)
        if counted is None:
            counted = self._request_children[labels] = (
                self.requests.labels(labels[0], labels[1], str(status)), self.request_seconds.labels(route))
        counted[0].inc()
        counted[1].observe(seconds)
        if cache_status:
            kind = "tarball" if route == "tarball" else "document"
            served = self._cache_children.get((kind, cache_status))
            if served is None:
                served = self._cache_children[(kind, cache_status)] = self.cache.labels(kind, cache_status)
            served.inc()
            if self.history is not None:
                self.history.served(cache_status)

    def cache_counts(self) -> dict[str, int]:
        """Documents and tarballs served since start, by how (LOCAL, HIT, MISS, STALE, REVALIDATED)."""
        counts: dict[str, int] = {}
        for metric in self.cache.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0) + int(sample.value)
        return counts

    def upstream_call(self, upstream: str, kind: str, seconds: float, error: str | None) -> None:
        """Count one upstream request (``error``: why it failed, None when it did not)."""
        label = upstream_label(upstream)
        self.upstream_seconds.labels(label, kind).observe(seconds)
        if error:
            self.upstream_errors.labels(label, error).inc()

    def sync_finished(self, report: Any) -> None:
        """Add a finished run's JobReport to the sync counters."""
        job = report.job
        if self.history is not None:
            self.history.synced(report)
        if report.skipped:
            self.sync_runs.labels(job, "skipped").inc()
            return
        self.sync_runs.labels(job, "finished").inc()
        self.sync_checked.labels(job).inc(report.checked)
        self.sync_changed.labels(job).inc(report.changed)
        self.sync_tarballs.labels(job).inc(report.tarballs)
        self.sync_bytes.labels(job).inc(report.bytes)
        self.sync_failures.labels(job).inc(report.failure_count)
        self.sync_last_end.labels(job).set(self._clock.seconds())

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (Prometheus text 0.0.4 by default)."""
        if self.live.store is not None:
            await self.live.store.refresh()
        encode, content_type = choose_encoder(accept or "")
        return encode(self.exposed), content_type


class LiveCollector:
    """Values read at scrape time: breaker states, prepared-document memory, store size."""

    def __init__(self, worker: str | None = None) -> None:
        self.worker = worker
        self.upstreams: Callable[[], Iterable[Any]] = list
        self.cache: Any = None
        self.store: StoreSize | None = None
        self.coordination: Any = None
        self.firewall: Any = None  # nopard.firewall.verdicts.Firewall
        self.mirror: Any = None  # nopard.jobs.eviction.Eviction: the mirror's size and limit
        self.writes: Any = None  # nopard.mirror.writeback.WriteBehind: fetched copies not written yet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges, from the components' current state."""
        if self.worker is not None:
            answering = GaugeMetricFamily(
                "nopard_worker", "1 for the worker of NOPARD_WORKERS that answered this scrape: counters and "
                "histograms count every worker's requests, the other gauges are this worker's.", labels=["worker"])
            answering.add_metric([self.worker], 1.0)
            yield answering
        state = GaugeMetricFamily(
            "nopard_upstream_breaker_state",
            "1 for the state each upstream's breaker is in: closed (healthy), open (down: serving "
            "nopard's copies), probing.", labels=["upstream", "state"],
        )
        failures = GaugeMetricFamily(
            "nopard_upstream_consecutive_failures", "Upstream failures since its last success.",
            labels=["upstream"],
        )
        for upstream in self.upstreams():
            label = upstream_label(upstream.base_url)
            for name in BREAKER_STATES:
                state.add_metric([label, name], 1.0 if upstream.breaker.state == name else 0.0)
            failures.add_metric([label], upstream.breaker.failures)
        yield state
        yield failures
        if self.cache is not None:
            stats = self.cache.stats()
            yield GaugeMetricFamily("nopard_memory_cache_bytes", "Memory held by prepared documents.",
                                    value=stats["bytes"])
            yield GaugeMetricFamily("nopard_memory_cache_entries", "Prepared documents held in memory.",
                                    value=stats["entries"])
        coordination = self.coordination
        if coordination is not None and coordination.state != "off":
            yield GaugeMetricFamily("nopard_redis_up", "1 while Redis answers; 0: degraded, serving from "
                                    "storage alone.", value=1.0 if coordination.state == "up" else 0.0)
            yield GaugeMetricFamily("nopard_redis_outages", "Times Redis became unreachable since start.",
                                    value=coordination.link.failures)
        if self.firewall is not None:
            yield from firewall_metrics(self.firewall.status())
        if self.store is not None and self.store.bytes is not None:
            yield GaugeMetricFamily("nopard_store_bytes", "Bytes in the store: NOPARD_REGISTRY_PATH, or the "
                                    "S3 bucket under NOPARD_S3_PREFIX (measured at most every minute).",
                                    value=self.store.bytes)
            yield GaugeMetricFamily("nopard_store_files", "Files (or S3 objects) in the store.",
                                    value=self.store.files)
        figures = self.mirror.figures() if self.mirror is not None else {}
        if figures.get("size") is not None:
            yield GaugeMetricFamily("nopard_mirror_bytes", "Bytes mirrored from the upstream (documents and "
                                    "tarballs), as the eviction job last measured them.", value=figures["size"])
        if figures.get("limit") is not None:
            yield GaugeMetricFamily("nopard_mirror_limit_bytes", "NOPARD_MIRROR_MAX_SIZE.", value=figures["limit"])
        if self.writes is not None:
            yield GaugeMetricFamily("nopard_mirror_writes_waiting", "Upstream copies fetched for clients and not "
                                    "written to the store yet (NOPARD_MIRROR_WRITE_DELAY).", value=self.writes.waiting)


def firewall_metrics(status: dict[str, Any]) -> Iterator[Any]:
    """The firewall's gauges and counters, from ``Firewall.status()``."""
    withheld = GaugeMetricFamily("nopard_withheld_versions", "Versions withheld from the documents this "
                                 "instance prepared, by why: quarantined or blocked.", labels=["kind"])
    refused = CounterMetricFamily("nopard_withheld_refused", "Tarball and version requests refused for a "
                                  "withheld version, by why.", labels=["kind"])
    for kind, count in sorted(status["withheld"].items()):
        withheld.add_metric([kind], count)
    for kind, count in sorted(status["refused"].items()):
        refused.add_metric([kind], count)
    changes = CounterMetricFamily("nopard_block_changes", "Blocks added or removed through this instance.",
                                  labels=["change"])
    for change, count in sorted(status["block_changes"].items()):
        changes.add_metric([change], count)
    yield withheld
    yield refused
    yield changes
    yield CounterMetricFamily("nopard_quarantine_released", "Versions this instance saw leave quarantine.",
                              value=status["released"])


class StoreSize:
    """Bytes and objects in the store, measured in the background at most every ``max_age`` s.

    ``measure`` returns (bytes, objects): a walk of NOPARD_REGISTRY_PATH in a
    thread, or a listing of the S3 bucket under its prefix.
    """

    def __init__(self, measure: Callable[[], Awaitable[tuple[int, int]]], clock: IReactorTime,
                 max_age: float = 60.0) -> None:
        self._measure = measure
        self._clock = clock
        self._max_age = max_age
        self.bytes: int | None = None
        self.files: int | None = None
        self._scanned_at: float | None = None
        self._walks: SingleFlight[None] = SingleFlight()

    async def refresh(self) -> None:
        """Start a walk if the figures are older than ``max_age``; wait for it only when there are none."""
        now = self._clock.seconds()
        walking = self._walks.running("walk")
        if not walking and (self._scanned_at is None or now - self._scanned_at >= self._max_age):
            self._scanned_at = now
            Deferred.fromCoroutine(self._walks.run("walk", self._walk))
        if self.bytes is None and self._walks.running("walk"):
            await self._walks.run("walk", self._walk)  # joins the walk under way

    async def _walk(self) -> None:
        try:
            self.bytes, self.files = await self._measure()
        except Exception:  # an unreadable store shows in /-/nopard/health; keep the last figures
            pass


# Health ----------------------------------------------------------------------------


# Seconds a probe's answer is given again: GET /-/nopard/health is anonymous, and without this
# every request (a flood, or a dozen load balancers) cost the store a write and a delete. Load
# balancers poll every few seconds, so the answer they get is never older than their interval.
PROBE_FRESH_SECONDS = 2.0


class StoreProbe:
    """Whether the store works: a small write, read back and delete, under a deadline.

    Callers arriving while a probe runs share it, and its answer is kept for
    PROBE_FRESH_SECONDS: however many ask, the store sees one probe at a time, at most
    one every PROBE_FRESH_SECONDS.
    """

    def __init__(self, storage: Storage, clock: IReactorTime, timeout: float = 5.0) -> None:
        self._storage = storage
        self._clock = clock
        self._timeout = timeout
        self._flight: SingleFlight[str | None] = SingleFlight()
        self._last: tuple[float, str | None] | None = None

    async def check(self) -> str | None:
        """None when the store works, else why it does not (at most PROBE_FRESH_SECONDS old)."""
        if self._last is not None and self._clock.seconds() - self._last[0] < PROBE_FRESH_SECONDS:
            return self._last[1]
        return await self._flight.run("probe", self._check_now)

    async def _check_now(self) -> str | None:
        result = await self._probe_within_deadline()
        self._last = (self._clock.seconds(), result)
        return result

    async def _probe_within_deadline(self) -> str | None:
        try:
            await Deferred.fromCoroutine(self._probe()).addTimeout(self._timeout, self._clock)
        except Exception as error:
            if isinstance(error, DeferredTimeout):
                return f"the store did not answer within {self._timeout:g} s"
            return f"{type(error).__name__}: {error}"
        return None

    async def _probe(self) -> None:
        key = keys.health_probe_key(uuid.uuid4().hex)
        data = b"nopard health probe\n"
        await self._storage.write(key, data)
        try:
            if await self._storage.read(key) != data:
                raise OSError("the probe read back other bytes than it wrote")
        finally:
            await self._storage.delete(key)
