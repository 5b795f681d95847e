"""The sync worker: keeps mirrored packages fresh and complete before anyone asks.

Jobs (each idempotent; a killed run leaves nothing half-written, and the next
run simply continues):

- ``refresh``: revalidates every mirrored document that is due by the schedule
  by use (nopard.domain.usage.refresh_due): stale, or stale before the next run,
  for packages clients used in the last day; less often for ones used less.
  With NOPARD_CHANGES_URL, those of the forwarder only when its changes feed
  names them (nopard/jobs/changes.py).
- ``backfill``: fetches the tarballs NOPARD_BACKFILL selects that are missing.
- ``prefetch``: fetches the documents and tarballs a lockfile names (on demand).

Manners: at most NOPARD_SYNC_CONCURRENCY packages at once, at most
NOPARD_SYNC_RATE upstream requests a minute for the scheduled jobs (prefetch,
asked for by an operator, is limited by concurrency only), a 429's Retry-After is honoured,
and while the upstream counts as down the job waits instead of failing.
A lock in the store keeps two instances from running the same job at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nopard.domain import names, packument, usage
from nopard.domain.errors import NopardError, NotFound, UpstreamUnavailable
from nopard.domain.firewall import BLOCKED, QUARANTINED
from nopard.domain.times import iso_time
from nopard.firewall.verdicts import Firewall
from nopard.jobs.changes import ChangesFollower
from nopard.local.packages import Registry
from nopard.mirror.documents import MirroredDocuments
from nopard.mirror.tarballs import MirroredTarballs
from nopard.mirror.upstreams import Upstreams
from nopard.mirror.usage import UsageLog
from nopard.ops.metrics import Metrics
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys
from nopard.upstream.client import Upstream

MAX_FAILURES_KEPT = 50
LOCK_SECONDS = 120.0  # a lock not renewed for this long belongs to a dead instance


def backfill_versions(document: dict[str, Any], policy: str) -> list[str]:
    """The versions whose tarballs NOPARD_BACKFILL wants kept, newest first."""
    versions = sorted(document.get("versions", {}), key=packument.version_key, reverse=True)
    if policy == "none":
        return []
    if policy == "all":
        return versions
    if policy.startswith("recent:"):
        return versions[: int(policy.split(":", 1)[1])]
    tagged = set(document.get("dist-tags", {}).values())
    return [v for v in versions if v in tagged]


def tarball_file(name: str, version: str, manifest: Any) -> str | None:
    """The file a version's tarball is stored under here (None: the manifest names none nopard can serve)."""
    return packument.version_tarball_file(name, version, manifest.get("dist") if isinstance(manifest, dict) else None)


@dataclass
class JobReport:
    """What one run of a job did."""

    job: str
    started: str | None = None
    ended: str | None = None
    running: bool = False
    checked: int = 0
    changed: int = 0
    tarballs: int = 0
    bytes: int = 0
    failure_count: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped: str | None = None
    paused_since: float | None = None

    def fail(self, package: str, reason: str) -> None:
        """Count one failure; the first MAX_FAILURES_KEPT are kept with their reasons."""
        self.failure_count += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append({"package": package, "reason": reason})

    def summary(self) -> str:
        """One line for the log and the admin command."""
        return (
            f"{self.job}: checked {self.checked}, changed {self.changed}, "
            f"tarballs {self.tarballs} ({self.bytes} bytes), failures {self.failure_count}"
        )


class UpstreamGone(Exception):
    """The upstream stayed down for longer than a run may wait."""


class RateLimit:
    """At most ``per_minute`` acquisitions a minute, spread evenly (a token bucket)."""

    def __init__(self, clock: IReactorTime, per_minute: Callable[[], int]) -> None:
        self._clock = clock
        self._per_minute = per_minute
        self._next = 0.0

    async def acquire(self) -> None:
        """Wait for the next free slot."""
        now = self._clock.seconds()
        slot = max(now, self._next)
        self._next = slot + 60.0 / self._per_minute()
        if slot > now:
            await task.deferLater(self._clock, slot - now, lambda: None)


async def for_each(items: Iterable[Any], workers: int, work: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``work`` over ``items``, ``workers`` at a time.

    An error of ``work`` stops the run: the other workers finish the item in
    hand and take no more, and then that error (the first) is raised as itself.
    """
    iterator = iter(items)
    errors: list[Failure] = []

    async def worker() -> None:
        for item in iterator:
            if errors:
                return
            try:
                await work(item)
            except BaseException:
                errors.append(Failure())
                return

    await DeferredList([Deferred.fromCoroutine(worker()) for _ in range(workers)])
    if errors:
        errors[0].raiseException()


class LockLost(Exception):
    """Another instance took the job's lock over (this one stalled past LOCK_SECONDS): stop the run."""


class StoreLock:
    """A lock object in the store, so one instance at a time runs a job.

    Every change after taking it is a compare-and-swap on the holder: a renew
    or release by an instance that stalled past LOCK_SECONDS, after another
    took the lock over, changes nothing, and the renew tells it it lost.
    """

    def __init__(self, storage: Storage, clock: IReactorTime, owner: str) -> None:
        self._storage = storage
        self._clock = clock
        self.owner = owner
        self._tokens: dict[str, str] = {}  # job -> the token of this holder's record

    async def acquire(self, job: str) -> bool:
        """Take the lock of ``job``, or take over one whose holder stopped renewing it."""
        key = keys.sync_lock_key(job)
        token = uuid.uuid4().hex
        record = self._record(token)
        if not await self._storage.create(key, record):
            stored = await self._storage.read_versioned(key)
            held = _lock_record(stored)
            if held and held.get("owner") != self.owner and held.get("expires", 0) > self._clock.seconds():
                return False
            # Compare-and-swap: of two instances taking over an expired lock, one wins.
            if not await self._storage.replace(key, record, stored[1] if stored else None):
                return False
        self._tokens[job] = token
        return True

    async def renew(self, job: str) -> bool:
        """Push the lock's expiry forward while a long run goes on; False: it is not ours any more."""
        key = keys.sync_lock_key(job)
        token = self._tokens.get(job)
        stored = await self._storage.read_versioned(key)
        if token is None or stored is None or _lock_record(stored).get("token") != token:
            return False
        return await self._storage.replace(key, self._record(token), stored[1])

    async def release(self, job: str) -> None:
        """Let others run the job; a lock another instance holds by now is left alone."""
        key = keys.sync_lock_key(job)
        token = self._tokens.pop(job, None)
        stored = await self._storage.read_versioned(key)
        if token is not None and stored is not None and _lock_record(stored).get("token") == token:
            await self._storage.delete_versioned(key, stored[1])

    def _record(self, token: str) -> bytes:
        return orjson.dumps({"owner": self.owner, "token": token, "expires": self._clock.seconds() + LOCK_SECONDS})


def _lock_record(stored: tuple[bytes, str] | None) -> dict[str, Any]:
    """The holder record of a stored lock ({} when there is none or it is unreadable)."""
    if stored is None:
        return {}
    try:
        record = orjson.loads(stored[0])
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


class SyncJobs:
    """The jobs, their last reports, and the manners they keep."""

    def __init__(
        self, settings: LiveSettings, upstreams: Upstreams, registry: Registry, documents: MirroredDocuments,
        tarballs: MirroredTarballs, storage: Storage, clock: IReactorTime,
        log: Logger, owner: str | None = None, metrics: Metrics | None = None, firewall: Firewall | None = None,
        use: UsageLog | None = None, follower: ChangesFollower | None = None,
    ) -> None:
        self._settings = settings
        self.follower = follower
        self._use = use  # None: no record of use, every document refreshed as if used today
        self._recorded: usage.Usage | None = None  # the record of use the refresh run in progress goes by
        # Whether a bounded mirror has room for this many more bytes (nopard.jobs.eviction.Eviction.has_room):
        # backfill fetches only into the room left, or eviction would remove what it fetched, never used.
        self.room: Callable[[int], bool] = lambda fetched: True
        self._firewall = firewall
        self._metrics = metrics  # gets each finished (or skipped) JobReport
        self._upstreams = upstreams
        self._registry = registry
        self._documents = documents
        self._tarballs = tarballs
        self._clock = clock
        self._log = log
        self._lock = StoreLock(storage, clock, owner or str(uuid.uuid4()))
        self.rate = RateLimit(clock, lambda: settings.current.sync_rate)  # upstream requests, the feed's too
        if follower is not None:
            follower.budget = lambda: self.rate.acquire()
        self.reports: dict[str, JobReport] = {}
        self._renewed_at: dict[str, float] = {}
        self._lost: set[str] = set()  # jobs whose lock another instance took over during this run

    async def run(self, job: str) -> JobReport:
        """Run ``refresh`` or ``backfill`` once, unless another instance is running it."""
        report = JobReport(job, started=iso_time(self._clock.seconds()), running=True)
        if not await self._lock.acquire(job):
            report.running, report.skipped = False, "another nopard instance is running it"
            self._log.info("sync {job} skipped: {reason}", job=job, reason=report.skipped, event="sync-skipped")
            self._count(report)
            return report
        self.reports[job] = report
        self._renewed_at[job] = self._clock.seconds()
        self._log.info("sync {job} started", job=job, event="sync-started")
        try:
            names_ = await self._documents.mirrored_names()
            if job == "refresh" and self._use is not None:
                self._recorded = await self._use.recorded()
            if job == "refresh" and await self._followed(report):
                names_ = [name for name in names_ if self._upstreams.for_name(name) is not self._upstreams.default]
            work = self._refresh_one if job == "refresh" else self._backfill_one
            await for_each(names_, self._settings.current.sync_concurrency,
                           lambda name: self._guarded(name, report, work, name, report))
        except UpstreamGone as gone:
            report.fail("*", f"{gone}; run abandoned, the next one continues")
        except LockLost:
            self._log.warn("sync {job} stopped: another instance took its lock over", job=job, event="sync-lock-lost")
            report.fail("*", "another nopard instance took the job's lock over (this one stalled); run stopped")
        finally:
            report.running, report.ended = False, iso_time(self._clock.seconds())
            self._lost.discard(job)
            self._recorded = None if job == "refresh" else self._recorded
            await self._lock.release(job)
            self._log.info("sync {summary}", summary=report.summary(), event="sync-finished", **asdict(report))
            self._count(report)
        return report

    async def _guarded(self, what: str, report: JobReport, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """One package's work: whatever goes wrong with it is logged, counted and reported, and the run goes on.

        Only what ends the whole run (the upstream gone for good, the lock
        lost) passes through.
        """
        try:
            await work(*args)
        except (UpstreamGone, LockLost):
            raise
        except NopardError as error:
            report.fail(what, error.message)
        except Exception as error:  # one bad package (an odd upstream document) must not end the run
            self._log.failure("sync {what} failed", what=what, event="sync-error")
            report.fail(what, f"{type(error).__name__}: {error}")

    def _count(self, report: JobReport) -> None:
        if self._metrics is not None:
            self._metrics.sync_finished(report)

    async def prefetch(
        self, packages: list[tuple[str, str]], may_read: Callable[[str], bool] = lambda name: True
    ) -> JobReport:
        """Fetch the document and tarball of each (name, version), e.g. from a lockfile.

        Names the asker may not read are reported as missing, like names that do not exist;
        names published here (or private) are left alone: nothing to fetch, never sent upstream.
        """
        report = JobReport("prefetch", started=iso_time(self._clock.seconds()), running=True)
        self.reports["prefetch"] = report
        try:
            await for_each(packages, self._settings.current.sync_concurrency,
                           lambda item: self._guarded(f"{item[0]}@{item[1]}", report, self._prefetch_one,
                                                      item[0], item[1], report, may_read))
            if self._use is not None:  # eviction keeps what a lockfile pinned
                await self._use.pin((n, v) for n, v in packages if not names.name_problem(n) and names.is_version(v))
        finally:
            report.running, report.ended = False, iso_time(self._clock.seconds())
            self._log.info("sync {summary}", summary=report.summary(), event="prefetch-finished")
            self._count(report)
        return report

    async def _refresh_one(self, name: str, report: JobReport) -> None:
        if not await self._follows_upstream(name):
            return
        report.checked += 1
        meta = await self._documents.mirrored_meta(name)
        current = self._settings.current
        # Due by the schedule by use (stale now or before the next run, for a package used today).
        used = usage.used_time(self._recorded, name) if self._recorded is not None else self._clock.seconds()
        if meta is not None and not usage.refresh_due(meta.fetched_at, used, self._clock.seconds(), current.meta_ttl,
                                                      current.sync_interval):
            return
        await self._politely(name, name, report, self._refresh_document, name, report)

    async def _followed(self, report: JobReport) -> bool:
        """Refresh what the changes feed names; True: the forwarder's packages need no sweep this run."""
        return self.follower is not None and await self.follower.follow(lambda changed: for_each(
            changed, self._settings.current.sync_concurrency,
            lambda name: self._guarded(name, report, self._refresh_changed, name, report)))

    async def _refresh_changed(self, name: str, report: JobReport) -> None:
        """Revalidate a package the changes feed named, however fresh its copy."""
        if await self._follows_upstream(name):
            report.checked += 1
            await self._politely(name, name, report, self._refresh_document, name, report)

    async def _refresh_document(self, name: str, report: JobReport) -> None:
        if await self._documents.refresh(name, self._upstream_of(name)):
            report.changed += 1

    async def _follows_upstream(self, name: str) -> bool:
        """Whether ``name`` is served from the upstream (not private, not shadowed by a local package)."""
        if self._upstreams.for_name(name) is None:
            return False
        if name in self._settings.current.merge_upstream:
            return True
        return await self._registry.document(name) is None

    def _upstream_of(self, name: str) -> Upstream:
        upstream = self._upstreams.for_name(name)
        if upstream is None:
            raise NotFound(f"{name} is private: never sent upstream")
        return upstream

    async def _backfill_one(self, name: str, report: JobReport) -> None:
        if not await self._follows_upstream(name):
            return
        report.checked += 1
        document = await self._documents.mirrored_document(name)
        if document is None:
            return
        for version in await self._wanted(name, document):
            if not self.room(report.bytes):
                return
            await self._fetch_version(name, document, version, report)

    async def _wanted(self, name: str, document: dict[str, Any]) -> list[str]:
        """NOPARD_BACKFILL's versions; under quarantine also the versions still in it (so they install
        at once when released) and what the served dist-tags moved back to; never a blocked one."""
        policy = self._settings.current.backfill
        wanted = backfill_versions(document, policy)
        if self._firewall is None or policy == "none":
            return wanted
        verdict = await self._firewall.judge(name, document, ())
        young = [v for v, hidden in verdict.hidden.items() if hidden.kind == QUARANTINED]
        served = [v for v in verdict.document.get("dist-tags", {}).values() if isinstance(v, str)]
        blocked = {v for v, hidden in verdict.hidden.items() if hidden.kind == BLOCKED}
        ordered = dict.fromkeys([*wanted, *young, *served])
        return [v for v in ordered if v in document.get("versions", {}) and v not in blocked]

    async def _prefetch_one(
        self, name: str, version: str, report: JobReport, may_read: Callable[[str], bool]
    ) -> None:
        report.checked += 1
        try:
            names.validate_name(name)
        except NopardError as error:
            report.fail(f"{name}@{version}", error.message)
            return
        if not may_read(name):
            report.fail(name, f"package not found: {name}")
            return
        if not await self._follows_upstream(name):
            return
        document = await self._documents.mirrored_document(name)
        if document is None or version not in document.get("versions", {}):
            await self._politely(name, name, report, self._refresh_document, name, report)
            document = await self._documents.mirrored_document(name)
        if document is None:
            return
        if version not in document.get("versions", {}):
            report.fail(f"{name}@{version}", "no such version upstream")
            return
        await self._fetch_version(name, document, version, report)

    async def _fetch_version(self, name: str, document: dict[str, Any], version: str, report: JobReport) -> None:
        filename = tarball_file(name, version, document["versions"][version])
        if filename is None:
            report.fail(f"{name}@{version}", "the upstream document names no tarball nopard can keep for it")
            return
        if await self._tarballs.stored(name, filename):
            return
        await self._politely(name, f"{name}@{version}", report, self._fetch_tarball, name, filename, report)

    async def _fetch_tarball(self, name: str, filename: str, report: JobReport) -> None:
        fetched = await self._tarballs.ensure(name, filename, self._upstream_of(name))
        if fetched:
            report.tarballs += 1
            report.bytes += fetched

    async def _politely(
        self, name: str, what: str, report: JobReport, action: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Do one upstream action for package ``name`` within the job's manners.

        While the upstream counts as down the action waits and is tried again
        (as the breaker's probe), so an outage pauses the job instead of
        failing every package. A failure is recorded in the report (as
        ``what``), never raised.
        """
        upstream = self._upstreams.for_name(name)
        if upstream is None:
            return
        while True:
            await self._wait_until_usable(upstream, report)
            if report.job != "prefetch":  # an operator asked for it now: only concurrency limits it
                await self.rate.acquire()
            await self._renew_lock(report.job)
            try:
                await action(*args)
                return
            except UpstreamUnavailable as error:
                if not (upstream.breaker.is_open or upstream.paused_until > self._clock.seconds()):
                    report.fail(what, error.message)
                    return
            except NopardError as error:
                report.fail(what, error.message)
                return
            except Exception as error:  # one bad package must not end the run
                self._log.failure("sync {what} failed", what=what, event="sync-error")
                report.fail(what, f"{type(error).__name__}: {error}")
                return

    async def _wait_until_usable(self, upstream: Upstream, report: JobReport) -> None:
        """Pause while the upstream counts as down or asked us to slow down.

        A pause longer than a sync interval (at least ten minutes) abandons the
        run: the next run continues where this one stopped.
        """
        while True:
            now = self._clock.seconds()
            if upstream.paused_until <= now and not upstream.breaker.down:
                return
            if report.paused_since is None:
                report.paused_since = now
            patience = max(self._settings.current.sync_interval, 600.0)
            if now - report.paused_since > patience:
                raise UpstreamGone(f"the upstream has been unreachable for {patience:.0f} s")
            wait = upstream.paused_until - now if upstream.paused_until > now else 0.5
            await task.deferLater(self._clock, wait, lambda: None)
            report.paused_since = None if not upstream.breaker.is_open else report.paused_since

    async def _renew_lock(self, job: str) -> None:
        """Renew the job's lock now and then; LockLost once another instance holds it."""
        if job not in ("refresh", "backfill"):
            return
        if job in self._lost:
            raise LockLost(job)
        now = self._clock.seconds()
        if now - self._renewed_at.get(job, now) > LOCK_SECONDS / 4:
            self._renewed_at[job] = now
            if not await self._lock.renew(job):
                self._lost.add(job)  # the other workers of this run stop at their next item too
                raise LockLost(job)
