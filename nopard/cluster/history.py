"""The status page's last day shared through Redis: one hash per 5-minute bucket, every instance's
figures combined in it (nopard.domain.history.combine: counts added, sizes and upstream time the
largest), each key expiring a day after its bucket, at most MAX_FIELDS fields a key.

Both scripts have Python equivalents for the supervisor's keyspace (NOPARD_WORKERS without Redis).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from nopard.cluster.link import RedisLink, key
from nopard.domain.history import Bucket, combine

MAX_FIELDS = 64  # 5 ways of serving + 5 sync figures + 3 sizes + up and down of 8 upstreams, and room

ADD_SCRIPT = """
local ttl = ARGV[1]
for i = 2, #ARGV, 2 do
  local field, value = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', KEYS[1], field) == 1 or redis.call('HLEN', KEYS[1]) < MAX_FIELDS then
    if string.sub(field, 1, 7) == 'served:' or string.sub(field, 1, 5) == 'sync:' then
      redis.call('HINCRBYFLOAT', KEYS[1], field, ARGV[i + 1])
    else
      local old = tonumber(redis.call('HGET', KEYS[1], field))
      if old == nil or value > old then redis.call('HSET', KEYS[1], field, ARGV[i + 1]) end
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
""".replace("MAX_FIELDS", str(MAX_FIELDS))

READ_SCRIPT = """
local found = {}
for i, name in ipairs(KEYS) do found[i] = redis.call('HGETALL', name) end
return found
"""


def bucket_key(index: int) -> bytes:
    """The Redis key of bucket number ``index``."""
    return key(f"history:{index}")


def number_text(value: float) -> bytes:
    """A figure as Redis stores it (an integer without a decimal point)."""
    return (str(int(value)) if value == int(value) else repr(value)).encode()


class RedisDays:
    """nopard.ops.history.SharedDays over a RedisLink; ``keep``: seconds a bucket's key lives."""

    def __init__(self, link: RedisLink, clock: IReactorTime, width: int, keep: float) -> None:
        self._link = link
        self._clock = clock
        self._width = width
        self._keep = keep

    async def add(self, figures: dict[int, Bucket]) -> None:
        """Combine each bucket's figures into its key (RedisDown when Redis is down)."""
        for index, bucket in sorted(figures.items()):
            if not bucket:
                continue
            # The key lives ``keep`` seconds after its bucket ends, however late the figures come.
            ttl_ms = max(1, int(((index + 1) * self._width + self._keep - self._clock.seconds()) * 1000))
            args = [str(ttl_ms).encode()]
            for field, value in sorted(bucket.items()):
                args += [field.encode(), number_text(value)]
            await self._link.call("eval", ADD_SCRIPT, [bucket_key(index)], args)

    async def day(self, indexes: range) -> list[Bucket] | None:
        """The buckets ``indexes`` as every instance left them; None while Redis cannot be read."""
        try:
            replies = await self._link.call("eval", READ_SCRIPT, [bucket_key(i) for i in indexes], [])
        except Exception:
            return None
        return [_bucket(reply) for reply in replies]


def _bucket(reply: list[bytes]) -> Bucket:
    found: Bucket = {}
    for name, value in zip(reply[::2], reply[1::2], strict=True):
        try:
            found[name.decode()] = float(value)
        except (UnicodeDecodeError, ValueError):
            continue  # not written by nopard: left out
    return found


# The scripts in the supervisor's keyspace (nopard.cluster.keyspace) ------------------------


def add_script(space: Any, keys: list[bytes], args: list[bytes]) -> int:
    """ADD_SCRIPT in Python."""
    held = space.hash(keys[0])
    for field, value in zip(args[1::2], args[2::2], strict=True):
        if field not in held and len(held) >= MAX_FIELDS:
            continue
        name, new = field.decode(), float(value)
        if field in held:
            new = combine(name, float(held[field]), new)
        held[field] = number_text(new)
        space.hset(keys[0], field, held[field])
    space.pexpire(keys[0], args[0])
    return 1


def read_script(space: Any, keys: list[bytes], args: list[bytes]) -> list[list[bytes]]:
    """READ_SCRIPT in Python."""
    return [space.hgetall(name) for name in keys]


def shared_days(coordination: Any, clock: IReactorTime, width: int, keep: float) -> RedisDays | None:
    """The shared buckets when instances (or workers) share Redis, else None."""
    link = getattr(coordination, "link", None)
    return RedisDays(link, clock, width, keep) if isinstance(link, RedisLink) else None
