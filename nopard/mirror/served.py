"""What clients are served for a package: its local document, else (or merged with) the mirrored one.

``Mirror`` is the face the routes use. It decides local versus mirrored
(private scopes and access rules never go upstream; a name published here
shadows the upstream's unless NOPARD_MERGE_UPSTREAM lists it), and keeps the
served document prepared in memory and shared with other instances; the
offline-first table itself is nopard.mirror.policy, carried out by
nopard.mirror.documents and nopard.mirror.tarballs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime

from nopard.cluster.coordination import DEGRADED_FRESHNESS
from nopard.domain import packument
from nopard.domain.errors import NotFound, UpstreamUnavailable, VersionBlocked, VersionQuarantined
from nopard.domain.firewall import BLOCKED, Hidden
from nopard.domain.prepared import CachedDocument, PreparedBody, PreparedCache, PreparedDocument, prepare
from nopard.firewall.verdicts import Firewall, Verdict
from nopard.local.packages import Registry
from nopard.mirror.documents import Coordination, MirroredDocuments, MirrorMeta
from nopard.mirror.policy import Action, decide
from nopard.mirror.tarballs import MirroredTarballs
from nopard.mirror.upstreams import Upstreams
from nopard.mirror.usage import UsageLog
from nopard.ops.singleflight import SingleFlight
from nopard.settings import acl
from nopard.settings.config import LiveSettings
from nopard.storage import Blob, Storage, keys
from nopard.upstream.client import Upstream

# (document, origin, mirror meta, cache status, the versions published here: None when all are)
Loaded = tuple[dict[str, Any], str, MirrorMeta | None, str, frozenset[str] | None]
# Names whose withheld tarballs are known without a prepared document (LRU).
MAX_WITHHELD = 10_000


class Mirror:
    """Serves documents and tarballs: local ones, else mirrored ones by the offline-first policy."""

    def __init__(
        self, settings: LiveSettings, storage: Storage, registry: Registry, upstreams: Upstreams,
        documents: MirroredDocuments, tarballs: MirroredTarballs, cache: PreparedCache, clock: IReactorTime,
        coordination: Coordination, firewall: Firewall | None = None, usage: UsageLog | None = None,
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
        self.firewall = firewall
        self._usage = usage  # what clients use, for the refresh by use and eviction
        # name: (stamp, cache changes, the document's withheld versions and files), when no prepared form is held
        self._withheld: OrderedDict[str, tuple[str | None, tuple[int, int], PreparedDocument]] = OrderedDict()

    async def packument(self, name: str, base_url: str) -> tuple[PreparedDocument, str]:
        """The served document of ``name`` (local, mirrored or merged) prepared for ``base_url``, and how."""
        prepared, status = await self._packument(name, base_url)
        self._used(name, None, status)
        return prepared, status

    def _used(self, name: str, filename: str | None, status: str) -> None:
        if self._usage is not None and status != "LOCAL":
            self._usage.used(name, filename)

    async def _packument(self, name: str, base_url: str) -> tuple[PreparedDocument, str]:
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

    async def manifest(self, name: str, base_url: str, version_or_tag: str) -> dict[str, Any]:
        """One version's manifest as served; a withheld version is refused with why."""
        prepared, _ = await self.packument(name, base_url)
        withheld = prepared.withheld.get(version_or_tag)
        if withheld is not None:
            if self.firewall is not None:
                self.firewall.refusing(withheld.kind)
            refuse(withheld)
        document: dict[str, Any] = orjson.loads(prepared.full.identity)
        return packument.resolve_version(document, version_or_tag)

    async def tarball(self, name: str, filename: str) -> tuple[Blob, str]:
        """The tarball ``filename`` of ``name``, and how it was served."""
        await self._refuse_withheld(name, filename)
        local = await self._storage.open(keys.tarball_key(name, filename))
        if local is not None:
            return local, "LOCAL"
        blob, status = await self._tarballs.open(name, filename, await self._mirrored_from(name, filename))
        self._used(name, filename, status)
        return blob, status

    async def stored_tarball(self, name: str, filename: str) -> tuple[str, str]:
        """The storage key holding the tarball ``filename`` of ``name`` (a mirrored one missing
        here is fetched and verified first), and how it was served; for redirects to the store."""
        await self._refuse_withheld(name, filename)
        local = keys.tarball_key(name, filename)
        if await self._storage.exists(local):
            return local, "LOCAL"
        key, status = await self._tarballs.stored_key(name, filename, await self._mirrored_from(name, filename))
        self._used(name, filename, status)
        return key, status

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

    async def _refuse_withheld(self, name: str, filename: str) -> None:
        """Refuse the tarball of a version the firewall withholds (also one a lockfile pins)."""
        if self.firewall is None:
            return
        withheld = (await self._withheld_of(name)).withheld_file(filename)
        if withheld is not None:
            self.firewall.refusing(withheld.kind)
            refuse(withheld)

    async def _withheld_of(self, name: str) -> PreparedDocument:
        """What the firewall withholds of ``name`` now: from a prepared form carrying the current
        stamp, else judged from the stored documents (no prepared form needed for a tarball)."""
        stamp = await self._coordination.stamp(name)
        now = self._clock.seconds()
        for entry in self._cache.entries_of(name):
            if stamp is not None and entry.stamp == stamp and not entry.prepared.expired(now):
                return entry.prepared
        changes = self._cache.changes(name)
        known = self._withheld.get(name)
        if known is not None and stamp is not None and known[:2] == (stamp, changes) and not known[2].expired(now):
            self._withheld.move_to_end(name)
            return known[2]
        found, lasting = await self._withheld_now(name)
        if lasting:
            self._withheld[name] = (stamp, changes, found)
            while len(self._withheld) > MAX_WITHHELD:
                self._withheld.popitem(last=False)
        return found

    async def _withheld_now(self, name: str) -> tuple[PreparedDocument, bool]:
        """Judged from the store (and whether to keep it): a package with no blocks and no
        quarantine costs one small read, no document."""
        assert self.firewall is not None
        blocks = await self.firewall.blocks.of(name)
        quarantined = self.firewall.min_age(name) is not None
        if not blocks and not quarantined:
            return _NONE_WITHHELD, True
        try:
            loaded = await self._load(name)
        except (NotFound, UpstreamUnavailable):
            # No document, no time: under quarantine nothing of it may pass; asked again next time.
            return (_ALL_YOUNG if quarantined else _NONE_WITHHELD), False
        verdict = await self.firewall.judge(name, loaded[0], loaded[4], blocks)
        return PreparedDocument(_NOTHING, _NOTHING, "", verdict.hidden, verdict.files, verdict.expires,
                                verdict.strict), True

    async def _judge(self, name: str, loaded: Loaded) -> Verdict:
        if self.firewall is None:
            return Verdict(loaded[0])
        return await self.firewall.judge(name, loaded[0], loaded[4])

    async def _load_prepared(self, name: str, base_url: str, stamp: str | None) -> tuple[PreparedDocument, str]:
        """Load ``name`` by the offline-first policy, prepare it, keep it in memory and share it."""
        with self._cache.loading(name) as ticket:
            loaded = await self._load(name)
            _, entry_origin, meta, status, _ = loaded
            if status in (Action.FETCH.value, Action.REVALIDATE.value):
                # Forms prepared for other base URLs may hold the older document.
                self._cache.invalidate(name, keep=ticket)
            verdict = await self._judge(name, loaded)
            prepared = prepare(verdict.document, base_url, verdict.hidden, verdict.files, verdict.expires,
                               verdict.strict)
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
        if cached is not None and cached.prepared.expired(self._clock.seconds()):
            cached = None  # a version left quarantine: prepared again, with it
        if stamp is None:
            if cached is None or cached.stamp is not None or cached.loaded_at is None:
                return None
            return cached if self._clock.seconds() - cached.loaded_at < DEGRADED_FRESHNESS else None
        if cached is not None and cached.stamp == stamp:
            return cached
        with self._cache.loading(name) as ticket:
            shared = await self._coordination.shared_document(name, base_url, stamp)
            if shared is not None and shared.prepared.expired(self._clock.seconds()):
                shared = None
            if shared is not None:
                self._cache.put(name, base_url, shared, ticket)
        return shared

    async def _load(self, name: str) -> Loaded:
        """(document, origin, mirror meta, cache status) from storage and the upstream."""
        local = await self._registry.document(name)
        merging = name in self._settings.current.merge_upstream
        upstream = self._upstreams.for_name(name)
        if local is not None and (not merging or upstream is None):
            return local, "local", None, "LOCAL", None
        if upstream is None:
            raise NotFound(f"package not found: {name}")
        try:
            mirrored, meta, status = await self._documents.by_policy(name, upstream)
        except (NotFound, UpstreamUnavailable):
            if local is not None:
                return local, "local", None, "LOCAL", None
            raise
        if local is not None:
            return (packument.merge_documents(local, mirrored), "merged", meta, status,
                    frozenset(local.get("versions", {})))
        return mirrored, "upstream", meta, status, frozenset()


_NOTHING = PreparedBody(b"", b"", "")
_NONE_WITHHELD = PreparedDocument(_NOTHING, _NOTHING, "")
_ALL_YOUNG = PreparedDocument(_NOTHING, _NOTHING, "", strict=True)


def refuse(withheld: Hidden) -> None:
    """Answer a request for a withheld version: blocked 451, quarantined 404, each saying why."""
    error = VersionBlocked if withheld.kind == BLOCKED else VersionQuarantined
    raise error(withheld.reason, withheld.to_json())
