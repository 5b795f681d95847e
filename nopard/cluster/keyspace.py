"""The shared state of NOPARD_WORKERS without Redis: the few Redis commands and scripts nopard uses,
kept in the supervisor's memory (served to the workers by resp.py).

The workers of one machine then share stamps, prepared documents, locks, sessions and
failed-login counts through the very code that shares them between instances through
Redis (stamps.py, locks.py, sessions.py, auth/limits.py): one path to keep coherent,
tested against a real redis-server and against this. Only what nopard sends is
understood: strings (with expiry), sorted sets and hashes, and its own Lua scripts,
each replaced by a Python function of the same effect (``Keyspace.scripts``, keyed by
the script's SHA1 as EVALSHA names it). Anything else is an error reply, which a
test catches (tests/unit/test_keyspace.py runs the Redis-backed classes over it).

Memory is bounded: shared prepared documents (``nopard:doc:`` keys) are kept within
``document_budget`` bytes, the oldest dropped first; every other key is small and
bounded by the code that writes it (session pools, lock TTLs, login windows).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from nopard.cluster import history, locks, sessions, stamps

_DOCUMENT_PREFIX = b"nopard:doc:"


class Status(str):
    """A simple-string reply (``+OK``)."""


class CommandError(Exception):
    """An error reply (``-ERR ...``)."""


class SortedSet(dict[bytes, float]):
    """A sorted set's members and scores (sorted when read)."""


class Hash(dict[bytes, bytes]):
    """A hash's fields; another type than a sorted set, as in Redis (WRONGTYPE across them)."""


OK = Status("OK")
Script = Callable[["Keyspace", list[bytes], list[bytes]], Any]


def _number(value: bytes | str | float) -> float:
    text = value.decode() if isinstance(value, bytes) else str(value)
    if text in ("-inf", "+inf", "inf"):
        return float(text)
    try:
        return float(text)
    except ValueError:
        raise CommandError("ERR value is not a valid float") from None


def _score_text(score: float) -> bytes:
    return (str(int(score)) if score == int(score) else repr(score)).encode()


class Keyspace:
    """Keys with optional expiry; values are bytes, sorted sets (dict member -> score) or hashes."""

    def __init__(self, clock: IReactorTime, document_budget: int = 64 * 1024 * 1024) -> None:
        self.clock = clock
        self.document_budget = document_budget
        self._values: dict[bytes, Any] = {}
        self._expires: dict[bytes, float] = {}  # key -> clock seconds
        self._documents: OrderedDict[bytes, int] = OrderedDict()  # doc key -> size, oldest first
        self.document_bytes = 0
        self.scripts: dict[str, Script] = {}
        for source, function in BUILTIN_SCRIPTS.items():
            self.register(source, function)

    def register(self, source: str, function: Script) -> None:
        """Answer EVAL/EVALSHA of ``source`` with ``function(keyspace, keys, args)``."""
        self.scripts[hashlib.sha1(source.encode()).hexdigest()] = function

    def __len__(self) -> int:
        self.sweep()
        return len(self._values)

    # The keyspace ----------------------------------------------------------------

    def _live(self, name: bytes) -> Any:
        expires = self._expires.get(name)
        if expires is not None and expires <= self.clock.seconds():
            self._delete(name)
        return self._values.get(name)

    def _delete(self, name: bytes) -> bool:
        self._expires.pop(name, None)
        size = self._documents.pop(name, None)
        if size is not None:
            self.document_bytes -= size
        return self._values.pop(name, None) is not None

    def sweep(self) -> int:
        """Drop every expired key; how many were dropped."""
        now = self.clock.seconds()
        gone = [name for name, at in self._expires.items() if at <= now]
        for name in gone:
            self._delete(name)
        return len(gone)

    def _typed(self, name: bytes, kind: type) -> Any:
        value = self._live(name)
        if value is not None and not isinstance(value, kind):
            raise CommandError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def _collection(self, name: bytes, kind: type[dict[bytes, Any]]) -> dict[bytes, Any]:
        found = self._typed(name, kind)
        if found is None:
            found = self._values[name] = kind()
        return found

    def _emptied(self, name: bytes, value: dict[bytes, Any]) -> None:
        if not value:
            self._delete(name)

    # Strings -------------------------------------------------------------------

    def get(self, name: bytes) -> bytes | None:
        """GET."""
        value = self._typed(name, bytes)
        if value is not None and name in self._documents:
            self._documents.move_to_end(name)
        return value

    def set(self, name: bytes, value: bytes, *options: bytes) -> Status | None:
        """SET key value [EX s] [PX ms] [NX] [XX]."""
        ttl, nx, xx, words = None, False, False, [o.upper() for o in options]
        index = 0
        while index < len(words):
            word = words[index]
            if word in (b"EX", b"PX") and index + 1 < len(words):
                ttl = _number(words[index + 1]) * (1 if word == b"EX" else 0.001)
                index += 2
                continue
            if word not in (b"NX", b"XX"):
                raise CommandError("ERR syntax error")
            nx, xx = nx or word == b"NX", xx or word == b"XX"
            index += 1
        exists = self._live(name) is not None
        if (nx and exists) or (xx and not exists):
            return None
        self._delete(name)
        self._values[name] = bytes(value)
        if ttl is not None:
            self._expires[name] = self.clock.seconds() + ttl
        if name.startswith(_DOCUMENT_PREFIX):
            self._keep_document(name, len(value))
        return OK

    def _keep_document(self, name: bytes, size: int) -> None:
        self._documents[name] = size
        self.document_bytes += size
        while self.document_bytes > self.document_budget and self._documents:
            oldest = next(iter(self._documents))
            self._delete(oldest)

    def mget(self, *names: bytes) -> list[bytes | None]:
        """MGET."""
        return [self._live(n) if isinstance(self._live(n), bytes) else None for n in names]

    def getdel(self, name: bytes) -> bytes | None:
        """GETDEL."""
        value = self._typed(name, bytes)
        self._delete(name)
        return value

    def incr(self, name: bytes) -> int:
        """INCR."""
        value = self._typed(name, bytes)
        try:
            number = int(value or b"0") + 1
        except ValueError:
            raise CommandError("ERR value is not an integer or out of range") from None
        self._values[name] = str(number).encode()
        return number

    def delete(self, *names: bytes) -> int:
        """DEL."""
        return sum(1 for n in names if self._live(n) is not None and self._delete(n))

    def exists(self, *names: bytes) -> int:
        """EXISTS."""
        return sum(1 for n in names if self._live(n) is not None)

    def pexpire(self, name: bytes, ms: bytes | int) -> int:
        """PEXPIRE."""
        if self._live(name) is None:
            return 0
        self._expires[name] = self.clock.seconds() + _number(ms) / 1000
        return 1

    def pttl(self, name: bytes) -> int:
        """PTTL: -2 missing, -1 no expiry, else milliseconds left."""
        if self._live(name) is None:
            return -2
        if name not in self._expires:
            return -1
        return max(0, int((self._expires[name] - self.clock.seconds()) * 1000))

    # Sorted sets ---------------------------------------------------------------

    def zadd(self, name: bytes, score: bytes | float, member: bytes) -> int:
        """ZADD key score member."""
        found = self._collection(name, SortedSet)
        added = member not in found
        found[bytes(member)] = _number(score)
        return int(added)

    def zrem(self, name: bytes, *members: bytes) -> int:
        """ZREM."""
        found = self._typed(name, SortedSet) or {}
        removed = sum(1 for m in members if found.pop(m, None) is not None)
        self._emptied(name, found)
        return removed

    def zcard(self, name: bytes) -> int:
        """ZCARD."""
        return len(self._typed(name, SortedSet) or {})

    def _ordered(self, name: bytes) -> list[tuple[bytes, float]]:
        return sorted((self._typed(name, SortedSet) or {}).items(), key=lambda item: (item[1], item[0]))

    def zrange(self, name: bytes, start: bytes | int, stop: bytes | int, *options: bytes) -> list[bytes]:
        """ZRANGE key start stop [WITHSCORES] (by rank)."""
        ordered = self._ordered(name)
        first, last = int(start), int(stop)
        first = max(0, first + len(ordered) if first < 0 else first)
        last = last + len(ordered) if last < 0 else last
        return self._reply(ordered[first : last + 1], options)

    def zrangebyscore(self, name: bytes, low: bytes, high: bytes, *options: bytes) -> list[bytes]:
        """ZRANGEBYSCORE key min max [WITHSCORES] (inclusive)."""
        lo, hi = _number(low), _number(high)
        return self._reply([(m, s) for m, s in self._ordered(name) if lo <= s <= hi], options)

    def zremrangebyscore(self, name: bytes, low: bytes, high: bytes) -> int:
        """ZREMRANGEBYSCORE (inclusive)."""
        found = self._typed(name, SortedSet) or {}
        lo, hi = _number(low), _number(high)
        gone = [m for m, s in found.items() if lo <= s <= hi]
        for member in gone:
            del found[member]
        self._emptied(name, found)
        return len(gone)

    @staticmethod
    def _reply(items: list[tuple[bytes, float]], options: tuple[bytes, ...]) -> list[bytes]:
        if any(o.upper() == b"WITHSCORES" for o in options):
            return [part for member, score in items for part in (member, _score_text(score))]
        return [member for member, _ in items]

    # Hashes --------------------------------------------------------------------

    def hget(self, name: bytes, field: bytes) -> bytes | None:
        """HGET."""
        return (self._typed(name, Hash) or {}).get(field)

    def hset(self, name: bytes, field: bytes, value: bytes) -> int:
        """HSET key field value."""
        found = self._collection(name, Hash)
        added = field not in found
        found[bytes(field)] = bytes(value)
        return int(added)

    def hash(self, name: bytes) -> dict[bytes, bytes]:
        """A copy of the hash ``name``'s fields (empty: none), for the scripts."""
        return dict(self._typed(name, Hash) or {})

    def hgetall(self, name: bytes) -> list[bytes]:
        """HGETALL: field, value, field, value..."""
        return [part for pair in self.hash(name).items() for part in pair]

    def hdel(self, name: bytes, *fields: bytes) -> int:
        """HDEL."""
        found = self._typed(name, Hash) or {}
        removed = sum(1 for f in fields if found.pop(f, None) is not None)
        self._emptied(name, found)
        return removed

    # Scripts -------------------------------------------------------------------

    def evalsha(self, digest: bytes, count: bytes, *rest: bytes) -> Any:
        """EVALSHA sha numkeys key... arg...: the registered Python equivalent of the script."""
        script = self.scripts.get(digest.decode().lower())
        if script is None:
            raise CommandError("NOSCRIPT No matching script (nopard knows only its own scripts)")
        keys = list(rest[: int(count)])
        return script(self, keys, list(rest[int(count) :]))

    def eval(self, source: bytes, count: bytes, *rest: bytes) -> Any:
        """EVAL script numkeys key... arg...."""
        return self.evalsha(hashlib.sha1(source).hexdigest().encode(), count, *rest)


COMMANDS: dict[bytes, Callable[..., Any]] = {
    name.upper().encode(): getattr(Keyspace, name)
    for name in ("get", "set", "mget", "getdel", "incr", "delete", "exists", "pexpire", "pttl", "zadd", "zrem",
                 "zcard", "zrange", "zrangebyscore", "zremrangebyscore", "hget", "hset", "hgetall", "hdel", "evalsha",
                 "eval")
}
COMMANDS[b"DEL"] = COMMANDS.pop(b"DELETE")


# nopard's Lua scripts, as Python ------------------------------------------------


def _bump(space: Keyspace, keys: list[bytes], args: list[bytes]) -> Any:
    generation = space.incr(keys[1])
    return [space.get(keys[0]), generation]


def _release(space: Keyspace, keys: list[bytes], args: list[bytes]) -> int:
    return space.delete(keys[0]) if space.get(keys[0]) == args[0] else 0


def _renew(space: Keyspace, keys: list[bytes], args: list[bytes]) -> int:
    return space.pexpire(keys[0], args[1]) if space.get(keys[0]) == args[0] else 0


def _admit(space: Keyspace, keys: list[bytes], args: list[bytes]) -> int:
    record, pool, owner_set, owners = keys
    now, ttl = _number(args[1]), _number(args[2])

    def drop(member: bytes) -> None:
        owner = space.hget(owners, member)
        if owner is not None:
            space.zrem(args[8] + owner, member)
            space.hdel(owners, member)
        space.zrem(pool, member)
        space.delete(args[7] + member)

    for member in space.zrangebyscore(pool, b"-inf", str(now).encode()):
        drop(member)
    drop(args[5])
    while space.zcard(owner_set) >= _number(args[3]):
        drop(space.zrange(owner_set, 0, 0)[0])
    while space.zcard(pool) >= _number(args[4]):
        drop(space.zrange(pool, 0, 0)[0])
    expires = now + ttl
    last = space.zrange(pool, -1, -1, b"WITHSCORES")
    if last and _number(last[1]) >= expires:
        expires = _number(last[1]) + 1
    space.set(record, args[0], b"PX", args[2])
    space.zadd(pool, expires, args[5])
    space.zadd(owner_set, expires, args[5])
    space.pexpire(owner_set, args[2])
    space.hset(owners, args[5], args[6])
    return 1


def _settle(space: Keyspace, keys: list[bytes], args: list[bytes]) -> int:
    record, pool, owners = keys
    owner = space.hget(owners, args[0])
    if owner is not None:
        space.zrem(args[1] + owner, args[0])
        space.hdel(owners, args[0])
    space.zrem(pool, args[0])
    if args[2] == b"":
        return 1
    if not space.exists(record):
        return 0
    space.set(record, args[2], b"PX", args[3])
    return 1


BUILTIN_SCRIPTS: dict[str, Script] = {
    stamps.BUMP_SCRIPT: _bump,
    locks.RELEASE_SCRIPT: _release,
    locks.RENEW_SCRIPT: _renew,
    sessions.ADMIT_SCRIPT: _admit,
    sessions.SETTLE_SCRIPT: _settle,
    history.ADD_SCRIPT: history.add_script,
    history.READ_SCRIPT: history.read_script,
}


def retry_after_script(space: Keyspace, keys: list[bytes], args: list[bytes]) -> int:
    """auth/limits.py's RETRY_AFTER_SCRIPT: milliseconds until a login check is allowed (0: now)."""
    now, window, attempts = _number(args[0]), _number(args[1]), int(args[2])
    wait = 0.0
    for name in keys:
        space.zremrangebyscore(name, b"-inf", str(now - window).encode())
        count = space.zcard(name)
        if count >= attempts:
            freeing = space.zrange(name, count - attempts, count - attempts, b"WITHSCORES")[1]
            wait = max(wait, _number(freeing) + window - now)
    return int(wait)


def failed_login_script(space: Keyspace, keys: list[bytes], args: list[bytes]) -> int:
    """auth/limits.py's FAILED_SCRIPT: count one failure under each key."""
    for name in keys:
        space.zadd(name, args[0], args[2])
        space.pexpire(name, args[1])
    return 1
