"""The last day of this instance (or of every instance, through Redis), for the status page's charts.

Requests and sync runs are recorded as they happen (nopard.ops.metrics calls ``served``
and ``synced``); every ``tick`` seconds the upstreams' breakers are read (the time each
was up or down since the last look, from their transitions, so an outage shorter than a
tick is seen too) and the store's and the mirror's sizes. The figures go
into a BucketRing (nopard.domain.history): fixed memory, a day of 5-minute buckets.

With Redis (NOPARD_REDIS_URL, or the supervisor's shared state under NOPARD_WORKERS) a
``shared`` store (nopard.cluster.history) also receives them, batched once a tick, and the
page reads the day merged over every instance from it; while Redis is down the page shows
this instance's own day.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nopard.domain.history import (
    BUCKET_SECONDS,
    BUCKETS,
    SERVED_AS,
    Bucket,
    BucketRing,
    Day,
    breaker_spans,
    bucket_index,
    combine,
    spread,
    upstream_field,
)

TICK_SECONDS = 5.0  # cheap: a look at the breakers, and one EVAL when shared and something happened

MirrorSize = Callable[[], tuple[int | None, int | None]]  # (bytes mirrored, the limit or None)


class SharedDays(Protocol):
    """Where instances put their figures together (nopard.cluster.history.RedisDays)."""

    async def add(self, figures: dict[int, Bucket]) -> None:
        """Combine ``figures`` (bucket number -> figures) into the shared buckets."""

    async def day(self, indexes: range) -> list[Bucket] | None:
        """The shared buckets ``indexes``; None when they cannot be read now."""


class History(Service):
    """This instance's day in a BucketRing; read the breakers and sizes every ``tick`` seconds.

    ``upstreams``: the upstreams whose breakers to follow (shown_url, breaker);
    ``store``: a nopard.ops.metrics.StoreSize; ``mirror``: the mirrored bytes and the limit.
    """

    def __init__(self, clock: IReactorTime, upstreams: Callable[[], Iterable[Any]] = list,
                 store: Any = None, mirror: MirrorSize | None = None, shared: SharedDays | None = None,
                 log: Logger | None = None, tick: float = TICK_SECONDS, width: int = BUCKET_SECONDS,
                 count: int = BUCKETS) -> None:
        self.ring = BucketRing(width, count)
        self._clock = clock
        self._upstreams = upstreams
        self._store = store
        self._mirror = mirror
        self.shared = shared
        self._log = log or Logger(namespace="nopard.history")
        self._tick_seconds = tick
        self._looked_at = clock.seconds()
        # This instance's up/down seconds in the current buckets: recorded as running totals,
        # so that taking the largest value (across looks, and across instances) is right.
        self._seen: dict[tuple[int, str], float] = {}
        self._pending: dict[int, Bucket] = {}  # for ``shared``, sent at the next tick
        self._walked_bucket: int | None = None
        self._sizes: tuple[int, Bucket] | None = None  # the sizes recorded last, and in which bucket
        self._loop: LoopingCall | None = None
        self._running: Deferred | None = None

    # Recording ------------------------------------------------------------------------

    def _add(self, index: int, figures: Bucket) -> None:
        self.ring.add_to(index, figures)
        if self.shared is not None:
            self._hold(index, figures)

    def _hold(self, index: int, figures: Bucket) -> None:
        """Keep ``figures`` for the next flush (summed figures accumulate; the others are running
        totals or sizes)."""
        pending = self._pending.setdefault(index, {})
        for field, value in figures.items():
            pending[field] = combine(field, pending[field], value) if field in pending else value

    @property
    def unsent(self) -> int:
        """How many buckets' figures wait for ``shared`` (at most a day's, however long Redis is away)."""
        return len(self._pending)

    def served(self, status: str | None) -> None:
        """A document or tarball was served (``status``: HIT, STALE, MISS, LOCAL, REVALIDATED)."""
        if status in SERVED_AS:
            self._add(bucket_index(self._clock.seconds(), self.ring.width), {f"served:{status}": 1.0})

    def synced(self, report: Any) -> None:
        """A sync job's run ended (a nopard.jobs.sync.JobReport); skipped runs are not drawn."""
        if report.skipped:
            return
        self._add(bucket_index(self._clock.seconds(), self.ring.width), {
            "sync:runs": 1.0, "sync:checked": float(report.checked), "sync:changed": float(report.changed),
            "sync:tarballs": float(report.tarballs), "sync:failed": float(report.failure_count)})
        if self.shared is not None:  # a run is rare: every instance's page shows it at once
            Deferred.fromCoroutine(self.flush())

    def look(self) -> None:
        """Record the time each upstream was up or down since the last look."""
        now = self._clock.seconds()
        start, self._looked_at = self._looked_at, now
        current = bucket_index(now, self.ring.width)
        self._seen = {key: value for key, value in self._seen.items() if key[0] >= current - 1}
        for upstream in self._upstreams():
            url, breaker = upstream.shown_url, upstream.breaker
            was_open = _open_before(breaker.transitions, start)
            for span_start, span_end, down in breaker_spans(was_open, breaker.transitions, start, now):
                field = upstream_field("down" if down else "up", url)
                for index, seconds in spread(span_start, span_end, self.ring.width):
                    total = self._seen[(index, field)] = self._seen.get((index, field), 0.0) + seconds
                    self._add(index, {field: total})

    async def measure(self) -> None:
        """Record the store's and the mirror's sizes: the store walked once a bucket (StoreSize
        walks at most once a minute anyway), the figures recorded whenever they change (the
        mirror's is measured by the evict job)."""
        index = bucket_index(self._clock.seconds(), self.ring.width)
        if self._store is not None and self._walked_bucket != index:
            self._walked_bucket = index
            await self._store.refresh()
        figures: Bucket = {}
        if self._store is not None and self._store.bytes is not None:
            figures["store:bytes"] = float(self._store.bytes)
        if self._mirror is not None:
            mirrored, limit = self._mirror()
            if mirrored is not None:
                figures["mirror:bytes"] = float(mirrored)
            if limit is not None:
                figures["mirror:limit"] = float(limit)
        if figures and self._sizes != (index, figures):
            self._sizes = (index, figures)
            self._add(index, figures)

    async def tick(self) -> None:
        """Look at the upstreams, measure the sizes, and send the batch to ``shared``."""
        self.look()
        try:
            await self.measure()
        except Exception as error:  # a store that cannot be measured shows in the health probe
            self._log.debug("history: the sizes could not be measured: {error}", error=str(error))
        await self.flush()

    async def flush(self) -> None:
        """Send what was recorded since the last flush to ``shared`` (kept for the next one if it fails)."""
        if self.shared is None or not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await self.shared.add(pending)
        except Exception as error:
            self._log.debug("history: the shared buckets could not be written: {error}", error=str(error))
            oldest = bucket_index(self._clock.seconds(), self.ring.width) - self.ring.count
            for index, figures in sorted(pending.items()):
                if index > oldest:
                    self._hold(index, figures)

    # Reading --------------------------------------------------------------------------

    async def day(self) -> Day:
        """The day ending now: every instance's when shared and readable, else this instance's."""
        await self.tick()
        own = self.ring.day(self._clock.seconds())
        if self.shared is not None:
            merged = await self.shared.day(range(own[0][0], own[-1][0] + 1))
            if merged is not None:
                return Day.of([(index, bucket) for (index, _), bucket in zip(own, merged, strict=True)],
                              self.ring.width)
        return Day.of(own, self.ring.width)

    # Service --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._looked_at = self._clock.seconds()
        self._loop = LoopingCall(self._tick_logged)
        self._loop.clock = self._clock
        self._running = self._loop.start(self._tick_seconds, now=False)

    def stopService(self) -> Awaitable[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None

    async def _tick_logged(self) -> None:
        try:
            await self.tick()
        except Exception:  # never stop the loop: the next tick may work
            self._log.failure("history: a tick failed")


def _open_before(transitions: list[tuple[float, str]], moment: float) -> bool:
    """Whether the breaker was open at ``moment``, from its transitions."""
    state = False
    for when, name in transitions:
        if when > moment:
            break
        state = name == "open"
    return state
