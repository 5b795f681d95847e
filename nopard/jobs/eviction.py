"""The eviction job: keeps the mirrored area under NOPARD_MIRROR_MAX_SIZE.

Each run measures the mirror (one listing of ``packages/``: the documents, metadata,
attestations and tarballs fetched from the upstream; local packages are not part of it)
and, when it is over the limit, removes the least recently used upstream tarballs
(nopard.domain.usage.choose_evictions over the record nopard.mirror.usage keeps) until
it is under, at most EVICT_BATCH of them a run (the next run continues). Documents stay,
so an evicted tarball is simply fetched again when a client next asks for it. Tarballs of
versions a prefetched lockfile pinned stay too, unless NOPARD_MIRROR_EVICT_PINNED says yes.
The job's lock in the store keeps two instances from evicting at once.

``figures()`` is what the metrics and the status show (size, limit, evictions), ``size_and_limit()``
what the status page's 24-hour chart records (nopard.ops.history).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.domain import usage
from nopard.domain.times import iso_time
from nopard.jobs.sync import JobReport, StoreLock, tarball_file
from nopard.mirror.documents import MirroredDocuments
from nopard.mirror.usage import UsageLog
from nopard.ops.metrics import Metrics
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys

JOB = "evict"
EVICT_BATCH = 1000  # tarballs one run removes at most: a run's work stays bounded
RENEW_EVERY = 100  # deletes between renewals of the job's lock
MIRRORED_KINDS = frozenset({keys.MIRRORED_DOCUMENT, keys.MIRRORED_META, keys.MIRRORED_TARBALL,
                            keys.MIRRORED_ATTESTATIONS})


class Eviction:
    """Measures the mirror and evicts least recently used upstream tarballs past the limit."""

    def __init__(self, settings: LiveSettings, storage: Storage, documents: MirroredDocuments, use: UsageLog,
                 lock: StoreLock, clock: IReactorTime, log: Logger, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._storage = storage
        self._documents = documents
        self._use = use
        self._lock = lock
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self.size: int | None = None  # the mirror's bytes at the last measure (None: not measured yet)
        self.measured_at: float | None = None
        self.evictions = 0  # tarballs this instance evicted since it started
        self.report: JobReport | None = None

    def figures(self) -> dict[str, Any]:
        """The mirror's size (bytes, None before the first run), its limit (None: off), evictions since start."""
        return {"size": self.size, "limit": self._settings.current.mirror_max_size, "evictions": self.evictions,
                "measured_at": iso_time(self.measured_at) if self.measured_at is not None else None}

    def size_and_limit(self) -> tuple[int | None, int | None]:
        """(the mirror's bytes at the last measure, NOPARD_MIRROR_MAX_SIZE): the status page's chart."""
        return self.size, self._settings.current.mirror_max_size

    def has_room(self, fetched: int) -> bool:
        """Whether the mirror, as last measured, stays under its limit with ``fetched`` more bytes (for backfill)."""
        limit = self._settings.current.mirror_max_size
        return limit is None or self.size is None or self.size + fetched < limit

    async def run(self) -> JobReport:
        """Measure the mirror; evict while it is over NOPARD_MIRROR_MAX_SIZE (within EVICT_BATCH)."""
        report = self.report = JobReport(JOB, started=iso_time(self._clock.seconds()), running=True)
        try:
            tarballs = await self._measure()
            limit = self._settings.current.mirror_max_size
            if limit is not None and self.size is not None and self.size > limit:
                if not await self._lock.acquire(JOB):
                    report.skipped = "another nopard instance is running it"
                else:
                    try:
                        await self._evict(tarballs, limit, report)
                    finally:
                        await self._lock.release(JOB)
        finally:
            report.running, report.ended = False, iso_time(self._clock.seconds())
            self._log.info("sync {job}: mirror {size} bytes, limit {limit}, evicted {changed} ({bytes} bytes)",
                           job=JOB, size=self.size, limit=self._settings.current.mirror_max_size,
                           changed=report.changed, bytes=report.bytes, event="sync-finished")
            if self._metrics is not None:
                self._metrics.sync_finished(report)
        return report

    async def _measure(self) -> list[usage.StoredTarball]:
        """Set ``size`` from one listing; the mirrored tarballs found (not yet dated)."""
        tarballs, size = [], 0
        for key, bytes_ in (await self._storage.sizes(keys.PACKAGES)).items():
            parsed = keys.parse_package_key(key)
            if parsed is None or parsed.kind not in MIRRORED_KINDS:
                continue
            size += bytes_
            if parsed.kind == keys.MIRRORED_TARBALL and parsed.filename is not None:
                tarballs.append(usage.StoredTarball(key, parsed.name, parsed.filename, bytes_))
        self.size, self.measured_at = size, self._clock.seconds()
        return tarballs

    async def _evict(self, found: list[usage.StoredTarball], limit: int, report: JobReport) -> None:
        recorded = await self._use.recorded()
        dated = [usage.StoredTarball(t.key, t.name, t.filename, t.size,
                                     usage.used_time(recorded, t.name, t.filename) or 0.0) for t in found]
        report.checked = len(dated)
        kept = frozenset() if self._settings.current.mirror_evict_pinned else await self._pinned_keys(dated)
        assert self.size is not None
        for count, tarball in enumerate(usage.choose_evictions(dated, self.size, limit, kept, EVICT_BATCH), 1):
            if count % RENEW_EVERY == 0 and not await self._lock.renew(JOB):
                report.fail("*", "another nopard instance took the job's lock over; run stopped")
                return
            if await self._storage.delete(tarball.key):
                report.changed += 1
                report.bytes += tarball.size
                self.size -= tarball.size
                self.evictions += 1
                if self._metrics is not None:
                    self._metrics.mirror_evictions.inc()
                self._log.debug("evicted {key} ({size} bytes)", key=tarball.key, size=tarball.size, event="evicted")
        if self.size > limit:
            report.fail("*", f"the mirror is still {self.size} bytes, over its limit of {limit}: the rest is "
                             "documents, pinned versions, or for the next run")

    async def _pinned_keys(self, tarballs: list[usage.StoredTarball]) -> frozenset[str]:
        """The keys of the stored tarballs of versions a prefetched lockfile pinned (their documents say which)."""
        pins = await self._use.pinned()
        kept: set[str] = set()
        for name in sorted({t.name for t in tarballs} & pins.keys()):
            document = await self._documents.mirrored_document(name)
            versions = (document or {}).get("versions") or {}
            for version in pins[name]:
                filename = tarball_file(name, version, versions[version]) if version in versions else None
                if filename is not None:
                    kept.add(keys.upstream_tarball_key(name, filename))
        return frozenset(kept)
