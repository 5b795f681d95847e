"""Mirrored tarballs: stored ones are streamed; a missing one is fetched once, verified, stored.

A tarball is fetched into a spool file while its digests are computed, and
stored (create-if-absent) only when they match the manifest's ``dist``: a
corrupt download is never stored and never served.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.logger import Logger

from nopard.domain import packument
from nopard.domain.errors import NotFound, UpstreamBadContent
from nopard.domain.integrity import Digests
from nopard.mirror.documents import Coordination, MirroredDocuments
from nopard.mirror.policy import Action
from nopard.ops.singleflight import SingleFlight
from nopard.settings.acl import unreachable
from nopard.settings.config import LiveSettings
from nopard.storage import Blob, Storage, keys
from nopard.upstream.client import Upstream


class MirroredTarballs:
    """Upstream tarballs kept here: each fetched at most once at a time, verified, then stored."""

    def __init__(
        self, settings: LiveSettings, storage: Storage, documents: MirroredDocuments, coordination: Coordination,
        spool_dir: str, log: Logger,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._documents = documents
        self._coordination = coordination
        self._spool_dir = spool_dir
        self._log = log
        self._flights: SingleFlight[int] = SingleFlight()

    async def stored(self, name: str, filename: str) -> bool:
        """Whether the upstream tarball ``filename`` of ``name`` is stored."""
        return await self._storage.exists(keys.upstream_tarball_key(name, filename))

    async def open(self, name: str, filename: str, upstream: Upstream) -> tuple[Blob, str]:
        """The stored tarball (HIT), else fetched now (MISS); NotFound fast while the upstream is down."""
        key = keys.upstream_tarball_key(name, filename)
        blob = await self._storage.open(key)
        if blob is not None:
            return blob, Action.SERVE.value
        if upstream.breaker.down:
            raise NotFound(unreachable(f"{name}/-/{filename}"))
        await self._flights.run(key, lambda: self._fetch(name, filename, upstream))
        blob = await self._storage.open(key)
        if blob is None:
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        return blob, Action.FETCH.value

    async def stored_key(self, name: str, filename: str, upstream: Upstream) -> tuple[str, str]:
        """The key of the stored tarball (HIT), else of the one fetched and verified now (MISS)."""
        key = keys.upstream_tarball_key(name, filename)
        if await self._storage.exists(key):
            return key, Action.SERVE.value
        if upstream.breaker.down:
            raise NotFound(unreachable(f"{name}/-/{filename}"))
        await self._flights.run(key, lambda: self._fetch(name, filename, upstream))  # stored once it returns
        return key, Action.FETCH.value

    async def ensure(self, name: str, filename: str, upstream: Upstream) -> int:
        """Fetch and store an upstream tarball unless stored; the bytes fetched now (0: was there)."""
        key = keys.upstream_tarball_key(name, filename)
        if await self._storage.exists(key):
            return 0
        return await self._flights.run(key, lambda: self._fetch(name, filename, upstream))

    async def _fetch(self, name: str, filename: str, upstream: Upstream) -> int:
        """Fetch, verify and store a tarball; one instance at a time fetches a given one."""
        key = keys.upstream_tarball_key(name, filename)
        async with self._coordination.lock("tarball:" + key, wait=self._settings.current.upstream_timeout):
            if await self._storage.exists(key):  # fetched by another instance while this one waited
                return 0
            return await self._fetch_locked(name, filename, upstream)

    async def _fetch_locked(self, name: str, filename: str, upstream: Upstream) -> int:
        manifest = await self._manifest_for(name, filename, upstream)
        dist = manifest.get("dist") or {}
        digests = Digests(dist)
        os.makedirs(self._spool_dir, exist_ok=True)
        spool = tempfile.NamedTemporaryFile(dir=self._spool_dir, prefix=".fetch-", delete=False)
        try:
            with spool:
                def write(chunk: bytes) -> None:
                    digests.update(chunk)
                    spool.write(chunk)

                status = await upstream.stream(str(dist.get("tarball")), write)
            if status == 404:
                raise NotFound(f"tarball not found upstream: {name}/-/{filename}")
            if status != 200:
                raise UpstreamBadContent(f"the upstream answered {status} for {name}/-/{filename}")
            if not digests.matches(dist):
                self._log.warn(
                    "refused {name}/-/{filename}: checksum mismatch ({size} bytes)",
                    name=name, filename=filename, size=digests.size, event="integrity-mismatch",
                )
                raise UpstreamBadContent(
                    f"the upstream's {name}/-/{filename} does not match its integrity; not stored"
                )
            await self._storage.create_from_file(keys.upstream_tarball_key(name, filename), spool.name)
        finally:
            os.unlink(spool.name)
        return digests.size

    async def _manifest_for(self, name: str, filename: str, upstream: Upstream) -> dict[str, Any]:
        """The upstream manifest naming ``filename``, refreshing a document that lacks it."""
        document = await self._documents.mirrored_document(name)
        manifest = packument.find_version_by_file(document, filename) if document else None
        if manifest is None:
            document = await self._documents.refetch(name, upstream)
            manifest = packument.find_version_by_file(document, filename)
        if manifest is None:
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        if not str((manifest.get("dist") or {}).get("tarball", "")).startswith(("http://", "https://")):
            raise UpstreamBadContent(f"the upstream gives no tarball URL for {name}/-/{filename}")
        return manifest
