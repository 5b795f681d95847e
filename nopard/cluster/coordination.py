"""What several nopard instances share, and how one instance does without it.

``LocalCoordination`` is one process on its own. ``RedisCoordination`` shares
through Redis (NOPARD_REDIS_URL):

- **stamps**: a counter per package name, bumped by every change to its
  documents. A prepared document is served from memory (or taken from
  another instance's prepared copy in Redis) only while it carries the
  current stamp, so a publish through one instance shows on every other at
  once.
- **prepared documents**: the bytes one instance prepared, for the others.
- **locks**: one instance at a time updates a package document or fetches a
  tarball; the others wait and then find it done.
- **web login sessions**, so npm may poll any instance.

Correctness never rests on Redis: documents are written with the store's
compare-and-swap and tarballs with create-if-absent, so nothing is lost or
half-written while Redis is down. Then nopard is *degraded*: it keeps a
document read from the store in memory for DEGRADED_FRESHNESS seconds only,
locks only within itself, logs it and shows it in health and metrics; a probe
brings it back. A lost connection, a few slow replies in a row, or one slow
stamp bump make it degraded; one slow reply (a busy reactor) only makes that
request go on without Redis.
"""

from __future__ import annotations

import struct
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import orjson
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.python.failure import Failure
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from nopard.settings.values import redis_arguments as parse_redis_url
from nopard.domain.prepared import CachedDocument, PreparedBody, PreparedDocument

PREFIX = "nopard:"
# Seconds a lock lives unless renewed: how long a killed instance's lock blocks the others.
LOCK_TTL = 10.0
# Seconds a Redis command may take: the request then goes on without Redis. A busy
# reactor delays replies too, so a slow reply alone does not make nopard degraded: a
# lost connection, a liveness PING unanswered for LIVENESS_TIMEOUT, or a slow stamp
# bump (others must learn of that change) does.
COMMAND_TIMEOUT = 1.0
LIVENESS_TIMEOUT = 3.0
# Seconds a prepared document loaded while degraded is served from memory: changes made
# through other instances show within this long (they cannot be announced without Redis).
DEGRADED_FRESHNESS = 2.0
# Seconds prepared documents stay in Redis unused.
SHARED_DOCUMENT_TTL = 24 * 3600
# Only if it still holds the caller's token: a lock that expired and was taken is not touched.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_BUMP = "local g = redis.call('INCR', KEYS[2]) return {redis.call('GET', KEYS[1]), g}"


async def within(deferred: Deferred, seconds: float, clock: IReactorTime) -> Any:
    """Await ``deferred`` for at most ``seconds`` without cancelling it (TimeoutError after).

    Whatever it ends with later is consumed, so a late failure is not reported as unhandled.
    """
    waiter: Deferred = Deferred()

    def expire() -> None:
        if not waiter.called:
            waiter.errback(TimeoutError())

    timer = clock.callLater(seconds, expire)

    def settle(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not waiter.called:
            waiter.callback(result) if not isinstance(result, Failure) else waiter.errback(result)

    deferred.addBoth(settle)
    return await waiter


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


class RedisDown(Exception):
    """Redis did not answer (or nopard knows it is gone): go on without it."""


def encode_document(entry: CachedDocument) -> bytes:
    """A prepared document as one Redis value: a JSON header, then the four bodies."""
    prepared = entry.prepared
    bodies = [prepared.full.identity, prepared.full.gzipped, prepared.abbreviated.identity,
              prepared.abbreviated.gzipped]
    header = orjson.dumps({
        "stamp": entry.stamp, "origin": entry.origin, "fetched_at": entry.fetched_at, "etag": entry.etag,
        "last_modified": prepared.last_modified, "etags": [prepared.full.etag, prepared.abbreviated.etag],
        "sizes": [len(body) for body in bodies],
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
    return CachedDocument(
        PreparedDocument(full, abbreviated, header["last_modified"]),
        header["origin"], header["fetched_at"], header["etag"], header["stamp"],
    )


class LocalCoordination:
    """One nopard on its own: every stamp is the same, locks are in-process."""

    state = "off"
    since: float | None = None

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    async def stamp(self, name: str) -> str | None:
        """Memory holds no document another process could have changed."""
        return ""

    async def bump(self, name: str) -> str | None:
        """Nothing to tell anyone."""
        return ""

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        """Every name's stamp: all the same here."""
        return dict.fromkeys(names, "")

    async def shared_document(self, name: str, base_url: str, stamp: str) -> CachedDocument | None:
        """No other instance prepares documents."""
        return None

    def share_document(self, name: str, base_url: str, entry: CachedDocument) -> None:
        """No other instance to share with."""

    @asynccontextmanager
    async def lock(self, key: str, wait: float = 60.0) -> AsyncIterator[None]:
        """Hold ``key`` against the rest of this process."""
        async with self._locks.hold(key):
            yield


class RedisLink:
    """The pool of Redis connections and whether Redis is usable (``up``) or not (degraded).

    Commands are not even tried while down: a probe pings every
    ``probe_interval`` seconds and, once Redis answers, runs the recovery
    hooks before commands go to Redis again.
    """

    def __init__(self, url: str, clock: IReactorTime, log: Logger, probe_interval: float = 1.0,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self._arguments = parse_redis_url(url)
        self._clock = clock
        self._log = log
        self._timeout = timeout
        self._probe = LoopingCall(self._check)
        self._probe.clock = clock
        self._probe_interval = probe_interval
        self._redis: Any = None
        self.up = False
        self.since: float = clock.seconds()
        self.failures = 0
        self._stopping = False
        self.was_up = False
        self.recovery_hooks: list[Callable[[bool], Any]] = []
        self.where = f"{self._arguments['host']}:{self._arguments['port']}/{self._arguments['dbid']}"

    @property
    def state(self) -> str:
        """``up`` or ``down``."""
        return "up" if self.up else "down"

    def start(self) -> None:
        """Connect (in the background) and start probing."""
        import txredisapi

        self._redis = txredisapi.lazyConnectionPool(
            poolsize=4, charset=None, convertNumbers=False, connectTimeout=2, replyTimeout=5,
            **self._arguments,
        )
        factory = self._redis._factory
        factory.maxDelay = 2  # reconnect within seconds of Redis coming back
        dropped = factory.delConnection

        def connection_lost(connection: Any) -> None:
            dropped(connection)
            if factory.size == 0:
                self.mark_down("connection lost")

        factory.delConnection = connection_lost
        self._probe.start(self._probe_interval, now=True)

    async def stop(self) -> None:
        """Stop probing and close the connections (not an outage: nothing is logged)."""
        self._stopping = True
        if self._probe.running:
            self._probe.stop()
        if self._redis is not None:
            await self._redis.disconnect()

    async def call(self, command: str, *args: Any, critical: bool = False) -> Any:
        """Run one command; RedisDown when Redis is down or does not answer in time.

        ``critical``: a command whose loss others must learn of (a stamp's bump):
        if it times out, nopard goes degraded, so its recovery starts a new epoch.
        """
        if not self.up:
            raise RedisDown(f"redis at {self.where} is down")
        return await self._run(command, *args, critical=critical)

    async def _run(self, command: str, *args: Any, critical: bool = True, timeout: float | None = None) -> Any:
        import txredisapi

        timeout = timeout or self._timeout
        try:
            return await within(getattr(self._redis, command)(*args), timeout, self._clock)
        except txredisapi.ResponseError:
            raise
        except CancelledError:
            raise  # the client went away: says nothing about Redis
        except TimeoutError:
            if critical:
                self.mark_down(f"{command}: no answer within {timeout:g} s")
            raise RedisDown(f"{command}: no answer within {timeout:g} s") from None
        except Exception as error:
            self.mark_down(f"{command}: {error.__class__.__name__}: {error}")
            raise RedisDown(str(error)) from None

    def mark_down(self, reason: str) -> None:
        """Go degraded (once): the probe will bring nopard back."""
        if not self.up or self._stopping:
            return
        self.up, self.since = False, self._clock.seconds()
        self.failures += 1
        self._log.warn("redis at {where} is unreachable, serving from storage alone (degraded): {reason}",
                       where=self.where, reason=reason, event="redis-down")

    async def _check(self) -> None:
        """Every probe interval: while up, is Redis still answering? While down, is it back?"""
        if self._redis is None or self._stopping:
            return
        if self.up:
            try:
                await self._run("ping", critical=True, timeout=LIVENESS_TIMEOUT)
            except Exception:
                pass  # marked down by _run
            return
        if self._redis._factory.size == 0:
            return
        try:
            await self._run("ping")
            for hook in self.recovery_hooks:
                await hook(self.was_up)
        except Exception as error:  # still down: try again at the next probe
            self._log.debug("redis probe failed: {error}", error=str(error), event="redis-probe")
            return
        self.up, self.since, self.was_up = True, self._clock.seconds(), True
        self._log.info("redis at {where} is up: instances share documents, locks and sessions",
                       where=self.where, event="redis-up")


def _b(text: str) -> bytes:
    return text.encode("utf-8")


class RedisCoordination:
    """Stamps, prepared documents, locks and sessions shared through Redis."""

    def __init__(self, link: RedisLink, clock: IReactorTime, log: Logger, forget_memory: Callable[[], None],
                 lock_ttl: float = LOCK_TTL) -> None:
        self.link = link
        self._clock = clock
        self._log = log
        self._forget_memory = forget_memory
        self._lock_ttl = lock_ttl
        self._locks = KeyedLocks()
        self._dirty = False
        link.recovery_hooks.append(self._recover)

    @property
    def state(self) -> str:
        """``up`` or ``down`` (degraded)."""
        return self.link.state

    @property
    def since(self) -> float:
        """When the state last changed."""
        return self.link.since

    async def _recover(self, was_up: bool) -> None:
        """Before using Redis again: drop what memory holds, and make other instances drop theirs.

        Changes made while Redis was out of reach bumped no stamp, so the
        epoch every stamp starts with is replaced: no prepared document from
        before is served again, here or on any instance.
        """
        self._forget_memory()
        epoch = _b(uuid.uuid4().hex)
        if was_up or self._dirty:
            await self.link._run("set", _b(PREFIX + "epoch"), epoch)
        else:
            await self.link._run("set", _b(PREFIX + "epoch"), epoch, None, None, True)
        self._dirty = False

    async def stamp(self, name: str) -> str | None:
        """The current stamp of ``name``'s documents; None while degraded (trust no cache)."""
        try:
            epoch, generation = await self.link.call("mget", [_b(PREFIX + "epoch"), _b(PREFIX + "gen:" + name)])
            if epoch is None:  # Redis lost its data: start a new epoch
                await self.link.call("set", _b(PREFIX + "epoch"), _b(uuid.uuid4().hex), None, None, True)
                epoch, generation = await self.link.call("mget", [_b(PREFIX + "epoch"), _b(PREFIX + "gen:" + name)])
        except RedisDown:
            return None
        return f"{epoch.decode()}.{int(generation or 0)}"

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        """The current stamps of many names, 1000 a round trip; None while degraded."""
        found: dict[str, str] = {}
        try:
            for start in range(0, len(names), 1000):
                chunk = names[start : start + 1000]
                keys = [_b(PREFIX + "epoch")] + [_b(PREFIX + "gen:" + name) for name in chunk]
                epoch, *generations = await self.link.call("mget", keys)
                if epoch is None:
                    return None
                found.update({name: f"{epoch.decode()}.{int(g or 0)}"
                              for name, g in zip(chunk, generations, strict=False)})
        except RedisDown:
            return None
        return found

    async def bump(self, name: str) -> str | None:
        """Tell every instance that ``name``'s documents changed; the new stamp (None: degraded)."""
        try:
            epoch, generation = await self.link.call(
                "eval", _BUMP, [_b(PREFIX + "epoch"), _b(PREFIX + "gen:" + name)], critical=True)
        except RedisDown:
            self._dirty = True
            return None
        if epoch is None:
            return None
        return f"{epoch.decode()}.{int(generation)}"

    async def shared_document(self, name: str, base_url: str, stamp: str) -> CachedDocument | None:
        """Another instance's prepared copy, if it carries ``stamp``."""
        try:
            value = await self.link.call("get", self._document_key(name, base_url))
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
        if not self.link.up or entry.stamp is None:
            return
        value = encode_document(entry)
        deferred = Deferred.fromCoroutine(
            self.link.call("set", self._document_key(name, base_url), value, SHARED_DOCUMENT_TTL)
        )
        deferred.addErrback(lambda _failure: None)  # sharing is best effort

    def _document_key(self, name: str, base_url: str) -> bytes:
        return _b(f"{PREFIX}doc:{name}|{base_url}")

    @asynccontextmanager
    async def lock(self, key: str, wait: float = 60.0) -> AsyncIterator[None]:
        """Hold ``key`` against every instance, waiting for it at most ``wait`` seconds.

        Degraded, or after ``wait``, the body runs under this process's lock
        alone: the store's conditional writes still keep the data whole.
        """
        async with self._locks.hold(key):
            token = _b(uuid.uuid4().hex)
            redis_key = _b(PREFIX + "lock:" + key)
            held = await self._acquire(redis_key, token, wait)
            renewal = LoopingCall(self._renew, redis_key, token)
            renewal.clock = self._clock
            if held:
                renewal.start(self._lock_ttl / 3, now=False).addErrback(lambda _failure: None)
            try:
                yield
            finally:
                if renewal.running:
                    renewal.stop()
                if held:
                    try:
                        await self.link.call("eval", _RELEASE, [redis_key], [token])
                    except RedisDown:
                        pass  # it expires on its own

    async def _acquire(self, redis_key: bytes, token: bytes, wait: float) -> bool:
        deadline = self._clock.seconds() + wait
        pause = 0.01
        while True:
            try:
                taken = await self.link.call(
                    "set", redis_key, token, None, int(self._lock_ttl * 1000), True
                )
            except RedisDown:
                return False
            if taken:
                return True
            if self._clock.seconds() >= deadline:
                self._log.warn("gave up waiting for lock {key}; going on without it",
                               key=redis_key.decode(), event="lock-timeout")
                return False
            await deferLater(self._clock, pause, lambda: None)
            pause = min(pause * 2, 0.2)

    async def _renew(self, redis_key: bytes, token: bytes) -> None:
        try:
            await self.link.call("eval", _RENEW, [redis_key], [token, _b(str(int(self._lock_ttl * 1000)))])
        except RedisDown:
            pass


class MemorySessions:
    """Short-lived records (web login sessions) in this process, each with its own expiry."""

    def __init__(self, clock: IReactorTime, max_records: int = 1000) -> None:
        self._clock = clock
        self._max = max_records
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}

    def _expire(self) -> None:
        now = self._clock.seconds()
        for key in [k for k, (expires, _) in self._records.items() if expires <= now]:
            del self._records[key]

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Keep ``value`` for ``ttl`` seconds; False when full."""
        self._expire()
        if key not in self._records and len(self._records) >= self._max:
            return False
        self._records[key] = (self._clock.seconds() + ttl, value)
        return True

    async def get(self, key: str) -> dict[str, Any] | None:
        """The live record, or None."""
        self._expire()
        found = self._records.get(key)
        return found[1] if found else None

    async def take(self, key: str) -> dict[str, Any] | None:
        """Remove and return the live record (one caller only gets it), or None."""
        self._expire()
        found = self._records.pop(key, None)
        return found[1] if found else None

    async def ttl(self, key: str) -> float:
        """Seconds ``key`` has left (0: gone)."""
        found = self._records.get(key)
        return max(0.0, found[0] - self._clock.seconds()) if found else 0.0


class RedisSessions:
    """Records every instance reads (npm may poll any one); in memory while Redis is down."""

    def __init__(self, link: RedisLink, fallback: MemorySessions) -> None:
        self._link = link
        self._fallback = fallback

    def _key(self, key: str) -> bytes:
        return _b(PREFIX + "session:" + key)

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Keep ``value`` for ``ttl`` seconds, in Redis when it is up."""
        try:
            await self._link.call("set", self._key(key), orjson.dumps(value), None, max(1, int(ttl * 1000)))
        except RedisDown:
            return await self._fallback.put(key, value, ttl)
        return True

    async def get(self, key: str) -> dict[str, Any] | None:
        """The live record, from Redis or from memory."""
        try:
            raw = await self._link.call("get", self._key(key))
        except RedisDown:
            raw = None
        return orjson.loads(raw) if raw else await self._fallback.get(key)

    async def take(self, key: str) -> dict[str, Any] | None:
        """Remove and return the live record: GETDEL, so two polls never both get it."""
        try:
            raw = await self._link.call("execute_command", "GETDEL", self._key(key))
        except RedisDown:
            raw = None
        return orjson.loads(raw) if raw else await self._fallback.take(key)

    async def ttl(self, key: str) -> float:
        """Seconds ``key`` has left (0: gone)."""
        try:
            left = await self._link.call("execute_command", "PTTL", self._key(key))
        except RedisDown:
            left = None
        if left is not None and int(left) > 0:
            return int(left) / 1000
        return await self._fallback.ttl(key)
