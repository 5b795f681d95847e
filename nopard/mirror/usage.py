"""The record of when clients last used each mirrored package and tarball: cheap, batched, shared.

A request only updates a dict in memory. Every FLUSH_SECONDS (and when nopard stops) the
uses gathered since are merged into the store, one compare-and-swap per shard touched
(``keys.usage_shard_key``: 256 shards by the name's hash), never a write per request.
Every instance and worker flushes into the same shards, and the merge keeps the later
time of each, so the record is the union of all of them. The sync job reads it to
refresh by use (nopard.domain.usage.refresh_due), the eviction job to evict the least
recently used tarballs (nopard.mirror.eviction).

It also keeps the versions prefetched lockfiles pinned (``keys.USAGE_PINNED``), which
eviction leaves alone unless NOPARD_MIRROR_EVICT_PINNED allows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import orjson
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.domain import usage as domain
from nopard.storage import Storage, keys

FLUSH_SECONDS = 60.0  # how stale the shared record may be: eviction and sync read it at most this late
STOP_FLUSH_SECONDS = 10.0  # the last flush may hold nopard's stop this long (a store that hangs: uses lost)
CAS_ATTEMPTS = 8  # instances flushing the same shard at once: each retry merges the other's write


class UsageLog:
    """Uses counted in memory, flushed to the store now and then (see the module's doc)."""

    def __init__(self, storage: Storage, clock: IReactorTime, log: Logger) -> None:
        self._storage = storage
        self._clock = clock
        self.log = log
        self._pending: domain.Usage = {}

    def used(self, name: str, filename: str | None = None) -> None:
        """Note that a client asked for ``name``'s document (or its tarball ``filename``) now."""
        now = int(self._clock.seconds())
        entry = self._pending.get(name)
        if entry is None:
            entry = self._pending[name] = {"used": now, "files": {}}
        entry["used"] = now
        if filename is not None:
            entry["files"][filename] = now

    @property
    def pending(self) -> int:
        """Packages used since the last flush."""
        return len(self._pending)

    async def flush(self) -> None:
        """Merge the uses gathered since the last flush into the store (one write per shard touched).

        A shard that cannot be written keeps its uses in memory for the next flush.
        """
        pending, self._pending = self._pending, {}
        shards: dict[str, domain.Usage] = {}
        for name, entry in pending.items():
            shards.setdefault(keys.usage_shard_key(name), {})[name] = entry
        for key, entries in sorted(shards.items()):
            try:
                await self._update(key, partial(domain.merged, pending=entries))
            except Exception:
                self.log.failure("usage flush of {key} failed; kept for the next one", key=key,
                                  event="usage-flush-failed")
                self._pending = domain.merged(self._pending, entries)

    async def recorded(self) -> domain.Usage:
        """Every package's last use, as far as every instance flushed it (this one's flushed now)."""
        await self.flush()
        found: domain.Usage = {}
        for key in await self._storage.list(keys.USAGE):
            if keys.key_kind(key) == keys.USAGE_RECORD and key != keys.USAGE_PINNED:
                found.update(_load(await self._storage.read(key)))
        return found

    async def pin(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record (name, version) pairs a prefetched lockfile pinned: eviction keeps their tarballs."""
        pairs = list(pairs)
        if pairs:
            await self._update(keys.USAGE_PINNED, lambda stored: domain.merged_pins(stored, pairs))

    async def pinned(self) -> dict[str, list[str]]:
        """Name -> the versions prefetched lockfiles pinned."""
        return domain.merged_pins(_load(await self._storage.read(keys.USAGE_PINNED)), ())

    async def _update(self, key: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Read, change and compare-and-swap ``key``, again while another instance wrote it meanwhile."""
        for _ in range(CAS_ATTEMPTS):
            stored = await self._storage.read_versioned(key)
            data = orjson.dumps(change(_load(stored[0]) if stored else {}), option=orjson.OPT_SORT_KEYS)
            if await self._storage.replace(key, data, stored[1] if stored else None):
                return
        raise RuntimeError(f"{key} kept changing under {CAS_ATTEMPTS} attempts to merge into it")


def _load(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        loaded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}  # a damaged shard is rebuilt from the next uses
    return loaded if isinstance(loaded, dict) else {}


class UsageFlusher(Service):
    """Flushes a UsageLog every ``interval`` seconds while nopard runs, and once more when it stops
    (before the thread pools the store uses stop: GracefulService stops it first)."""

    stops_first = True

    def __init__(self, usage: UsageLog, clock: IReactorTime, interval: float = FLUSH_SECONDS) -> None:
        self._usage = usage
        self._loop = task.LoopingCall(self._flush)
        self._loop.clock = clock
        self._clock = clock
        self._interval = interval

    def _flush(self) -> Deferred[None]:
        # An error must not end the LoopingCall: uses would pile up in memory, never flushed again.
        return Deferred.fromCoroutine(self._usage.flush()).addErrback(
            lambda failure: self._usage.log.failure("usage flush failed", failure, event="usage-flush-failed"))

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Awaitable[None] | None:
        if not self.running:
            return None
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        last = Deferred.fromCoroutine(self._usage.flush()).addTimeout(STOP_FLUSH_SECONDS, self._clock)
        return last.addErrback(lambda failure: self._usage.log.failure(
            "the last usage flush failed; uses since the previous one are lost", failure, event="usage-flush-failed"))
