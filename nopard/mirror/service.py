"""The offline-first policy: what to serve for a package name or tarball, and
when to ask the upstream.

| cached document | upstream healthy              | upstream down (breaker open) |
|-----------------|-------------------------------|------------------------------|
| fresh           | HIT: serve, no upstream call  | HIT                          |
| stale           | revalidate within a deadline; | STALE: serve at once         |
|                 | on failure serve STALE        |                              |
| missing         | MISS: fetch, store, serve     | fail fast (404), no wait     |

``decide`` is that table as a pure function of the clock; ``Mirror`` carries
it out against storage, the prepared cache and the upstreams.
"""

from __future__ import annotations

import enum
import os
import tempfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.domain import names
from nopard.domain import packument
from nopard.domain.prepared import CachedDocument, PreparedCache, PreparedDocument, prepare
from nopard.settings.config import LiveSettings
from nopard.cluster.coordination import DEGRADED_FRESHNESS, InProcessCoordination
from nopard.cluster.link import within
from nopard.domain.errors import NotFound, UpstreamBadContent, UpstreamUnavailable
from nopard.domain.integrity import Digests
from nopard.domain.times import iso_time
from nopard.local.packages import Registry
from nopard.ops.singleflight import SingleFlight
from nopard.storage import Blob, Storage, keys
from nopard.upstream.client import Upstream


# Seconds since the upstream's last answer during which clients wait on a revalidation.
TRUST_WINDOW = 60.0
# Seconds a request may go unanswered before an untrusted upstream counts as silent.
SILENT_ENOUGH = 0.5


class Action(enum.Enum):
    """What to do for a mirrored document."""

    SERVE = "HIT"
    REVALIDATE = "REVALIDATED"
    SERVE_STALE = "STALE"
    FETCH = "MISS"
    FAIL_FAST = "FAIL"


def decide(fetched_at: float | None, now: float, ttl: float, upstream_down: bool) -> Action:
    """The offline-first table: ``fetched_at`` is None when nothing is cached."""
    if fetched_at is None:
        return Action.FAIL_FAST if upstream_down else Action.FETCH
    if now - fetched_at < ttl:
        return Action.SERVE
    return Action.SERVE_STALE if upstream_down else Action.REVALIDATE


@dataclass(frozen=True)
class MirrorMeta:
    """What nopard knows of its copy of an upstream document."""

    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None


class Upstreams:
    """Which upstream serves a name: a scope's own, the forwarder, or none (private)."""

    def __init__(self, settings: LiveSettings, make: Callable[[str, str | None], Upstream]) -> None:
        current = settings.current
        self._settings = settings
        self._make = make
        self._default: Upstream | None = None
        self._default_url = ""
        self.scoped = {
            scope: make(url, current.scope_tokens.get(scope))
            for scope, url in current.scope_upstreams.items()
        }

    @property
    def default(self) -> Upstream | None:
        """The forwarder (NOPARD_FORWARDER_URL), or None; rebuilt when the URL changes at runtime."""
        url = self._settings.current.forwarder_url
        if url != self._default_url:
            # A new Upstream: the old one's breaker and counters describe another registry.
            self._default = self._make(url, None) if url else None
            self._default_url = url
        return self._default

    def for_name(self, name: str) -> Upstream | None:
        """The upstream of ``name``, or None when it must never leave nopard."""
        scope = name.split("/", 1)[0] if name.startswith("@") else None
        if scope in self._settings.current.private_scopes:
            return None
        return self.scoped.get(scope, self.default) if scope else self.default

    def all(self) -> list[Upstream]:
        """Every upstream configured."""
        return [u for u in [self.default, *self.scoped.values()] if u is not None]


class Mirror:
    """Serves documents and tarballs: local ones, else mirrored ones by the offline-first policy."""

    def __init__(
        self,
        settings: LiveSettings,
        storage: Storage,
        registry: Registry,
        upstreams: Upstreams,
        cache: PreparedCache,
        clock: IReactorTime,
        spool_dir: str,
        log: Logger,
        revalidation_slots: int = 8,
        coordination: Any = None,
    ) -> None:
        self._settings = settings
        self._coordination = coordination or InProcessCoordination()
        self._storage = storage
        self._registry = registry
        self.upstreams = upstreams
        self._cache = cache
        self._clock = clock
        self._spool_dir = spool_dir
        self._log = log
        self._not_found: OrderedDict[str, float] = OrderedDict()
        self._documents: SingleFlight[Any] = SingleFlight()
        self._tarballs: SingleFlight[Any] = SingleFlight()
        self._prepared: SingleFlight[Any] = SingleFlight()
        self._free_slots = revalidation_slots
        self._background: set[Upstream] = set()

    # Documents ------------------------------------------------------------

    async def packument(self, name: str, base_url: str) -> tuple[PreparedDocument, str]:
        """The document of ``name`` prepared for ``base_url``, and how it was served."""
        stamp = await self._coordination.stamp(name)
        cached = await self._cached(name, base_url, stamp)
        if cached is not None:
            if cached.origin == "local":
                return cached.prepared, "LOCAL"
            upstream = self.upstreams.for_name(name)
            down = upstream is None or upstream.breaker.down
            if decide(cached.fetched_at, self._clock.seconds(), self._ttl(), down) is Action.SERVE:
                return cached.prepared, Action.SERVE.value
        # Concurrent misses share one load: preparing a big document is CPU on the reactor.
        key = f"{name}\0{base_url}\0{stamp}\0{self._cache.changes(name)}"
        return await self._prepared.run(key, lambda: self._load_prepared(name, base_url, stamp))

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
        if stamp is None:
            cached = self._cache.get(name, base_url)
            if cached is None or cached.stamp is not None or cached.loaded_at is None:
                return None
            return cached if self._clock.seconds() - cached.loaded_at < DEGRADED_FRESHNESS else None
        cached = self._cache.get(name, base_url)
        if cached is not None and cached.stamp == stamp:
            return cached
        with self._cache.loading(name) as ticket:
            shared = await self._coordination.shared_document(name, base_url, stamp)
            if shared is not None:
                self._cache.put(name, base_url, shared, ticket)
        return shared

    async def document(self, name: str, base_url: str) -> dict[str, Any]:
        """The document of ``name`` as served (for the version route)."""
        prepared, _ = await self.packument(name, base_url)
        return orjson.loads(prepared.full.identity)

    def _ttl(self) -> float:
        return self._settings.current.meta_ttl

    async def _load(self, name: str) -> tuple[dict[str, Any], str, MirrorMeta | None, str]:
        """(document, origin, mirror meta, cache status) from storage and the upstream."""
        local = await self._registry.document(name)
        merging = name in self._settings.current.merge_upstream
        upstream = self.upstreams.for_name(name)
        if local is not None and (not merging or upstream is None):
            return local, "local", None, "LOCAL"
        if upstream is None:
            raise NotFound(f"package not found: {name}")
        try:
            mirrored, meta, status = await self._mirrored(name, upstream)
        except (NotFound, UpstreamUnavailable):
            if local is not None:
                return local, "local", None, "LOCAL"
            raise
        if local is not None:
            return packument.merge_documents(local, mirrored), "merged", meta, status
        return mirrored, "upstream", meta, status

    async def _mirrored(self, name: str, upstream: Upstream) -> tuple[dict[str, Any], MirrorMeta, str]:
        """The upstream document of ``name`` by the offline-first table."""
        meta = await self._read_meta(name)
        now = self._clock.seconds()
        action = decide(meta.fetched_at if meta else None, now, self._ttl(), upstream.breaker.down)
        if action is Action.FETCH and not self._settings.current.auto_forward:
            raise NotFound(f"package not found: {name} (NOPARD_AUTO_FORWARD is off)")
        if action is Action.FAIL_FAST:
            raise NotFound(f"{name} is not cached here and the upstream is unreachable")
        if action is Action.FETCH:
            self._check_not_found(name, now)
            document, meta = await self._fetch_missing(name, upstream)
            return document, meta, action.value
        assert meta is not None  # decide() fetches (or fails) when nothing was fetched before
        if action is Action.REVALIDATE:
            revalidated = await self._revalidate(name, upstream, meta)
            if revalidated is not None:
                return revalidated[0], revalidated[1], action.value
            action = Action.SERVE_STALE
        stored = await self._read_document(name)
        if stored is None:  # meta without document: a crash between two writes
            return await self._mirrored_again(name, upstream)
        return stored, meta, action.value

    async def _mirrored_again(self, name: str, upstream: Upstream) -> tuple[dict[str, Any], MirrorMeta, str]:
        await self._storage.delete(keys.upstream_meta_key(name))
        return await self._mirrored(name, upstream)

    async def _fetch_missing(self, name: str, upstream: Upstream) -> tuple[dict[str, Any], MirrorMeta]:
        """Fetch a document nopard does not have.

        A trusted upstream (answered lately, no failure since) gets
        NOPARD_UPSTREAM_TIMEOUT, and a failure is a 503 (clients retry).
        Otherwise the client waits only NOPARD_STALE_DEADLINE and then gets a
        404, so an install that can do without the package (an optional one)
        goes on instead of retrying for a minute; the fetch itself goes on in
        the background and stores the document if the upstream answers late.
        """
        fetching = Deferred.fromCoroutine(self._documents.run(name, lambda: self._fetch(name, upstream)))
        if upstream.breaker.trusted(TRUST_WINDOW):
            return await fetching
        # Already silent on another request for a while: no point waiting on this one too.
        patience = 0.0 if upstream.silent_for() > SILENT_ENOUGH else self._settings.current.stale_deadline
        try:
            return await within(fetching, patience, self._clock)
        except (UpstreamUnavailable, TimeoutError) as error:
            reason = getattr(error, "message", "no answer in time")
            raise NotFound(f"{name} is not cached here and the upstream is unreachable ({reason})") from None

    async def _fetch(
        self, name: str, upstream: Upstream, timeout: float | None = None, reuse_fresh: bool = True
    ) -> tuple[dict[str, Any], MirrorMeta]:
        """Fetch ``name``'s document; ``reuse_fresh``: a fresh stored copy will do instead."""
        async with self._coordination.lock("doc:" + name, wait=self._settings.current.upstream_timeout):
            # Another instance may have fetched it while this one waited for the lock.
            stored = await self._fresh_copy(name, since=None) if reuse_fresh else None
            if stored is not None:
                return stored
            return await self._fetch_locked(name, upstream, timeout)

    async def _fresh_copy(self, name: str, since: float | None) -> tuple[dict[str, Any], MirrorMeta] | None:
        """The stored document if it was confirmed within the TTL (and after ``since``), else None."""
        meta = await self._read_meta(name)
        if meta is None or (since is not None and meta.fetched_at <= since):
            return None
        if decide(meta.fetched_at, self._clock.seconds(), self._ttl(), False) is not Action.SERVE:
            return None
        document = await self._read_document(name)
        return (document, meta) if document is not None else None

    async def _fetch_locked(
        self, name: str, upstream: Upstream, timeout: float | None = None
    ) -> tuple[dict[str, Any], MirrorMeta]:
        fetched = await upstream.document(name, timeout=timeout)
        if fetched.status == 404:
            self._remember_not_found(name)
            raise NotFound(f"package not found: {name}")
        return await self._store(name, fetched.body, fetched.etag, fetched.last_modified)

    async def _revalidate(
        self, name: str, upstream: Upstream, meta: MirrorMeta
    ) -> tuple[dict[str, Any], MirrorMeta] | None:
        """A conditional GET within the stale deadline; None means 'serve stale'.

        A client waits on it only while the upstream is trusted (it answered
        lately and has not failed since). Otherwise the stale copy is served at
        once and one revalidation at a time runs in the background: when the
        upstream has just gone silent, an install waits on it at most once.
        """
        if not upstream.breaker.trusted(TRUST_WINDOW):
            self._revalidate_in_background(name, upstream, meta)
            return None
        return await self._revalidate_waiting(name, upstream, meta)

    def _revalidate_in_background(self, name: str, upstream: Upstream, meta: MirrorMeta) -> None:
        if upstream in self._background:
            return
        self._background.add(upstream)

        async def revalidate() -> None:
            try:
                if await self._revalidate_waiting(name, upstream, meta) is not None:
                    self._cache.invalidate(name)
            finally:
                self._background.discard(upstream)

        Deferred.fromCoroutine(revalidate())

    async def _revalidate_waiting(
        self, name: str, upstream: Upstream, meta: MirrorMeta
    ) -> tuple[dict[str, Any], MirrorMeta] | None:
        """The conditional GET itself; only a few wait at once, the rest serve stale."""
        if self._free_slots <= 0:
            return None
        self._free_slots -= 1
        try:
            return await self._documents.run(name, lambda: self._conditional(name, upstream, meta))
        except (UpstreamUnavailable, UpstreamBadContent, NotFound) as error:
            self._log.info("serving {name} stale: {reason}", name=name, reason=str(error), event="stale")
            return None
        finally:
            self._free_slots += 1

    async def _conditional(
        self, name: str, upstream: Upstream, meta: MirrorMeta, timeout: float | None = None
    ) -> tuple[dict[str, Any], MirrorMeta]:
        deadline = timeout or self._settings.current.stale_deadline
        async with self._coordination.lock("doc:" + name, wait=deadline):
            stored = await self._fresh_copy(name, since=meta.fetched_at)
            if stored is not None:  # revalidated by another instance meanwhile
                return stored
            return await self._conditional_locked(name, upstream, meta, deadline)

    async def _conditional_locked(
        self, name: str, upstream: Upstream, meta: MirrorMeta, deadline: float
    ) -> tuple[dict[str, Any], MirrorMeta]:
        fetched = await upstream.document(name, meta.etag, timeout=deadline)
        if fetched.status == 304:
            fresh = MirrorMeta(self._clock.seconds(), meta.etag, meta.last_modified)
            await self._storage.write(keys.upstream_meta_key(name), orjson.dumps(asdict(fresh)))
            self._cache.touch(name, fresh.fetched_at, fresh.etag)
            document = await self._read_document(name)
            if document is None:
                raise NotFound(f"{name}: mirrored document missing")
            return document, fresh
        if fetched.status == 404:
            raise NotFound(f"{name} is gone upstream")
        return await self._store(name, fetched.body, fetched.etag, fetched.last_modified)

    async def _store(
        self, name: str, body: bytes | None, etag: str | None, last_modified: str | None
    ) -> tuple[dict[str, Any], MirrorMeta]:
        """Validate and store an upstream document, then its meta (the document first)."""
        try:
            document = orjson.loads(body or b"")
        except orjson.JSONDecodeError:
            raise UpstreamBadContent(f"the upstream sent invalid JSON for {name}") from None
        if (not isinstance(document, dict) or document.get("name") != name
                or not isinstance(document.get("versions"), dict)):
            raise UpstreamBadContent(f"the upstream sent a document that is not {name}'s")
        meta = MirrorMeta(self._clock.seconds(), etag, last_modified)
        await self._storage.write(keys.upstream_document_key(name), orjson.dumps(document))
        await self._storage.write(keys.upstream_meta_key(name), orjson.dumps(asdict(meta)))
        await self._coordination.bump(name)
        return document, meta

    async def _read_meta(self, name: str) -> MirrorMeta | None:
        raw = await self._storage.read(keys.upstream_meta_key(name))
        return MirrorMeta(**orjson.loads(raw)) if raw else None

    async def _read_document(self, name: str) -> dict[str, Any] | None:
        raw = await self._storage.read(keys.upstream_document_key(name))
        return orjson.loads(raw) if raw else None

    def _check_not_found(self, name: str, now: float) -> None:
        expires = self._not_found.get(name)
        if expires is not None:
            if now < expires:
                raise NotFound(f"package not found: {name}")
            del self._not_found[name]

    def _remember_not_found(self, name: str) -> None:
        self._not_found[name] = self._clock.seconds() + self._settings.current.not_found_ttl
        self._not_found.move_to_end(name)
        while len(self._not_found) > 10_000:
            self._not_found.popitem(last=False)

    # Tarballs -------------------------------------------------------------

    async def tarball(self, name: str, filename: str) -> tuple[Blob, str]:
        """The tarball ``filename`` of ``name``, and how it was served."""
        key = keys.tarball_key(name, filename)
        local = await self._storage.open(key)
        if local is not None:
            return local, "LOCAL"
        upstream = self.upstreams.for_name(name)
        merging = name in self._settings.current.merge_upstream
        if upstream is None or (not merging and await self._registry.document(name) is not None):
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        mirrored_key = keys.upstream_tarball_key(name, filename)
        blob = await self._storage.open(mirrored_key)
        if blob is not None:
            return blob, Action.SERVE.value
        if upstream.breaker.down:
            raise NotFound(f"{name}/-/{filename} is not cached here and the upstream is unreachable")
        await self._tarballs.run(mirrored_key, lambda: self._fetch_tarball(name, filename, upstream))
        blob = await self._storage.open(mirrored_key)
        if blob is None:
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        return blob, Action.FETCH.value

    async def _fetch_tarball(self, name: str, filename: str, upstream: Upstream) -> int:
        """Fetch, verify and store a tarball; one instance at a time fetches a given one."""
        key = keys.upstream_tarball_key(name, filename)
        async with self._coordination.lock("tarball:" + key, wait=self._settings.current.upstream_timeout):
            if await self._storage.exists(key):  # fetched by another instance while this one waited
                return 0
            return await self._fetch_tarball_locked(name, filename, upstream)

    async def _fetch_tarball_locked(self, name: str, filename: str, upstream: Upstream) -> int:
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
        document = await self._read_document(name)
        manifest = packument.find_version_by_file(document, filename) if document else None
        if manifest is None:
            document, _meta = await self._documents.run(name, lambda: self._fetch(name, upstream, reuse_fresh=False))
            self._cache.invalidate(name)
            manifest = packument.find_version_by_file(document, filename)
        if manifest is None:
            raise NotFound(f"tarball not found: {name}/-/{filename}")
        if not str((manifest.get("dist") or {}).get("tarball", "")).startswith(("http://", "https://")):
            raise UpstreamBadContent(f"the upstream gives no tarball URL for {name}/-/{filename}")
        return manifest

    def missing_answer(self, name: str, tarball: str | None = None) -> str | None:
        """What a name that does not exist would be told now, found without asking anyone.

        Used to hide packages a user may not read: when the upstream is down or
        auto-forwarding is off, a missing name gets a different message than
        plain "not found", and a hidden one must get the same. None: plain.
        """
        upstream = self.upstreams.for_name(name)
        if upstream is None:
            return None
        if upstream.breaker.down:
            what = f"{name}/-/{tarball}" if tarball else name
            return f"{what} is not cached here and the upstream is unreachable"
        if not self._settings.current.auto_forward and tarball is None:
            return f"package not found: {name} (NOPARD_AUTO_FORWARD is off)"
        return None

    # For the sync worker -------------------------------------------------

    async def mirrored_names(self) -> list[str]:
        """Every package nopard holds an upstream document of."""
        return keys.names_of(await self._storage.list(keys.PACKAGES), keys.MIRRORED_META)

    async def meta(self, name: str) -> MirrorMeta | None:
        """When nopard last confirmed its copy of ``name``'s upstream document."""
        return await self._read_meta(name)

    async def stored_document(self, name: str) -> dict[str, Any] | None:
        """nopard's copy of ``name``'s upstream document, as the upstream sent it."""
        return await self._read_document(name)

    async def refresh(self, name: str) -> bool:
        """Revalidate ``name`` with the upstream now (full timeout); True if it changed.

        Fetches the document when nopard has none yet. Raises UpstreamUnavailable
        or NotFound like a client request would.
        """
        upstream = self.upstreams.for_name(name)
        if upstream is None:
            raise NotFound(f"{name} is private: never sent upstream")
        meta = await self._read_meta(name)
        if meta is None:
            await self._documents.run(name, lambda: self._fetch(name, upstream))
            changed = True
        else:
            timeout = self._settings.current.upstream_timeout
            _, fresh = await self._documents.run(name, lambda: self._conditional(name, upstream, meta, timeout))
            changed = fresh.etag != meta.etag or fresh.etag is None
        if changed:
            self._cache.invalidate(name)
        return changed

    async def has_tarball(self, name: str, filename: str) -> bool:
        """Whether the upstream tarball ``filename`` of ``name`` is stored."""
        return await self._storage.exists(keys.upstream_tarball_key(name, filename))

    async def follows_upstream(self, name: str) -> bool:
        """Whether ``name`` is served from the upstream (not private, not shadowed by a local package)."""
        if self.upstreams.for_name(name) is None:
            return False
        if name in self._settings.current.merge_upstream:
            return True
        return await self._registry.document(name) is None

    async def ensure_tarball(self, name: str, filename: str) -> int:
        """Fetch and store an upstream tarball unless stored; the bytes fetched now (0: was there)."""
        upstream = self.upstreams.for_name(name)
        if upstream is None:
            raise NotFound(f"{name} is private: never sent upstream")
        key = keys.upstream_tarball_key(name, filename)
        if await self._storage.exists(key):
            return 0
        return await self._tarballs.run(key, lambda: self._fetch_tarball(name, filename, upstream))

    async def tarball_sizes(self, name: str, document: dict[str, Any]) -> dict[str, int | None]:
        """Version -> size of its tarball stored here (local or mirrored), None when it is only upstream."""
        stored = {**await self._storage.sizes(keys.upstream_tarballs_prefix(name)),
                  **await self._storage.sizes(keys.local_tarballs_prefix(name))}
        by_file = {keys.tarball_file_of(key): size for key, size in stored.items()}
        sizes: dict[str, int | None] = {}
        for version, manifest in (document.get("versions") or {}).items():
            dist = manifest.get("dist") if isinstance(manifest, dict) else None
            sizes[version] = by_file.get(packument.dist_tarball_file(dist) or "")
        return sizes

    def status(self) -> dict[str, Any]:
        """What an operator wants at a glance: upstream health and cache use."""
        coordination = self._coordination
        since = iso_time(coordination.since) if coordination.since is not None else None
        return {
            "cache": self._cache.stats(),
            "redis": {"state": coordination.state, "since": since},
            "upstreams": [
                {"url": u.base_url, "state": u.breaker.state, "consecutive_failures": u.breaker.failures,
                 "requests": u.requests_made, "down_since": u.breaker.opened_at}
                for u in self.upstreams.all()
            ],
        }

    # Audit ----------------------------------------------------------------

    async def forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """Forward an audit request to the default upstream; fails fast when it is down."""
        upstream = self.upstreams.default
        if upstream is None:
            raise NotFound("no upstream is configured for audits")
        return await upstream.forward("POST", path, body, headers)
