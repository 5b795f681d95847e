"""Stamps, and the prepared documents shared under them, through Redis.

A stamp is ``epoch.generation``: the generation is a counter per package
name, bumped by every change to its documents; the epoch is replaced
whenever Redis comes back after an outage (changes made meanwhile bumped
nothing). A prepared document is served from memory, or taken from another
instance's copy in Redis, only while it carries the current stamp, so a
publish through one instance shows on every other at once.

Every warm document or tarball request needs its package's stamp, so a stamp
read from Redis is kept in memory while the change feed (feed.py) is live:
every bump is announced on it after the counter moved, a new epoch is
announced as ``EPOCH_NEWS``, and the news drops the kept stamp (``changed``,
``reset``). A warm request then costs no round trip; without the feed every
stamp is asked of Redis, as before.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import orjson
from twisted.internet.defer import Deferred

from nopard.cluster.feed import CHANNEL
from nopard.cluster.link import RedisDown, RedisLink, key
from nopard.domain.firewall import Hidden
from nopard.domain.prepared import CachedDocument, PreparedBody, PreparedDocument

# Seconds prepared documents stay in Redis unused.
SHARED_DOCUMENT_TTL = 24 * 3600
BUMP_SCRIPT = "local g = redis.call('INCR', KEYS[2]) return {redis.call('GET', KEYS[1]), g}"
_EPOCH = key("epoch")
# Feed news that the epoch was replaced: every stamp kept anywhere is void.
EPOCH_NEWS = "-/epoch"
MAX_KEPT_STAMPS = 100_000  # packages whose stamp is kept in memory (LRU)


def _generation(name: str) -> bytes:
    return key("gen:" + name)


def bump_arguments(name: str) -> tuple[str, list[bytes]]:
    """The script and keys that bump ``name``'s stamp (Stamps.bump; nopard-admin's announcements)."""
    return BUMP_SCRIPT, [_EPOCH, _generation(name)]


def _new_epoch() -> bytes:
    return uuid.uuid4().hex.encode()


def encode_document(entry: CachedDocument) -> bytes:
    """A prepared document as one Redis value: a JSON header, then the four bodies."""
    prepared = entry.prepared
    bodies = [prepared.full.identity, prepared.full.gzipped, prepared.abbreviated.identity,
              prepared.abbreviated.gzipped]
    header = orjson.dumps({
        "stamp": entry.stamp, "origin": entry.origin, "fetched_at": entry.fetched_at, "etag": entry.etag,
        "last_modified": prepared.last_modified, "etags": [prepared.full.etag, prepared.abbreviated.etag],
        "sizes": [len(body) for body in bodies],
        "withheld": {version: dataclasses.asdict(hidden) for version, hidden in prepared.withheld.items()},
        "files": prepared.files, "expires": prepared.expires, "strict": prepared.strict,
    })
    return struct.pack(">I", len(header)) + header + b"".join(bodies)


def decode_document(value: bytes) -> CachedDocument:
    """The inverse of encode_document."""
    (length,) = struct.unpack(">I", value[:4])
    header = orjson.loads(value[4 : 4 + length])
    bodies, offset = [], 4 + length
    for size in header["sizes"]:
        bodies.append(value[offset : offset + size])
        offset += size
    if offset != len(value):
        raise ValueError("truncated shared document")
    full = PreparedBody(bodies[0], bodies[1], header["etags"][0])
    abbreviated = PreparedBody(bodies[2], bodies[3], header["etags"][1])
    withheld = {version: Hidden(**hidden) for version, hidden in header.get("withheld", {}).items()}
    return CachedDocument(
        PreparedDocument(full, abbreviated, header["last_modified"], withheld, header.get("files", {}),
                         header.get("expires"), header.get("strict", False)),
        header["origin"], header["fetched_at"], header["etag"], header["stamp"],
    )


class RedisStamps:
    """Stamps and shared prepared documents; None for a stamp while degraded (trust no cache).

    ``forget_memory``: drops every prepared document this process holds; run
    when Redis comes back, before it is used again.
    """

    def __init__(self, link: RedisLink, forget_memory: Callable[[], None]) -> None:
        self._link = link
        self._forget_memory = forget_memory
        self._dirty = False  # a bump was lost: the next recovery must replace the epoch
        link.recovery_hooks.append(self._recover)
        #: Whether news of every bump reaches this process now (the change feed is live): only
        #: then is a stamp read from Redis kept and answered from memory.
        self.news_arrives: Callable[[], bool] = lambda: False
        #: Announces a package's change (or EPOCH_NEWS) on the change feed; None: nothing to tell.
        self.announce: Callable[[str], Awaitable[None]] | None = None
        self._kept: OrderedDict[str, str] = OrderedDict()
        self._news = 0  # moves with every change heard: a stamp asked before one is not kept after it

    def changed(self, name: str) -> None:
        """News that ``name`` changed: its kept stamp is void (also one being read now)."""
        self._news += 1
        self._kept.pop(name, None)

    def heard(self, name: str) -> None:
        """News from the change feed: ``name`` changed, or (EPOCH_NEWS) every stamp did."""
        if name == EPOCH_NEWS:
            self.reset()
        else:
            self.changed(name)

    def reset(self) -> None:
        """News may have been missed, or the epoch changed: every kept stamp is void."""
        self._news += 1
        self._kept.clear()

    async def _recover(self, was_up: bool) -> None:
        """Before using Redis again: drop what memory holds, and make other instances drop theirs.

        Changes made while Redis was out of reach bumped no stamp, so the
        epoch every stamp starts with is replaced: no prepared document from
        before is served again, here or on any instance.
        """
        self._forget_memory()
        self.reset()
        if was_up or self._dirty:
            await self._link.attempt("set", _EPOCH, _new_epoch())
        else:
            await self._link.attempt("set", _EPOCH, _new_epoch(), None, None, True)
        self._dirty = False
        # Straight to Redis: the link is not up until the recovery hooks are done.
        await self._link.attempt("publish", CHANNEL, EPOCH_NEWS.encode())

    async def _tell(self, name: str) -> None:
        if self.announce is not None:
            await self.announce(name)

    async def stamp(self, name: str) -> str | None:
        """The current stamp of ``name``'s documents; None while degraded.

        Kept in memory while the change feed is live (no round trip for a warm request)."""
        trusted = self._link.up and self.news_arrives()
        if trusted:
            kept = self._kept.get(name)
            if kept is not None:
                self._kept.move_to_end(name)
                return kept
        news = self._news
        try:
            epoch, generation = await self._link.call("mget", [_EPOCH, _generation(name)])
            if epoch is None:  # Redis lost its data: start a new epoch
                await self._link.call("set", _EPOCH, _new_epoch(), None, None, True)
                epoch, generation = await self._link.call("mget", [_EPOCH, _generation(name)])
                await self._tell(EPOCH_NEWS)
        except RedisDown:
            return None
        stamp = f"{epoch.decode()}.{int(generation or 0)}"
        if trusted and news == self._news and self._link.up and self.news_arrives():
            self._kept[name] = stamp
            while len(self._kept) > MAX_KEPT_STAMPS:
                self._kept.popitem(last=False)
        return stamp

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        """The current stamps of many names, 1000 a round trip; None while degraded."""
        found: dict[str, str] = {}
        try:
            for start in range(0, len(names), 1000):
                chunk = names[start : start + 1000]
                epoch, *generations = await self._link.call("mget", [_EPOCH] + [_generation(n) for n in chunk])
                if epoch is None:
                    return None
                found.update({n: f"{epoch.decode()}.{int(g or 0)}"
                              for n, g in zip(chunk, generations, strict=False)})
        except RedisDown:
            return None
        return found

    async def bump(self, name: str) -> str | None:
        """Tell every instance that ``name``'s documents changed; the new stamp (None: degraded).

        The counter moves first, then the news goes out: a process that hears it and asks
        again reads the new stamp."""
        self.changed(name)
        try:
            epoch, generation = await self._link.call("eval", *bump_arguments(name), critical=True)
        except RedisDown:
            self._dirty = True
            return None
        finally:
            self.changed(name)
        await self._tell(name)
        if epoch is None:
            return None
        return f"{epoch.decode()}.{int(generation)}"

    async def shared_document(self, name: str, base_url: str, stamp: str) -> CachedDocument | None:
        """Another instance's prepared copy, if it carries ``stamp``."""
        try:
            value = await self._link.call("get", self._document_key(name, base_url))
        except RedisDown:
            return None
        if value is None:
            return None
        try:
            entry = decode_document(value)
        except (ValueError, KeyError, struct.error, orjson.JSONDecodeError):
            return None
        return entry if entry.stamp == stamp else None

    def share_document(self, name: str, base_url: str, entry: CachedDocument) -> None:
        """Offer a prepared document to the other instances (in the background)."""
        if not self._link.up or entry.stamp is None:
            return
        value = encode_document(entry)
        deferred = Deferred.fromCoroutine(
            self._link.call("set", self._document_key(name, base_url), value, SHARED_DOCUMENT_TTL)
        )
        deferred.addErrback(lambda _failure: None)  # sharing is best effort

    def _document_key(self, name: str, base_url: str) -> bytes:
        return key(f"doc:{name}|{base_url}")
