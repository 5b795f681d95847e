"""Mirrored tarballs: stored ones are streamed; a missing one is fetched once, verified, stored.

A missing tarball is fetched into a spool file (nopard.mirror.spool) while its
digests are computed; every client asking for it meanwhile is sent its bytes
from the spool as they arrive, and the last byte only once they matched the
manifest's ``dist`` and the tarball is stored (create-if-absent). A mismatch
cuts every such client's download and stores nothing, so a corrupt download is
never stored and never served whole.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nopard.domain import packument
from nopard.domain.errors import NotFound, UpstreamBadContent
from nopard.domain.integrity import Digests
from nopard.mirror.documents import Coordination, MirroredDocuments
from nopard.mirror.policy import Action
from nopard.mirror.spool import Spool
from nopard.mirror.writeback import FileCopy, WriteBehind
from nopard.ops.singleflight import SingleFlight
from nopard.settings.acl import unreachable
from nopard.settings.config import LiveSettings
from nopard.storage import Blob, Storage, keys
from nopard.storage.fs import FileBlob
from nopard.upstream.client import Upstream


class MirroredTarballs:
    """Upstream tarballs kept here: each fetched at most once at a time, verified, then stored."""

    def __init__(
        self, settings: LiveSettings, storage: Storage, documents: MirroredDocuments, coordination: Coordination,
        spool_dir: str, log: Logger, writes: WriteBehind,
    ) -> None:
        self._settings = settings
        self._storage = storage
        # A verified copy may be written after its answer (mirror/writeback.py); reads here see it.
        self._writes = writes
        self._documents = documents
        self._coordination = coordination
        self._spool_dir = spool_dir
        self._log = log
        self._flights: SingleFlight[int] = SingleFlight()
        self._spools: dict[str, Spool] = {}  # fetches under way whose answer began, by key
        self._joining: dict[str, list[Deferred[Spool | None]]] = {}  # clients waiting for that

    async def stored(self, name: str, filename: str) -> bool:
        """Whether the upstream tarball ``filename`` of ``name`` is stored (or waits to be)."""
        key = keys.upstream_tarball_key(name, filename)
        return self._writes.has(key) or await self._storage.exists(key)

    async def open(self, name: str, filename: str, upstream: Upstream) -> tuple[Blob, str]:
        """The stored tarball (HIT), else fetched now (MISS); NotFound fast while the upstream is down.

        A MISS is sent as it arrives (a spool follower) when the upstream
        declared its length, else once stored.
        """
        key = keys.upstream_tarball_key(name, filename)
        blob = _open_waiting(self._writes.file_of(key)) or await self._storage.open(key)
        if blob is not None:
            return blob, Action.SERVE.value
        spool = self._spools.get(key)
        if spool is None:
            if upstream.breaker.down:
                raise NotFound(unreachable(f"{name}/-/{filename}"))
            spool = await self._join(key, lambda: self._fetch(name, filename, upstream, for_client=True))
        if spool is not None and not spool.ended:
            return spool.follow(), Action.FETCH.value
        if spool is not None and spool.failure is not None:  # over before this caller could follow it
            raise spool.failure
        blob = _open_waiting(self._writes.file_of(key)) or await self._storage.open(key)
        if blob is None:
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        return blob, Action.FETCH.value

    async def stored_key(self, name: str, filename: str, upstream: Upstream) -> tuple[str, str]:
        """The key of the stored tarball (HIT), else of the one fetched and verified now (MISS)."""
        key = keys.upstream_tarball_key(name, filename)
        await self._writes.written(key)  # a copy waiting is stored first: the redirect names the file
        if await self._storage.exists(key):
            return key, Action.SERVE.value
        if upstream.breaker.down:
            raise NotFound(unreachable(f"{name}/-/{filename}"))
        await self._flights.run(key, lambda: self._fetch(name, filename, upstream))
        await self._writes.written(key)  # stored now, not later: the redirect names the file
        return key, Action.FETCH.value

    async def ensure(self, name: str, filename: str, upstream: Upstream) -> int:
        """Fetch and store an upstream tarball unless stored; the bytes fetched now (0: was there)."""
        key = keys.upstream_tarball_key(name, filename)
        if self._writes.has(key) or await self._storage.exists(key):
            return 0
        return await self._flights.run(key, lambda: self._fetch(name, filename, upstream))

    async def _join(self, key: str, work: Callable[[], Awaitable[int]]) -> Spool | None:
        """The spool of the fetch of ``key`` (started unless under way) once the upstream's answer began.

        None: the fetch ended first (stored, or an answer of unknown length);
        its error if it failed. A caller that goes away leaves the fetch to the others.
        """
        ready: Deferred[Spool | None] = Deferred(lambda waiter: self._unjoin(key, waiter))
        self._joining.setdefault(key, []).append(ready)
        flight = Deferred.fromCoroutine(self._flights.run(key, work))

        def ended(outcome: object) -> None:
            self._unjoin(key, ready)
            if not ready.called:
                if isinstance(outcome, Failure):
                    ready.errback(outcome)
                else:
                    ready.callback(None)

        flight.addBoth(ended)
        try:
            return await ready
        finally:
            if not flight.called:
                flight.cancel()  # leaves the shared fetch only: the spool is what this caller follows

    def _unjoin(self, key: str, waiter: Deferred[Spool | None]) -> None:
        waiting = self._joining.get(key, [])
        if waiter in waiting:
            waiting.remove(waiter)
        if not waiting:
            self._joining.pop(key, None)

    def _began(self, key: str, spool: Spool) -> None:
        """The upstream's answer began, of a known length: clients waiting (and coming) follow ``spool``."""
        self._spools[key] = spool
        for waiter in self._joining.pop(key, []):
            waiter.callback(spool)

    async def _fetch(self, name: str, filename: str, upstream: Upstream, for_client: bool = False) -> int:
        """Fetch, verify and store a tarball; one instance at a time fetches a given one.

        ``for_client``: a client waits on it, so the copy may be written after its answer
        (mirror/writeback.py); the sync jobs' fetches are stored before they count as done."""
        key = keys.upstream_tarball_key(name, filename)
        async with self._coordination.lock("tarball:" + key, wait=self._settings.current.upstream_timeout):
            # Fetched by another instance while this one waited (or by this one, its copy waiting).
            if self._writes.has(key) or await self._storage.exists(key):
                return 0
            return await self._fetch_locked(name, filename, upstream, for_client)

    async def _fetch_locked(self, name: str, filename: str, upstream: Upstream, for_client: bool) -> int:
        key = keys.upstream_tarball_key(name, filename)
        manifest = await self._manifest_for(name, filename, upstream, for_client)
        dist = manifest.get("dist") or {}
        digests = Digests(dist)
        spool = Spool(self._spool_dir)
        try:
            def write(chunk: bytes) -> None:
                digests.update(chunk)
                spool.append(chunk)

            def began(length: int | None) -> None:
                if length is not None:
                    spool.length = length
                    self._began(key, spool)

            status = await upstream.stream(str(dist.get("tarball")), write, began)
            if status == 404:
                raise NotFound(f"tarball not found upstream: {name}/-/{filename}")
            if status != 200:
                raise UpstreamBadContent(f"the upstream answered {status} for {name}/-/{filename}")
            if not digests.matches(dist) or spool.length not in (None, spool.written):
                self._log.warn(
                    "refused {name}/-/{filename}: checksum mismatch ({size} bytes)",
                    name=name, filename=filename, size=digests.size, event="integrity-mismatch",
                )
                raise UpstreamBadContent(
                    f"the upstream's {name}/-/{filename} does not match its integrity; not stored"
                )
            # Stored, or waiting to be (a second name keeps the spool's file): a client that has the
            # whole tarball finds it here again at once (say, offline), and a request after it is a HIT.
            kept = self._writes.keep(spool.path) if for_client and self._writes.later else None
            await self._writes.store(name, [(key, kept or FileCopy(spool.path))], later=kept is not None)
            spool.verify()
        except BaseException as error:
            spool.fail(error)
            raise
        finally:
            if self._spools.get(key) is spool:
                del self._spools[key]
            spool.end()
        return digests.size

    async def _manifest_for(self, name: str, filename: str, upstream: Upstream, for_client: bool) -> dict[str, Any]:
        """The upstream manifest naming ``filename``, refreshing a document that lacks it."""
        document = await self._documents.mirrored_document(name)
        manifest = packument.find_version_by_file(document, filename) if document else None
        if manifest is None:
            document = await self._documents.refetch(name, upstream, for_client)
            manifest = packument.find_version_by_file(document, filename)
        if manifest is None:
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        if not str((manifest.get("dist") or {}).get("tarball", "")).startswith(("http://", "https://")):
            raise UpstreamBadContent(f"the upstream gives no tarball URL for {name}/-/{filename}")
        return manifest


def _open_waiting(path: str | None) -> FileBlob | None:
    """The file of a copy waiting to be stored, opened (on the reactor, as storage/index.py opens a
    known tarball); None when there is none, or it was just stored and its second name removed."""
    if path is None:
        return None
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return None
    return FileBlob(file, os.fstat(file.fileno()).st_size)
