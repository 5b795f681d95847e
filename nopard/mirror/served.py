"""What clients are served for a package: its local document, else (or merged with) the mirrored one.

``Mirror`` is the face the routes use. It decides local versus mirrored
(private scopes and access rules never go upstream; a name published here
shadows the upstream's unless NOPARD_MERGE_UPSTREAM lists it), and keeps the
served document prepared in memory and shared with other instances; the
offline-first table itself is nopard.mirror.policy, carried out by
nopard.mirror.documents and nopard.mirror.tarballs.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime

from nopard.cluster.coordination import DEGRADED_FRESHNESS
from nopard.domain import packument
from nopard.domain.errors import NotFound, UpstreamUnavailable
from nopard.domain.prepared import CachedDocument, PreparedCache, PreparedDocument, prepare
from nopard.local.packages import Registry
from nopard.mirror.documents import Coordination, MirroredDocuments, MirrorMeta
from nopard.mirror.policy import Action, decide
from nopard.mirror.tarballs import MirroredTarballs
from nopard.mirror.upstreams import Upstreams
from nopard.ops.singleflight import SingleFlight
from nopard.settings import acl
from nopard.settings.config import LiveSettings
from nopard.storage import Blob, Storage, keys
from nopard.upstream.client import Upstream

Loaded = tuple[dict[str, Any], str, MirrorMeta | None, str]


class Mirror:
    """Serves documents and tarballs: local ones, else mirrored ones by the offline-first policy."""

    def __init__(
        self, settings: LiveSettings, storage: Storage, registry: Registry, upstreams: Upstreams,
        documents: MirroredDocuments, tarballs: MirroredTarballs, cache: PreparedCache, clock: IReactorTime,
        coordination: Coordination,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._registry = registry
        self._upstreams = upstreams
        self._documents = documents
        self._tarballs = tarballs
        self._cache = cache
        self._clock = clock
        self._coordination = coordination
        self._prepared: SingleFlight[tuple[PreparedDocument, str]] = SingleFlight()

    async def packument(self, name: str, base_url: str) -> tuple[PreparedDocument, str]:
        """The served document of ``name`` (local, mirrored or merged) prepared for ``base_url``, and how."""
        stamp = await self._coordination.stamp(name)
        cached = await self._cached(name, base_url, stamp)
        if cached is not None:
            if cached.origin == "local":
                return cached.prepared, "LOCAL"
            upstream = self._upstreams.for_name(name)
            down = upstream is None or upstream.breaker.down
            if decide(cached.fetched_at, self._clock.seconds(), self._ttl(), down) is Action.SERVE:
                return cached.prepared, Action.SERVE.value
        # Concurrent misses share one load: preparing a big document is CPU on the reactor.
        key = f"{name}\0{base_url}\0{stamp}\0{self._cache.changes(name)}"
        return await self._prepared.run(key, lambda: self._load_prepared(name, base_url, stamp))

    async def served_document(self, name: str, base_url: str) -> dict[str, Any]:
        """``packument()``'s document as a dict (for the version route)."""
        prepared, _ = await self.packument(name, base_url)
        document: dict[str, Any] = orjson.loads(prepared.full.identity)
        return document

    async def tarball(self, name: str, filename: str) -> tuple[Blob, str]:
        """The tarball ``filename`` of ``name``, and how it was served."""
        local = await self._storage.open(keys.tarball_key(name, filename))
        if local is not None:
            return local, "LOCAL"
        return await self._tarballs.open(name, filename, await self._mirrored_from(name, filename))

    async def stored_tarball(self, name: str, filename: str) -> tuple[str, str]:
        """The storage key holding the tarball ``filename`` of ``name`` (a mirrored one missing
        here is fetched and verified first), and how it was served; for redirects to the store."""
        local = keys.tarball_key(name, filename)
        if await self._storage.exists(local):
            return local, "LOCAL"
        return await self._tarballs.stored_key(name, filename, await self._mirrored_from(name, filename))

    async def _mirrored_from(self, name: str, filename: str) -> Upstream:
        """The upstream a tarball not published here comes from; NotFound when none may serve it."""
        upstream = self._upstreams.for_name(name)
        merging = name in self._settings.current.merge_upstream
        if upstream is None or (not merging and await self._registry.has_document(name)):
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        return upstream

    async def mirrored_meta(self, name: str) -> MirrorMeta | None:
        """When nopard last confirmed its copy of ``name``'s upstream document (None: no copy)."""
        return await self._documents.mirrored_meta(name)

    async def refresh(self, name: str) -> bool:
        """Revalidate ``name`` with its upstream now; True if it changed. NotFound for a private name."""
        return await self._documents.refresh(name, self.upstream_of(name))

    def upstream_of(self, name: str) -> Upstream:
        """The upstream ``name`` is fetched from; NotFound when it must never leave nopard."""
        upstream = self._upstreams.for_name(name)
        if upstream is None:
            raise NotFound(f"{name} is private: never sent upstream")
        return upstream

    def missing_answer(self, name: str, tarball: str | None = None) -> str | None:
        """What a name that does not exist would be told now, found without asking anyone.

        Used to hide packages a user may not read: when the upstream is down or
        auto-forwarding is off, a missing name gets a different message than
        plain "not found", and a hidden one must get the same. None: plain.
        """
        upstream = self._upstreams.for_name(name)
        down = None if upstream is None else upstream.breaker.down
        return acl.missing_answer(name, tarball, down, self._settings.current.auto_forward)

    def _ttl(self) -> float:
        return self._settings.current.meta_ttl

    async def _load_prepared(self, name: str, base_url: str, stamp: str | None) -> tuple[PreparedDocument, str]:
        """Load ``name`` by the offline-first policy, prepare it, keep it in memory and share it."""
        with self._cache.loading(name) as ticket:
            document, entry_origin, meta, status = await self._load(name)
            if status in (Action.FETCH.value, Action.REVALIDATE.value):
                # Forms prepared for other base URLs may hold the older document.
                self._cache.invalidate(name, keep=ticket)
            prepared = prepare(document, base_url)
            entry = CachedDocument(prepared, entry_origin, meta.fetched_at if meta else None,
                                   meta.etag if meta else None, stamp, loaded_at=self._clock.seconds())
            self._cache.put(name, base_url, entry, ticket)
            if stamp is not None:  # None: degraded, nothing to share
                self._coordination.share_document(name, base_url, entry)
        return prepared, status

    async def _cached(self, name: str, base_url: str, stamp: str | None) -> CachedDocument | None:
        """The prepared document carrying ``stamp``: from memory, else from another instance.

        ``stamp`` None (Redis unreachable): only a copy loaded in the last
        DEGRADED_FRESHNESS seconds, so changes made through other instances,
        which nothing can announce, show within that long.
        """
        cached = self._cache.get(name, base_url)
        if stamp is None:
            if cached is None or cached.stamp is not None or cached.loaded_at is None:
                return None
            return cached if self._clock.seconds() - cached.loaded_at < DEGRADED_FRESHNESS else None
        if cached is not None and cached.stamp == stamp:
            return cached
        with self._cache.loading(name) as ticket:
            shared = await self._coordination.shared_document(name, base_url, stamp)
            if shared is not None:
                self._cache.put(name, base_url, shared, ticket)
        return shared

    async def _load(self, name: str) -> Loaded:
        """(document, origin, mirror meta, cache status) from storage and the upstream."""
        local = await self._registry.document(name)
        merging = name in self._settings.current.merge_upstream
        upstream = self._upstreams.for_name(name)
        if local is not None and (not merging or upstream is None):
            return local, "local", None, "LOCAL"
        if upstream is None:
            raise NotFound(f"package not found: {name}")
        try:
            mirrored, meta, status = await self._documents.by_policy(name, upstream)
        except (NotFound, UpstreamUnavailable):
            if local is not None:
                return local, "local", None, "LOCAL"
            raise
        if local is not None:
            return packument.merge_documents(local, mirrored), "merged", meta, status
        return mirrored, "upstream", meta, status
