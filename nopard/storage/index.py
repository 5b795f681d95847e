"""What is stored and where, known without asking the store each time: the tarball fast path.

``IndexedStorage`` wraps any backend. For the keys a tarball request asks about (a
package's local document, its local and mirrored tarballs) it remembers what the
store answered (``StoreIndex``): present (size, and for the filesystem the file's
path) or absent. A warm tarball is then opened with no thread-pool hop: its bytes
from memory when small, else its file opened on the reactor and streamed with flow
control. On the filesystem a token's record (read by every bearer request) is kept
too, checked against its file by a stat on each use. Every write or delete nopard
makes through the wrapper forgets that key, before and after the change, and voids
its package's lookups in flight, so nothing learned before a change is trusted after it.

Other workers and instances sharing Redis announce their writes the same way
(``IndexedStorage.announce``, cluster/feed.py), and their news drops this index's
facts of that package at once (``StoreIndex.changed``); while that news may be
missed (no subscription) facts are trusted for a short while only (``trusted_for``).
nopard-admin's import, gc and fsck announce theirs when given NOPARD_REDIS_URL
(cli/announce.py). Changes made behind nopard's back without it are not, so nothing is
trusted blindly: an unknown key asks the store; a file that vanished is
forgotten and asked again (never a 500); on the filesystem a memory hit checks the
file is still the one read (inode, mtime, size); and every fact expires after
FACTS_TTL seconds.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from twisted.internet.interfaces import IConsumer, IReactorTime

from nopard.storage import Blob, Storage, keys
from nopard.storage.fs import FileBlob

# How long a fact is trusted without news (a local publish by another instance shadowing a
# mirrored name shows within this long; positive facts on the filesystem are checked anyway).
FACTS_TTL = 10.0
# Tarballs up to this size are held in memory (most npm tarballs are far smaller), and at most
# this share of NOPARD_MEMORY_CACHE_SIZE holds tarballs: the prepared documents keep the rest.
MEMORY_TARBALL_MAX = 512 * 1024
TARBALL_SHARE = 4
MAX_PACKAGES = 100_000  # packages whose facts are kept (LRU): bounds the index's own memory
MAX_RECORDS = 10_000  # token records kept (a few hundred bytes each)
_INDEXED = frozenset({keys.LOCAL_DOCUMENT, keys.LOCAL_TARBALL, keys.MIRRORED_TARBALL})
_TARBALLS = frozenset({keys.LOCAL_TARBALL, keys.MIRRORED_TARBALL})


@dataclass(frozen=True)
class Stored:
    """A stored object: its size, the file holding it (filesystem), and that file's identity."""

    size: int
    path: str | None = None
    identity: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the file read


class MemoryBlob:
    """A tarball's bytes held in memory, sent in one write."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    async def send_to(self, consumer: IConsumer) -> None:
        """Write the bytes to ``consumer``."""
        consumer.write(self.data)

    def close(self) -> None:
        """Nothing to release."""


class _Facts:
    """One package's facts: key -> Stored (present) or None (absent), and when they were learned."""

    __slots__ = ("learned_at", "keys")

    def __init__(self, learned_at: float) -> None:
        self.learned_at = learned_at
        self.keys: dict[str, Stored | None] = {}


_UNKNOWN = object()
_T = TypeVar("_T")


class StoreIndex:
    """Facts about stored packages' keys, and small tarballs' bytes within a shared memory budget.

    ``budget()`` is NOPARD_MEMORY_CACHE_SIZE, shared with the prepared documents:
    tarball bytes take at most a TARBALL_SHARE-th of it, and ``make_room()`` (the
    PreparedCache's trim) is called after each addition so both together stay within it.
    """

    def __init__(self, clock: IReactorTime, budget: Callable[[], int],
                 make_room: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._budget = budget
        self.make_room = make_room
        #: Seconds a fact is trusted without news: FACTS_TTL, less while other processes' news may be missed.
        self.trusted_for: Callable[[], float] = lambda: FACTS_TTL
        self._facts: OrderedDict[str, _Facts] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._bytes: OrderedDict[str, tuple[Stored, bytes]] = OrderedDict()
        self.bytes_held = 0
        self._records: OrderedDict[str, tuple[tuple[int, int, int], bytes]] = OrderedDict()

    # What another process tells (the public invalidation) ----------------------------

    def changed(self, name: str) -> None:
        """Package ``name`` changed (here or elsewhere): forget its facts and bytes, void lookups in flight."""
        self._generations[name] = self._generations.get(name, 0) + 1
        facts = self._facts.pop(name, None)
        if facts is not None:
            for key in facts.keys:
                self._drop_bytes(key)

    def forget(self, key: str) -> None:
        """The object at ``key`` changed (here or elsewhere): forget it, void its package's lookups in flight."""
        self._records.pop(key, None)
        parsed = keys.parse_package_key(key)
        if parsed is None:
            return  # nothing else is kept of other keys
        self._generations[parsed.name] = self._generations.get(parsed.name, 0) + 1
        facts = self._facts.get(parsed.name)
        if facts is not None:
            facts.keys.pop(key, None)
        self._drop_bytes(key)

    def clear(self) -> None:
        """Forget everything (e.g. news may have been missed)."""
        for name in list(self._facts):
            self.changed(name)

    # Lookups ---------------------------------------------------------------------------

    def generation(self, name: str) -> int:
        """Moves with every change of ``name``: a lookup started before one must not be learned after it."""
        return self._generations.get(name, 0)

    def known(self, name: str, key: str) -> Any:
        """Stored, None (known absent), or ``UNKNOWN``."""
        facts = self._facts.get(name)
        if facts is None:
            return _UNKNOWN
        if self._clock.seconds() - facts.learned_at >= self.trusted_for():
            self.changed(name)
            return _UNKNOWN
        return facts.keys.get(key, _UNKNOWN)

    def learn(self, name: str, key: str, fact: Stored | None, generation: int) -> None:
        """Keep what the store answered for ``key``, unless ``name`` changed since the question.

        A mirrored tarball's absence is never kept: it is asked only on the way to a fetch,
        which must see a copy another instance stored meanwhile (one upstream request in all).
        """
        if generation != self.generation(name) or (fact is None and _is_mirrored_tarball(key)):
            return
        facts = self._facts.get(name)
        if facts is None:
            facts = self._facts[name] = _Facts(self._clock.seconds())
            while len(self._facts) > MAX_PACKAGES:
                self.changed(next(iter(self._facts)))
        else:
            self._facts.move_to_end(name)
        facts.keys[key] = fact

    def held(self, key: str, fact: Stored) -> bytes | None:
        """The bytes held for ``key`` if they are still ``fact``'s."""
        entry = self._bytes.get(key)
        if entry is None:
            return None
        if entry[0].size != fact.size:
            self._drop_bytes(key)
            return None
        self._bytes.move_to_end(key)
        return entry[1]

    def hold(self, key: str, fact: Stored, data: bytes) -> None:
        """Keep a small tarball's bytes (LRU), within this index's share of the budget."""
        limit = self._budget() // TARBALL_SHARE
        if len(data) > min(MEMORY_TARBALL_MAX, limit):
            return
        self._drop_bytes(key)
        self._bytes[key] = (fact, data)
        self.bytes_held += len(data)
        while self.bytes_held > limit:
            self._drop_bytes(next(iter(self._bytes)))
        self.make_room()

    def record(self, key: str, identity: tuple[int, int, int]) -> bytes | None:
        """A small record's bytes (a token's) if read from the file that still has ``identity``."""
        entry = self._records.get(key)
        if entry is None or entry[0] != identity:
            return None
        self._records.move_to_end(key)
        return entry[1]

    def keep_record(self, key: str, identity: tuple[int, int, int], data: bytes) -> None:
        """Keep a record's bytes with the identity of the file they were read from (LRU, MAX_RECORDS)."""
        self._records[key] = (identity, data)
        self._records.move_to_end(key)
        while len(self._records) > MAX_RECORDS:
            self._records.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """Packages known, tarballs and bytes held in memory."""
        return {"packages": len(self._facts), "tarballs": len(self._bytes), "bytes": self.bytes_held}

    def _drop_bytes(self, key: str) -> None:
        entry = self._bytes.pop(key, None)
        if entry is not None:
            self.bytes_held -= len(entry[1])


def holds_in_memory(size: int) -> bool:
    """Whether a tarball of ``size`` bytes is small enough to be held in memory."""
    return size <= MEMORY_TARBALL_MAX


class IndexedStorage:
    """A Storage that answers warm tarball lookups from ``StoreIndex`` and keeps it told of writes.

    ``path_of``: the backend's file for a key (the filesystem backend's), None for S3,
    whose bytes come from S3 unless held in memory.
    """

    def __init__(self, inner: Storage, index: StoreIndex) -> None:
        self.inner = inner
        self.index = index
        self._path_of: Callable[[str], str] | None = getattr(inner, "path_of", None)
        #: Tells the other processes that a package's indexed keys changed (cluster/feed.py), awaited
        #: after each such write so they know before the write's request is answered; None: alone.
        self.announce: Callable[[str], Awaitable[None]] | None = None

    def __getattr__(self, attribute: str) -> Any:
        # Backend extras (path_of, root, relative_url...) stay reachable through the wrapper.
        return getattr(self.inner, attribute)

    # Reads -------------------------------------------------------------------------------

    async def read(self, key: str) -> bytes | None:
        """The object's bytes; a token record's from memory while its file is unchanged."""
        name, kind = _indexed(key)
        if name is None:
            if key.startswith(keys.TOKENS) and self._path_of is not None:
                return await self._read_record(key, self._path_of(key))
            return await self.inner.read(key)
        generation = self.index.generation(name)
        data = await self.inner.read(key)
        if kind == keys.LOCAL_DOCUMENT or data is None:
            self.index.learn(name, key, None if data is None else Stored(len(data)), generation)
        return data

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``; indexed keys answered from memory when known."""
        name, kind = _indexed(key)
        if name is None:
            return await self.inner.exists(key)
        known = self.index.known(name, key)
        if known is not _UNKNOWN:
            return known is not None
        generation = self.index.generation(name)
        found = await self.inner.exists(key)
        if not found:
            self.index.learn(name, key, None, generation)
        elif kind == keys.LOCAL_DOCUMENT:
            self.index.learn(name, key, Stored(0), generation)
        elif self._path_of is not None:  # a tarball file: its size, for the next open or redirect
            path = self._path_of(key)
            try:
                self.index.learn(name, key, Stored(os.stat(path).st_size, path), generation)
            except OSError:
                pass  # gone already: asked again next time
        return found

    async def open(self, key: str) -> Blob | None:
        """Open the object; a known tarball from memory or its file, with no thread hop."""
        name, kind = _indexed(key)
        if name is None or kind not in _TARBALLS:
            return await self.inner.open(key)
        known = self.index.known(name, key)
        if known is None:
            return None
        if known is not _UNKNOWN:
            blob = await self._open_known(name, key, known)
            if blob is not None:
                return blob
        generation = self.index.generation(name)
        opened = await self.inner.open(key)
        path = self._path_of(key) if self._path_of is not None else None
        self.index.learn(name, key, None if opened is None else Stored(opened.size, path), generation)
        return opened

    async def _read_record(self, key: str, path: str) -> bytes | None:
        """A token's record: every bearer request reads one. Kept in memory and checked against
        its file on each use (a stat, no thread hop), so a revocation anywhere shows at once."""
        before = _identity(path)
        if before is not None:
            data = self.index.record(key, before)
            if data is not None:
                return data
        data = await self.inner.read(key)
        if data is not None and before is not None and _identity(path) == before:
            self.index.keep_record(key, before, data)  # unchanged while read: these are its bytes
        return data

    async def _open_known(self, name: str, key: str, fact: Stored) -> Blob | None:
        """A known tarball from memory or its file; None when it must be asked of the store again."""
        if fact.path is None:  # S3: memory, else one read of a small object kept for next time
            data = self.index.held(key, fact)
            if data is None and holds_in_memory(fact.size):
                generation = self.index.generation(name)
                data = await self.inner.read(key)
                if data is None:
                    self.index.changed(name)
                    return None
                if generation == self.index.generation(name):
                    self.index.hold(key, fact, data)
            return MemoryBlob(data) if data is not None else None
        return self._open_file(name, key, fact, fact.path)

    def _open_file(self, name: str, key: str, fact: Stored, path: str) -> Blob | None:
        """The file, checked to be the one known; its bytes held when small."""
        data = self.index.held(key, fact)
        try:
            if data is not None:
                status = os.stat(path)
                if fact.identity == (status.st_ino, status.st_mtime_ns, status.st_size):
                    return MemoryBlob(data)
            file = open(path, "rb")
        except OSError:  # vanished behind nopard's back: ask the store again
            self.index.changed(name)
            return None
        status = os.fstat(file.fileno())
        if not holds_in_memory(status.st_size):
            return FileBlob(file, status.st_size)  # opened on the reactor: no thread hop
        with file:
            data = file.read()
        if len(data) == status.st_size:
            identity = (status.st_ino, status.st_mtime_ns, status.st_size)
            fresh = Stored(status.st_size, path, identity)
            self.index.learn(name, key, fresh, self.index.generation(name))
            self.index.hold(key, fresh, data)
        return MemoryBlob(data)

    # Writes: each forgets the package's facts before and after --------------------------

    async def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` (see Storage)."""
        return await self._change(key, self.inner.write(key, data))

    async def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if nothing is there (see Storage)."""
        return await self._change(key, self.inner.create(key, data))

    async def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and version (see Storage)."""
        return await self.inner.read_versioned(key)

    async def replace(self, key: str, data: bytes, version: str | None) -> bool:
        """Compare-and-swap (see Storage)."""
        return await self._change(key, self.inner.replace(key, data, version))

    async def create_from_file(self, key: str, path: str) -> bool:
        """Store a local file's content only if nothing is there (see Storage)."""
        return await self._change(key, self.inner.create_from_file(key, path))

    async def delete(self, key: str) -> bool:
        """Remove the object (see Storage)."""
        return await self._change(key, self.inner.delete(key))

    async def delete_versioned(self, key: str, version: str) -> bool:
        """Compare-and-delete (see Storage)."""
        return await self._change(key, self.inner.delete_versioned(key, version))

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (see Storage)."""
        return await self.inner.list(prefix)

    async def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size (see Storage)."""
        return await self.inner.sizes(prefix)

    async def usage(self) -> tuple[int, int]:
        """(bytes, objects) the store holds (see Storage)."""
        return await self.inner.usage()

    async def _change(self, key: str, write: Awaitable[_T]) -> _T:
        """Run a write with the key forgotten before and after it, then announce it (indexed keys)."""
        try:
            with _Change(self.index, key):
                return await write
        finally:
            name, _ = _indexed(key)
            if name is not None and self.announce is not None:
                await self.announce(name)


class _Change:
    """Forgets a key's package when a write to it starts and again when it ends (lookups in flight)."""

    def __init__(self, index: StoreIndex, key: str) -> None:
        self._index = index
        self._key = key

    def __enter__(self) -> None:
        self._index.forget(self._key)

    def __exit__(self, *exc: object) -> None:
        self._index.forget(self._key)


def _identity(path: str) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of a file, None when it is not there."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def _is_mirrored_tarball(key: str) -> bool:
    return _indexed(key)[1] == keys.MIRRORED_TARBALL


@lru_cache(maxsize=65536)  # the same few keys are parsed on every warm request
def _indexed(key: str) -> tuple[str | None, str | None]:
    """(package name, kind) of a key the index keeps facts about, else (None, None)."""
    parsed = keys.parse_package_key(key)
    if parsed is None or parsed.kind not in _INDEXED:
        return None, None
    return parsed.name, parsed.kind
