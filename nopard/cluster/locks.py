"""Locks: one holder at a time per key, in this process (KeyedLocks) or across instances (RedisLocks).

A Redis lock lives ``lock_ttl`` seconds unless its holder renews it, so a
killed instance blocks the others that long at most. Degraded, or after
waiting too long, the body runs under this process's lock alone: the store's
conditional writes still keep the data whole.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from nopard.cluster.link import RedisDown, RedisLink, key

# Seconds a lock lives unless renewed: how long a killed instance's lock blocks the others.
LOCK_TTL = 10.0
# Only if it still holds the caller's token: a lock that expired and was taken is not touched.
RELEASE_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
RENEW_SCRIPT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


class KeyedLocks:
    """One DeferredLock per key, created on demand and dropped when idle (this process only)."""

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


class RedisLocks:
    """Locks held against every instance sharing ``link``'s Redis."""

    def __init__(self, link: RedisLink, clock: IReactorTime, log: Logger, lock_ttl: float = LOCK_TTL) -> None:
        self._link = link
        self._clock = clock
        self._log = log
        self._lock_ttl = lock_ttl
        self._local = KeyedLocks()

    @asynccontextmanager
    async def hold(self, name: str, wait: float = 60.0) -> AsyncIterator[None]:
        """Hold ``name`` against every instance, waiting for it at most ``wait`` seconds."""
        async with self._local.hold(name):
            token = uuid.uuid4().hex.encode()
            redis_key = key("lock:" + name)
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
                        await self._link.call("eval", RELEASE_SCRIPT, [redis_key], [token])
                    except RedisDown:
                        pass  # it expires on its own

    async def _acquire(self, redis_key: bytes, token: bytes, wait: float) -> bool:
        deadline = self._clock.seconds() + wait
        pause = 0.01
        while True:
            try:
                taken = await self._link.call(
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
        # Renew and release are compare-and-swap on the token (the scripts above): a holder that
        # stalled past lock_ttl never extends or deletes the lock another instance took since.
        try:
            renewed = await self._link.call(
                "eval", RENEW_SCRIPT, [redis_key], [token, str(int(self._lock_ttl * 1000)).encode()])
        except RedisDown:
            return
        if not renewed:
            self._log.warn("lock {key} expired and was taken over while held; going on without it",
                           key=redis_key.decode(), event="lock-lost")
