"""Mirrored copies written after their answers: a burst of cold fetches is stored once it pauses.

An install through an empty nopard fetches a document and a tarball for each package, and
storing them (three files and three directories fsynced a package, the changes feed) cost
as much CPU and disk as answering, on the machine the installing client shares: on two cores
`npm ci` of 210 packages took 1.22-1.26x of the same install straight from the upstream, and
1.07x with those writes held until it was over (docs/benchmarks.md). So a verified copy
fetched for a client (``later``) is served from memory (a document) or its spool file (a
tarball) and written when no other came for NOPARD_MIRROR_WRITE_DELAY seconds, at most
MAX_AGE after the first waiting, at once beyond MAX_WAITING copies or MAX_WAITING_BYTES of
documents, and all of them when nopard stops. The mirror reads what waits as stored.

What a crash (kill -9, power) takes is what waited: copies of the upstream's packages,
fetched again when asked; nothing a client published (local packages are written before
their answer, always). With NOPARD_MIRROR_WRITE_DELAY=0, and whenever other processes share
the store (NOPARD_REDIS_URL, NOPARD_WORKERS), which must see a copy once one was served,
each copy is written before its answer ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nopard.mirror.spool import SPOOL_PREFIX
from nopard.storage import Storage

MAX_AGE = 10.0  # seconds the first waiting copy waits at most, however long the burst
MAX_WAITING = 512  # copies waiting at most (a document with its meta is one, a tarball one)
MAX_WAITING_BYTES = 64 * 1024 * 1024  # documents' bytes held in memory at most
STOP_SECONDS = 60.0  # the last writes may hold nopard's stop this long


@dataclass(frozen=True)
class FileCopy:
    """A local file (a spool) whose content is stored at a key, linked into place."""

    path: str


Write = tuple[str, "bytes | FileCopy"]


@dataclass
class _Copy:
    """One fetched copy: its writes, in order, and what follows them (the feed, the stamp)."""

    name: str
    writes: list[Write]
    then: Callable[[], Awaitable[Any]] | None
    size: int
    done: Deferred[None] = field(default_factory=Deferred)  # fires once written (or dropped)
    writing: bool = False


class WriteBehind:
    """Mirrored copies waiting to be written, readable meanwhile (see the module's doc)."""

    def __init__(self, storage: Storage, clock: IReactorTime, delay: Callable[[], float], log: Logger,
                 allowed: bool = True) -> None:
        self._storage = storage
        self._clock = clock
        self._delay = delay
        self._log = log
        self._allowed = allowed  # False: other processes share the store, so nothing waits
        self._queue: list[_Copy] = []
        self._by_key: dict[str, _Copy] = {}
        self._bytes = 0
        self._first_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._draining: Deferred[None] | None = None

    @property
    def later(self) -> bool:
        """Whether a copy stored now waits (else it is written before ``store`` returns)."""
        return self._allowed and self._delay() > 0

    @property
    def waiting(self) -> int:
        """Copies not written yet."""
        return len(self._queue)

    def keep(self, path: str) -> FileCopy | None:
        """A second name for the spool file ``path``, so the copy outlives the spool; named as the
        spools are, so a process killed before writing it leaves nothing behind for long
        (spool.remove_orphans). None where files cannot be linked: then the copy is stored at once."""
        directory = os.path.dirname(path)
        kept = os.path.join(directory, f"{SPOOL_PREFIX}{os.getpid()}-kept-{uuid.uuid4().hex}")
        try:
            os.link(path, kept)
        except OSError:
            return None
        return FileCopy(kept)

    async def store(self, name: str, writes: list[Write], then: Callable[[], Awaitable[Any]] | None = None,
                    later: bool = False) -> None:
        """Store ``writes`` in order, then run ``then``: now, or (``later`` and ``self.later``) soon.

        A copy waiting for the same keys is written first, so the newer one always wins.
        """
        for key, _ in writes:
            await self.written(key)
        if not (later and self.later):
            await self._write(_Copy(name, writes, then, 0))
            return
        size = sum(len(value) for _, value in writes if isinstance(value, bytes))
        copy = _Copy(name, writes, then, size)
        self._queue.append(copy)
        for key, _ in writes:
            self._by_key[key] = copy
        self._bytes += size
        if self._first_at is None:
            self._first_at = self._clock.seconds()
        self._arm()

    def bytes_of(self, key: str) -> bytes | None:
        """The bytes waiting to be stored at ``key``, or None (nothing, or a file)."""
        value = self._waiting_at(key)
        return value if isinstance(value, bytes) else None

    def file_of(self, key: str) -> str | None:
        """The file waiting to be stored at ``key``, or None."""
        value = self._waiting_at(key)
        return value.path if isinstance(value, FileCopy) else None

    def _waiting_at(self, key: str) -> bytes | FileCopy | None:
        copy = self._by_key.get(key)
        return None if copy is None else next(value for written, value in copy.writes if written == key)

    def keys(self) -> list[str]:
        """Every key something waits to be stored at."""
        return list(self._by_key)

    def has(self, key: str) -> bool:
        """Whether something waits to be stored at ``key``."""
        return key in self._by_key

    async def written(self, key: str) -> None:
        """Write what waits for ``key`` now (a redirect to the stored file, a change of it)."""
        copy = self._by_key.get(key)
        if copy is None:
            return
        if not copy.writing:
            self._queue.remove(copy)
            await self._write_waiting(copy)
        else:
            await _waiting_for(copy.done)

    async def flush(self) -> None:
        """Write everything waiting (at stop), and what comes while it is written."""
        while self._queue or self._draining is not None:
            if self._draining is None:
                self._drain()
            if self._draining is not None:
                await _waiting_for(self._draining)

    def _arm(self) -> None:
        """Write once no copy came for the delay, the first waited MAX_AGE, or too much waits."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        assert self._first_at is not None  # a copy waits
        age = self._clock.seconds() - self._first_at
        full = len(self._queue) >= MAX_WAITING or self._bytes >= MAX_WAITING_BYTES
        wait = 0.0 if full else max(0.0, min(self._delay(), MAX_AGE - age))
        self._timer = self._clock.callLater(wait, self._drain)

    def _drain(self) -> None:
        """Write the waiting copies one at a time (a burst of writes is what this avoids)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._draining is not None or not self._queue:
            return

        async def drain() -> None:
            try:
                while self._queue:
                    await self._write_waiting(self._queue.pop(0))
            finally:
                self._draining = None
                self._first_at = None

        draining = Deferred.fromCoroutine(drain())
        if not draining.called:  # a store that answers at once (tests) is done already
            self._draining = draining

    async def _write_waiting(self, copy: _Copy) -> None:
        """Write a copy that waited; a failure is logged and the copy dropped (fetched again)."""
        copy.writing = True
        try:
            await self._write(copy)
        except Exception:
            self._log.failure("could not store the mirrored copy of {name}; it is fetched again when asked",
                              name=copy.name, event="mirror-write-failed")
        finally:
            for key, value in copy.writes:
                if self._by_key.get(key) is copy:
                    del self._by_key[key]
                if isinstance(value, FileCopy):
                    _remove(value.path)
            self._bytes -= copy.size
            copy.done.callback(None)

    async def _write(self, copy: _Copy) -> None:
        """The writes in order, then what follows them (a spool's file is the spool's to remove)."""
        for key, value in copy.writes:
            if isinstance(value, FileCopy):
                await self._storage.create_from_file(key, value.path)
            else:
                await self._storage.write(key, value)
        if copy.then is not None:
            await copy.then()


class WriteBehindService(Service):
    """Writes what waits when nopard stops, before the thread pools the store uses stop."""

    stops_first = True

    def __init__(self, writes: WriteBehind, clock: IReactorTime, log: Logger) -> None:
        self._writes = writes
        self._clock = clock
        self._log = log

    def stopService(self) -> Deferred[None] | None:
        if not self.running:
            return None
        super().stopService()
        last = Deferred.fromCoroutine(self._writes.flush()).addTimeout(STOP_SECONDS, self._clock)
        return last.addErrback(lambda failure: self._log.failure(
            "mirrored copies not written at stop; they are fetched again when asked", failure,
            event="mirror-write-failed"))


def _waiting_for(done: Deferred[None]) -> Deferred[None]:
    """A Deferred firing with ``done`` that leaves ``done`` itself alone (many may wait on one)."""
    waiter: Deferred[None] = Deferred()

    def passed_on(result: Any) -> Any:
        waiter.callback(None)
        return result

    done.addBoth(passed_on)
    return waiter


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
