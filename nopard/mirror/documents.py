"""Mirrored documents: nopard's stored copies of upstream documents, kept by the offline-first table.

Read (``mirrored_document``, ``mirrored_meta``), revalidated with a
conditional GET when stale, fetched when missing, validated and stored (the
document before its meta, so a crash leaves at worst a document without meta).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.cluster.coordination import InProcessCoordination
from nopard.cluster.link import within
from nopard.domain import changes
from nopard.domain.errors import NotFound, UpstreamBadContent, UpstreamUnavailable
from nopard.domain.prepared import CachedDocument, PreparedCache
from nopard.mirror.policy import SILENT_ENOUGH, TRUST_WINDOW, Action, decide
from nopard.mirror.writeback import Write, WriteBehind
from nopard.ops.singleflight import SingleFlight
from nopard.settings.acl import not_forwarded, unreachable
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys
from nopard.upstream.client import Upstream

Mirrored = tuple[dict[str, Any], "MirrorMeta"]

# Names the upstream said it does not have, remembered (for NOPARD_NOT_FOUND_TTL) at most this many.
NOT_FOUND_MEMORY = 10_000


@dataclass(frozen=True)
class MirrorMeta:
    """What nopard knows of its copy of an upstream document."""

    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None


class Coordination(Protocol):
    """What the mirror shares with other instances (nopard.cluster: Redis, or this process alone)."""

    async def stamp(self, name: str) -> str | None:
        """The current change stamp of ``name``; None while the shared store is unreachable."""

    async def bump(self, name: str) -> str | None:
        """Tell every instance that ``name`` changed."""

    async def shared_document(self, name: str, base_url: str, stamp: str) -> CachedDocument | None:
        """A prepared document another instance shared for ``stamp``, or None."""

    def share_document(self, name: str, base_url: str, entry: CachedDocument) -> None:
        """Offer a prepared document to the other instances."""

    def lock(self, key: str, wait: float = 60.0) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` against every instance (at most ``wait`` seconds to get it)."""


class ChangeRecorder(Protocol):
    """The changes feed nopard serves (nopard.catalog.changes.ChangeLog)."""

    async def record(self, name: str, kind: str, rev: str | None = None, deleted: bool = False) -> int | None:
        """Append a change of ``name``."""


def servable(document: dict[str, Any]) -> dict[str, Any]:
    """An upstream document without the parts no client could use and nopard could not serve.

    Versions whose manifest is not an object, a ``time`` or ``dist-tags`` that
    is not an object (and entries of them that are not strings) are dropped,
    so one malformed field costs that field, never the whole package (a 500).
    """
    kept = dict(document)
    kept["versions"] = {v: m for v, m in document["versions"].items() if isinstance(m, dict)}
    for field in ("time", "dist-tags"):
        if field in document:
            value = document[field]
            kept[field] = {k: t for k, t in value.items() if isinstance(t, str)} if isinstance(value, dict) else {}
    return kept


class MirroredDocuments:
    """nopard's copies of upstream documents, and keeping them by the offline-first table."""

    def __init__(
        self, settings: LiveSettings, storage: Storage, cache: PreparedCache, clock: IReactorTime, log: Logger,
        coordination: Coordination | None = None, revalidation_slots: int = 8, *, writes: WriteBehind,
    ) -> None:
        self._settings = settings
        self._storage = storage
        # Fetched copies may wait to be written (mirror/writeback.py); reads here see them.
        self._writes = writes
        self._cache = cache
        self._clock = clock
        self._log = log
        self._coordination: Coordination = coordination or InProcessCoordination()
        self._not_found: OrderedDict[str, float] = OrderedDict()
        self._flights: SingleFlight[Mirrored] = SingleFlight()
        self._free_slots = revalidation_slots
        self._background: set[Upstream] = set()
        # Per upstream: revalidations in flight, and its answer count when the last of them began.
        self._probes: dict[Upstream, tuple[int, int]] = {}
        self.changes: ChangeRecorder | None = None  # the changes feed a stored new copy is recorded in

    async def mirrored_meta(self, name: str) -> MirrorMeta | None:
        """When nopard last confirmed its copy of ``name``'s upstream document, or None: no copy."""
        key = keys.upstream_meta_key(name)
        raw = self._writes.bytes_of(key) or await self._storage.read(key)
        return MirrorMeta(**orjson.loads(raw)) if raw else None

    async def mirrored_document(self, name: str) -> dict[str, Any] | None:
        """nopard's copy of ``name``'s upstream document (as sent, less ``servable``'s drops), or None."""
        key = keys.upstream_document_key(name)
        raw = self._writes.bytes_of(key) or await self._storage.read(key)
        return orjson.loads(raw) if raw else None

    async def mirrored_names(self) -> list[str]:
        """Every package nopard holds an upstream document of (stored, or waiting to be)."""
        stored = keys.names_of(await self._storage.list(keys.PACKAGES), keys.MIRRORED_META)
        waiting = keys.names_of(self._writes.keys(), keys.MIRRORED_META)
        return sorted(set(stored).union(waiting)) if waiting else stored

    async def by_policy(self, name: str, upstream: Upstream) -> tuple[dict[str, Any], MirrorMeta, str]:
        """The upstream document of ``name`` by the offline-first table, and how it was served."""
        meta = await self.mirrored_meta(name)
        now = self._clock.seconds()
        down = probing = upstream.breaker.down
        if meta is None and down and upstream.breaker.probe_free:
            # Nothing to serve instead: this request is the probe now, not when the probe timer
            # fires, so a user whose network just came back gets the package.
            down = False
        action = decide(meta.fetched_at if meta else None, now, self._ttl(), down)
        if action is Action.FETCH and not self._settings.current.auto_forward:
            raise NotFound(not_forwarded(name))
        if action is Action.FAIL_FAST:
            raise NotFound(unreachable(name))
        if action is Action.FETCH:
            self._check_not_found(name, now)
            document, meta = await self._fetch_missing(name, upstream, probing)
            return document, meta, action.value
        assert meta is not None  # decide() fetches or fails when nothing is cached
        if action is Action.REVALIDATE:
            revalidated = await self._revalidate(name, upstream, meta)
            if revalidated is not None:
                return revalidated[0], revalidated[1], action.value
            action = Action.SERVE_STALE
        stored = await self.mirrored_document(name)
        if stored is None:  # meta without document: a crash between two writes
            await self._storage.delete(keys.upstream_meta_key(name))
            return await self.by_policy(name, upstream)
        return stored, meta, action.value

    async def refresh(self, name: str, upstream: Upstream) -> bool:
        """Revalidate ``name`` with the upstream now (full timeout); True if it changed.

        Fetches the document when nopard has none yet. Raises UpstreamUnavailable
        or NotFound like a client request would.
        """
        meta = await self.mirrored_meta(name)
        if meta is None:
            await self._flights.run(name, lambda: self._fetch(name, upstream))
            changed = True
        else:
            timeout = self._settings.current.upstream_timeout
            _, fresh = await self._flights.run(name, lambda: self._conditional(name, upstream, meta, timeout))
            changed = fresh.etag != meta.etag or fresh.etag is None
        if changed:
            self._cache.invalidate(name)
        return changed

    async def refetch(self, name: str, upstream: Upstream, for_client: bool = False) -> dict[str, Any]:
        """Fetch ``name`` again whatever is stored (a tarball's version is missing from the copy);
        ``for_client``: a client waits on it (see ``_fetch``)."""
        document, _meta = await self._flights.run(
            name, lambda: self._fetch(name, upstream, reuse_fresh=False, for_client=for_client))
        self._cache.invalidate(name)
        return document

    def _ttl(self) -> float:
        return self._settings.current.meta_ttl

    async def _fetch_missing(self, name: str, upstream: Upstream, probing: bool = False) -> Mirrored:
        """Fetch a document nopard does not have.

        A trusted upstream (answered lately, no failure since) gets
        NOPARD_UPSTREAM_TIMEOUT, and a failure is a 503 (clients retry).
        Otherwise the client waits only NOPARD_STALE_DEADLINE and then gets a
        404, so an install that can do without the package (an optional one)
        goes on instead of retrying for a minute; the fetch itself goes on in
        the background and stores the document if the upstream answers late.
        ``probing``: the upstream counted as down and this request is its probe; a
        failed probe is told exactly what a hidden name is told while the upstream
        is down (acl.missing_answer), so the two cannot be told apart.
        """
        fetching = Deferred.fromCoroutine(
            self._flights.run(name, lambda: self._fetch(name, upstream, urgent=True, for_client=True)))
        if upstream.breaker.trusted(TRUST_WINDOW):
            return await fetching
        # Already silent on another request for a while: no point waiting on this one too.
        patience = 0.0 if upstream.silent_for() > SILENT_ENOUGH else self._settings.current.stale_deadline
        try:
            fetched: Mirrored = await within(fetching, patience, self._clock)
            return fetched
        except (UpstreamUnavailable, TimeoutError) as error:
            if probing:
                raise NotFound(unreachable(name)) from None
            reason = getattr(error, "message", "no answer in time")
            raise NotFound(f"{unreachable(name)} ({reason})") from None

    async def _fetch(
        self, name: str, upstream: Upstream, timeout: float | None = None, reuse_fresh: bool = True,
        urgent: bool = False, for_client: bool = False,
    ) -> Mirrored:
        """Fetch ``name``'s document; ``reuse_fresh``: a fresh stored copy will do instead;
        ``urgent``: nopard has none to serve (it may be the breaker's probe at once);
        ``for_client``: a client waits on it, so the copy may be written after the answer
        (mirror/writeback.py), where the sync jobs' copies are stored before they count as done."""
        async with self._coordination.lock("doc:" + name, wait=self._settings.current.upstream_timeout):
            # Another instance may have fetched it while this one waited for the lock.
            stored = await self._fresh_copy(name, since=None) if reuse_fresh else None
            if stored is not None:
                return stored
            fetched = await upstream.document(name, timeout=timeout, urgent=urgent)
            if fetched.status == 404:
                self._remember_not_found(name)
                raise NotFound(f"package not found: {name}")
            return await self._store(name, fetched.body, fetched.etag, fetched.last_modified, later=for_client)

    async def _fresh_copy(self, name: str, since: float | None) -> Mirrored | None:
        """The stored document if it was confirmed within the TTL (and after ``since``), else None."""
        meta = await self.mirrored_meta(name)
        if meta is None or (since is not None and meta.fetched_at <= since):
            return None
        if decide(meta.fetched_at, self._clock.seconds(), self._ttl(), False) is not Action.SERVE:
            return None
        document = await self.mirrored_document(name)
        return (document, meta) if document is not None else None

    async def _revalidate(self, name: str, upstream: Upstream, meta: MirrorMeta) -> Mirrored | None:
        """A conditional GET within the stale deadline; None means 'serve stale'.

        While the upstream's health is unknown (a request waits on it and
        nothing was answered since), that request is the probe and this copy
        is served stale at once, with no request of its own: a wave of stale
        documents costs a silent upstream one request, not one each. A client
        waits on a revalidation only while the upstream is trusted (it
        answered lately and has not failed since). Otherwise the stale copy is
        served at once and one revalidation at a time runs in the background:
        when the upstream has just gone silent, an install waits on it at most once.
        """
        if upstream.unanswered() or self._health_unknown(upstream):
            return None
        if not upstream.breaker.trusted(TRUST_WINDOW):
            self._revalidate_in_background(name, upstream, meta)
            return None
        return await self._revalidate_waiting(name, upstream, meta)

    def _health_unknown(self, upstream: Upstream) -> bool:
        """Whether a revalidation of this process is under way and the upstream answered nothing since
        it began (its request may not be sent yet: the store is read first)."""
        in_flight, answers = self._probes.get(upstream, (0, -1))
        return in_flight > 0 and answers == upstream.answers

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

    async def _revalidate_waiting(self, name: str, upstream: Upstream, meta: MirrorMeta) -> Mirrored | None:
        """The conditional GET itself; only a few wait at once, the rest serve stale."""
        if self._free_slots <= 0:
            return None
        self._free_slots -= 1
        in_flight, _ = self._probes.get(upstream, (0, 0))
        self._probes[upstream] = (in_flight + 1, upstream.answers)
        try:
            return await self._flights.run(name, lambda: self._conditional(name, upstream, meta))
        except (UpstreamUnavailable, UpstreamBadContent, NotFound) as error:
            self._log.info("serving {name} stale: {reason}", name=name, reason=str(error), event="stale")
            return None
        finally:
            self._free_slots += 1
            in_flight, answers = self._probes[upstream]
            if in_flight > 1:
                self._probes[upstream] = (in_flight - 1, answers)
            else:
                del self._probes[upstream]

    async def _conditional(
        self, name: str, upstream: Upstream, meta: MirrorMeta, timeout: float | None = None
    ) -> Mirrored:
        deadline = timeout or self._settings.current.stale_deadline
        async with self._coordination.lock("doc:" + name, wait=deadline):
            stored = await self._fresh_copy(name, since=meta.fetched_at)
            if stored is not None:  # revalidated by another instance meanwhile
                return stored
            return await self._conditional_locked(name, upstream, meta, deadline)

    async def _conditional_locked(self, name: str, upstream: Upstream, meta: MirrorMeta, deadline: float) -> Mirrored:
        fetched = await upstream.document(name, meta.etag, timeout=deadline)
        if fetched.status == 304:
            fresh = MirrorMeta(self._clock.seconds(), meta.etag, meta.last_modified)
            await self._writes.store(name, [(keys.upstream_meta_key(name), orjson.dumps(asdict(fresh)))])
            self._cache.touch(name, fresh.fetched_at, fresh.etag)
            document = await self.mirrored_document(name)
            if document is None:
                raise NotFound(f"{name}: mirrored document missing")
            return document, fresh
        if fetched.status == 404:
            raise NotFound(f"{name} is gone upstream")
        return await self._store(name, fetched.body, fetched.etag, fetched.last_modified)

    async def _store(self, name: str, body: bytes | None, etag: str | None, last_modified: str | None,
                     later: bool = False) -> Mirrored:
        """Validate and store an upstream document, then its meta (the document first), then tell the
        other instances and the changes feed; ``later``: perhaps after the answer (WriteBehind)."""
        try:
            document = orjson.loads(body or b"")
        except orjson.JSONDecodeError:
            raise UpstreamBadContent(f"the upstream sent invalid JSON for {name}") from None
        if (not isinstance(document, dict) or document.get("name") != name
                or not isinstance(document.get("versions"), dict)):
            raise UpstreamBadContent(f"the upstream sent a document that is not {name}'s")
        document = servable(document)
        meta = MirrorMeta(self._clock.seconds(), etag, last_modified)

        async def announce() -> None:
            await self._coordination.bump(name)
            if self.changes is not None:
                await self.changes.record(name, changes.REFRESH, etag)

        writes: list[Write] = [
            (keys.upstream_document_key(name), orjson.dumps(document)),
            (keys.upstream_meta_key(name), orjson.dumps(asdict(meta))),
        ]
        await self._writes.store(name, writes, announce, later=later)
        return document, meta

    def _check_not_found(self, name: str, now: float) -> None:
        expires = self._not_found.get(name)
        if expires is not None:
            if now < expires:
                raise NotFound(f"package not found: {name}")
            del self._not_found[name]

    def _remember_not_found(self, name: str) -> None:
        self._not_found[name] = self._clock.seconds() + self._settings.current.not_found_ttl
        self._not_found.move_to_end(name)
        while len(self._not_found) > NOT_FOUND_MEMORY:
            self._not_found.popitem(last=False)
