"""Short-lived records (web login sessions): in this process (MemorySessions), or shared
through Redis so npm may poll any instance (RedisSessions, in memory while Redis is down)."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime

from nopard.cluster.link import RedisDown, RedisLink, key


class MemorySessions:
    """Short-lived records in this process, each with its own expiry."""

    def __init__(self, clock: IReactorTime, max_records: int = 1000) -> None:
        self._clock = clock
        self._max = max_records
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}

    def _expire(self) -> None:
        now = self._clock.seconds()
        for name in [k for k, (expires, _) in self._records.items() if expires <= now]:
            del self._records[name]

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

    def _key(self, name: str) -> bytes:
        return key("session:" + name)

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
