"""Packages published here: their stored documents, and publishing.

The per-package lock makes a publish a read-merge-write that no concurrent
publish of the same package can interleave with; the tarball is stored with
create-if-absent before the document that names it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import orjson
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime

from nopard import names, packument
from nopard.cache import PreparedCache
from nopard.errors import Conflict, PermissionDenied
from nopard.publication import Publication
from nopard.storage import Storage


class KeyedLocks:
    """One DeferredLock per key, created on demand and dropped when idle."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[DeferredLock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of ``key`` for the body of an ``async with``."""
        lock, users = self._locks.get(key, (DeferredLock(), 0))
        self._locks[key] = (lock, users + 1)
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def iso_time(seconds: float) -> str:
    """ISO-8601 UTC with milliseconds, as the npm registry writes times."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Registry:
    """The packages published to this registry."""

    def __init__(self, storage: Storage, cache: PreparedCache, clock: IReactorTime) -> None:
        self._storage = storage
        self._cache = cache
        self._clock = clock
        self._locks = KeyedLocks()

    async def document(self, name: str) -> dict[str, Any] | None:
        """The stored document of ``name``, or None if it was never published here."""
        raw = await self._storage.read(names.local_document_key(name))
        return orjson.loads(raw) if raw is not None else None

    async def publish(
        self, publication: Publication, publisher: dict[str, str], check_owner: bool = True
    ) -> dict[str, Any]:
        """Store the publication's tarballs, then the merged document; return the document.

        Raises VersionExists for a version already published, PermissionDenied
        when the publisher does not maintain an existing package (unless
        ``check_owner`` is off: anonymous writes), and Conflict when different
        bytes are already stored for a version's tarball.
        """
        name = publication.name
        async with self._locks.hold(name):
            document = await self.document(name)
            if document is None:
                names.validate_name(name, new=True)
            owned = document is None or not check_owner or _maintains(document, publisher["name"])
            if not owned:
                raise PermissionDenied(f"{publisher['name']} is not a maintainer of {name}")
            now = iso_time(self._clock.seconds())
            merged = packument.merge_publication(document, publication, publisher, now)
            for version, data in publication.tarballs.items():
                await self._store_tarball(name, names.tarball_filename(name, version), data)
            body = orjson.dumps(merged)
            merged["_rev"] = packument.next_revision(merged, body)
            await self._storage.write(names.local_document_key(name), orjson.dumps(merged))
            self._cache.invalidate(name)
            return merged

    async def _store_tarball(self, name: str, filename: str, data: bytes) -> None:
        key = names.tarball_key(name, filename)
        if await self._storage.create(key, data):
            return
        # Left by a publish whose document write never happened: the same
        # bytes may be published again, different bytes never replace them.
        if await self._storage.read(key) != data:
            raise Conflict(f"a different tarball is already stored as {name}/-/{filename}")


def _maintains(document: dict[str, Any], user: str) -> bool:
    maintainers = document.get("maintainers") or []
    return any(isinstance(m, dict) and m.get("name") == user for m in maintainers)
