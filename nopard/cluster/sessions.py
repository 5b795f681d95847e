"""Short-lived records (web login and browser sessions): in this process (MemorySessions), or
shared through Redis so npm may poll any instance (RedisSessions, in memory while Redis is down).

New sessions are *admitted* into a pool (``login``, ``browser``) under an owner (the client
address that opened an `npm login`, the user of a browser session). A pool holds at most
``per_owner`` pending records of one owner and ``total`` in all; admitting one past either
bound first evicts the oldest pending record (the owner's own, then the pool's), so a
flood from one owner only ever pushes out its own records and a newcomer is never refused.
A record *settled* (an `npm login` whose form was sent) leaves its pool: it is no longer
pending, never evicted, and lives only until npm's next poll takes it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime

from nopard.cluster.link import RedisDown, RedisLink, key


@dataclass
class _Held:
    expires: float
    value: dict[str, Any]
    pool: str | None = None  # None: not pending (put or settled)
    owner: str = ""


class MemorySessions:
    """Short-lived records in this process, each with its own expiry.

    ``max_records`` bounds the records not in a pool (``put`` and settled ones); pools
    bound themselves (``admit``).
    """

    def __init__(self, clock: IReactorTime, max_records: int = 1000) -> None:
        self.clock = clock
        self._max = max_records
        self._records: dict[str, _Held] = {}
        self._pools: dict[str, OrderedDict[str, None]] = {}  # pool -> keys, oldest first
        self._owners: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._unpooled: OrderedDict[str, None] = OrderedDict()

    def held(self, pool: str | None = None, owner: str | None = None) -> int:
        """How many live records are held (in ``pool``, of ``owner``): what tests count."""
        now = self.clock.seconds()
        return sum(1 for held in self._records.values() if held.expires > now
                   and (pool is None or held.pool == pool) and (owner is None or held.owner == owner))

    def _drop(self, name: str) -> _Held | None:
        held = self._records.pop(name, None)
        if held is None:
            return None
        if held.pool is None:
            self._unpooled.pop(name, None)
        else:
            self._pools.get(held.pool, OrderedDict()).pop(name, None)
            owned = self._owners.get((held.pool, held.owner))
            if owned is not None:
                owned.pop(name, None)
                if not owned:
                    del self._owners[(held.pool, held.owner)]
        return held

    def _live(self, name: str) -> _Held | None:
        held = self._records.get(name)
        if held is not None and held.expires <= self.clock.seconds():
            self._drop(name)
            return None
        return held

    def _expire_front(self, order: OrderedDict[str, None]) -> None:
        """Drop the expired records at the front of ``order`` (same lifetime: oldest first)."""
        now = self.clock.seconds()
        while order:
            oldest = next(iter(order))
            held = self._records.get(oldest)
            if held is not None and held.expires > now:
                return
            if held is None:
                order.pop(oldest)
            else:
                self._drop(oldest)

    def _make_room_unpooled(self) -> bool:
        if len(self._unpooled) < self._max:
            return True
        now = self.clock.seconds()
        for name in [name for name in self._unpooled if self._records[name].expires <= now]:
            self._drop(name)
        return len(self._unpooled) < self._max

    async def admit(self, pool: str, key: str, value: dict[str, Any], ttl: float, owner: str,
                    per_owner: int, total: int) -> bool:
        """Keep a new pending ``value`` for ``ttl`` seconds, evicting the oldest pending records of
        ``owner`` past ``per_owner`` and of ``pool`` past ``total``. True: it is stored."""
        order = self._pools.setdefault(pool, OrderedDict())
        self._expire_front(order)
        self._drop(key)
        owned = self._owners.get((pool, owner))
        while owned and len(owned) >= per_owner:
            self._drop(next(iter(owned)))
            owned = self._owners.get((pool, owner))
        while order and len(order) >= total:
            self._drop(next(iter(order)))
        self._records[key] = _Held(self.clock.seconds() + ttl, value, pool, owner)
        order[key] = None
        self._owners.setdefault((pool, owner), OrderedDict())[key] = None
        return True

    async def settle(self, pool: str, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Replace the live record ``key`` with ``value`` for ``ttl`` seconds, no longer pending (never
        evicted); False when it is gone (expired, evicted, taken) or no room is left."""
        if self._live(key) is None or not self._make_room_unpooled():
            return False
        self._drop(key)
        self._records[key] = _Held(self.clock.seconds() + ttl, value)
        self._unpooled[key] = None
        return True

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Keep ``value`` for ``ttl`` seconds, in no pool; False when full."""
        if key not in self._records and not self._make_room_unpooled():
            return False
        self._drop(key)
        self._records[key] = _Held(self.clock.seconds() + ttl, value)
        self._unpooled[key] = None
        return True

    async def get(self, key: str) -> dict[str, Any] | None:
        """The live record, or None."""
        held = self._live(key)
        return held.value if held else None

    async def take(self, key: str, pool: str | None = None) -> dict[str, Any] | None:
        """Remove and return the live record (one caller only gets it), or None."""
        held = self._live(key)
        self._drop(key)
        return held.value if held else None

    async def ttl(self, key: str) -> float:
        """Seconds ``key`` has left (0: gone)."""
        held = self._live(key)
        return max(0.0, held.expires - self.clock.seconds()) if held else 0.0


# KEYS: 1 the record, 2 the pool (id -> expiry), 3 the owner's set (id -> expiry), 4 the pool's
# owners (id -> owner). ARGV: 1 value, 2 now (ms), 3 ttl (ms), 4 per owner, 5 total, 6 id,
# 7 owner, 8 the records' key prefix, 9 the owner sets' key prefix.
# The records' and owners' keys are built in the script: nopard uses one Redis, not a cluster.
ADMIT_SCRIPT = """
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local function drop(id)
  local owner = redis.call('HGET', KEYS[4], id)
  if owner then
    redis.call('ZREM', ARGV[9] .. owner, id)
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', ARGV[8] .. id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do drop(id) end
drop(ARGV[6])
while redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) do drop(redis.call('ZRANGE', KEYS[3], 0, 0)[1]) end
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) do drop(redis.call('ZRANGE', KEYS[2], 0, 0)[1]) end
-- Scores order the records by age: ties (same millisecond) would sort by id, so each is later.
local expires = now + ttl
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
if last and tonumber(last) >= expires then expires = tonumber(last) + 1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], expires, ARGV[6])
redis.call('ZADD', KEYS[3], expires, ARGV[6])
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
return 1
"""
# KEYS: 1 the record, 2 the pool, 3 the pool's owners. ARGV: 1 id, 2 the owner sets' key prefix,
# 3 the new value ('' : only take it out of the pool), 4 its ttl (ms). 1 when the record was live.
SETTLE_SCRIPT = """
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner then
  redis.call('ZREM', ARGV[2] .. owner, ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == '' then return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"""


class RedisSessions:
    """Records every instance reads (npm may poll any one); in memory while Redis is down."""

    def __init__(self, link: RedisLink, fallback: MemorySessions) -> None:
        self._link = link
        self._fallback = fallback
        self._clock = fallback.clock

    def _key(self, name: str) -> bytes:
        return key("session:" + name)

    def _pool_keys(self, pool: str) -> tuple[bytes, bytes, str]:
        """The pool's set, its owners hash, and the prefix of its owners' sets."""
        return key(f"sessions:{pool}"), key(f"sessions:{pool}:owners"), key(f"sessions:{pool}:owner:").decode()

    async def admit(self, pool: str, key: str, value: dict[str, Any], ttl: float, owner: str,
                    per_owner: int, total: int) -> bool:
        """Keep a new pending ``value`` (MemorySessions.admit's bounds, across instances)."""
        pool_key, owners_key, owner_prefix = self._pool_keys(pool)
        try:
            await self._link.call("eval", ADMIT_SCRIPT, [self._key(key), pool_key, (owner_prefix + owner).encode(),
                                                   owners_key], [
                orjson.dumps(value), str(int(self._clock.seconds() * 1000)), str(max(1, int(ttl * 1000))),
                str(per_owner), str(total), key, owner, self._key("").decode(), owner_prefix])
        except RedisDown:
            return await self._fallback.admit(pool, key, value, ttl, owner, per_owner, total)
        return True

    async def settle(self, pool: str, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Replace the live record with ``value``, no longer pending; False when it is gone."""
        pool_key, owners_key, owner_prefix = self._pool_keys(pool)
        try:
            done = await self._link.call("eval", SETTLE_SCRIPT, [self._key(key), pool_key, owners_key], [
                key, owner_prefix, orjson.dumps(value), str(max(1, int(ttl * 1000)))])
        except RedisDown:
            return await self._fallback.settle(pool, key, value, ttl)
        return bool(int(done)) or await self._fallback.settle(pool, key, value, ttl)

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

    async def take(self, key: str, pool: str | None = None) -> dict[str, Any] | None:
        """Remove and return the live record: GETDEL, so two polls never both get it."""
        try:
            raw = await self._link.call("execute_command", "GETDEL", self._key(key))
        except RedisDown:
            raw = None
        if raw and pool is not None:
            pool_key, owners_key, owner_prefix = self._pool_keys(pool)
            try:  # out of its pool's counts too (else it would count until it expires)
                await self._link.call("eval", SETTLE_SCRIPT, [self._key(key), pool_key, owners_key],
                                      [key, owner_prefix, "", "0"])
            except RedisDown:
                pass
        return orjson.loads(raw) if raw else await self._fallback.take(key, pool)

    async def ttl(self, key: str) -> float:
        """Seconds ``key`` has left (0: gone)."""
        try:
            left = await self._link.call("execute_command", "PTTL", self._key(key))
        except RedisDown:
            left = None
        if left is not None and int(left) > 0:
            return int(left) / 1000
        return await self._fallback.ttl(key)
