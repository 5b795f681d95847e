"""The session stores' bounds (MemorySessions on a fake clock, RedisSessions on a real redis-server):
sessions held never exceed the per-address and total bounds, and a new session always opens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger

from nopard.auth.limits import address_group
from nopard.auth.weblogin import WebLogins
from nopard.cluster.link import RedisLink
from nopard.cluster.sessions import MemorySessions, RedisSessions
from nopard.domain.errors import NotFound
from tests.polling import poll_until_async
from tests.redis_server import shared_state_url


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Accepting:
    """Accounts that take any password (the stores, not passwords, are under test)."""

    async def login(self, name: str, password: str, email: Any = None, address: str | None = None,
                    otp: str | None = None, session: bool = False) -> str:
        return f"token-of-{name}"

    async def logout(self, token: str) -> bool:
        return True


async def live(store: MemorySessions | RedisSessions, keys: list[str]) -> int:
    """How many of ``keys`` the store still holds."""
    return len([key for key in keys if await store.get(key) is not None])


async def check_bounds(store: MemorySessions | RedisSessions) -> None:
    """Per owner and total bounds, oldest evicted first; a settled record is out of the pool's counts."""
    flood = [f"flood-{n}" for n in range(12)]
    for key in flood:
        assert await store.admit("login", key, {"k": key}, 300, "10.0.0.1", 3, 5)
    assert await live(store, flood) == 3
    assert await live(store, flood[-3:]) == 3  # the newest kept
    others = [f"other-{n}" for n in range(4)]
    for n, key in enumerate(others):
        assert await store.admit("login", key, {"k": key}, 300, f"10.0.1.{n}", 3, 5)
    assert await live(store, flood + others) == 5  # the total holds; the oldest went first
    assert await live(store, others) == 4
    assert await store.settle("login", others[0], {"k": "done"}, 60)
    assert await store.admit("login", "newcomer", {}, 300, "10.0.2.1", 3, 5)
    assert await store.admit("login", "newcomer2", {}, 300, "10.0.2.2", 3, 5)
    assert await store.get(others[0]) == {"k": "done"}  # settled: never evicted
    assert await store.get("newcomer") is not None and await store.get("newcomer2") is not None
    assert await store.take("newcomer", "login") == {}
    assert not await store.settle("login", "newcomer", {}, 60)  # taken: gone


@pytest_twisted.ensureDeferred
async def test_memory_sessions_are_bounded_per_owner_and_in_all() -> None:
    """In one process: at most 3 per owner and 5 in all held; newcomers always admitted."""
    clock = Clock()
    store = MemorySessions(clock)
    await check_bounds(store)
    assert store.held("login") <= 5


@pytest_twisted.ensureDeferred
async def test_memory_sessions_expire_and_stop_counting() -> None:
    """An expired session is gone and no longer counts against its owner."""
    clock = Clock()
    store = MemorySessions(clock)
    for n in range(3):
        await store.admit("login", f"s{n}", {}, 300, "a", 3, 100)
    clock.advance(301)
    assert store.held("login") == 0
    await store.admit("login", "late", {}, 300, "a", 3, 100)
    assert store.held("login", "a") == 1 and await store.ttl("late") == 300


@pytest_twisted.ensureDeferred
async def test_web_login_sessions_expire_and_a_flood_never_refuses_a_newcomer() -> None:
    """Sessions vanish after their TTL; past the bounds the oldest waiting ones go, nobody is refused."""
    clock = Clock()
    store = MemorySessions(clock)
    logins = WebLogins(Accepting(), clock, store, ttl=300, max_sessions=4, max_per_address=2)  # type: ignore[arg-type]
    first = await logins.start(address="10.0.0.1")
    for _ in range(10):
        await logins.start(address="10.0.0.1")
    assert store.held("login", "10.0.0.1") == 2
    with pytest.raises(NotFound):
        await logins.session(first)
    fresh = await logins.start(address="10.0.0.2")
    assert await logins.submit(fresh, {"username": "alice", "password": "pw"}, None) == "alice"
    assert await logins.poll(fresh) == "token-of-alice"
    clock.advance(301)
    assert store.held() == 0


def test_ipv6_clients_count_per_slash_64() -> None:
    """Addresses of one IPv6 /64 are one client; IPv4 (also mapped into IPv6) is its own address."""
    assert address_group("2001:db8:1:2::1") == address_group("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("::ffff:192.0.2.7") == address_group("192.0.2.7") == "192.0.2.7"
    assert address_group(None) == ""


@pytest.fixture(params=["redis-server", "supervisor"])
def redis_stores(request: pytest.FixtureRequest) -> Iterator[list[RedisSessions]]:
    """Two instances' session stores over one redis-server, or two workers' over their supervisor."""
    with shared_state_url(request.param) as url:
        yield from session_stores(url)


def session_stores(url: str) -> Iterator[list[RedisSessions]]:
    links = [RedisLink(url, reactor, Logger(), probe_interval=0.05) for _ in range(2)]
    yield [RedisSessions(link, MemorySessions(reactor)) for link in links]
    for link in links:
        pytest_twisted.blockon(Deferred.fromCoroutine(link.stop()))


async def started(stores: list[RedisSessions]) -> list[RedisSessions]:
    for store in stores:
        store._link.start()
        await poll_until_async(lambda store=store: store._link.up, sleep, "the Redis link up", 10)
    return stores


@pytest_twisted.ensureDeferred
async def test_redis_sessions_are_bounded_per_owner_and_in_all(redis_stores: list[RedisSessions]) -> None:
    """The same bounds through Redis: nothing falls back to memory."""
    first, _second = await started(redis_stores)
    await check_bounds(first)
    assert first._fallback.held() == 0


@pytest_twisted.ensureDeferred
async def test_redis_bounds_hold_across_instances(redis_stores: list[RedisSessions]) -> None:
    """A flood spread over two instances from one address still holds only that address's bound."""
    first, second = await started(redis_stores)
    clock = reactor
    logins = [WebLogins(Accepting(), clock, store, max_sessions=50, max_per_address=3)  # type: ignore[arg-type]
              for store in (first, second)]
    opened = [await logins[n % 2].start(address="10.0.0.1") for n in range(20)]
    waiting = 0
    for session_id in opened:
        try:
            await logins[0].session(session_id)
            waiting += 1
        except NotFound:
            pass
    assert waiting == 3
    fresh = await logins[1].start(address="10.0.0.2")
    assert await logins[0].submit(fresh, {"username": "alice", "password": "pw"}, None) == "alice"
    assert await logins[1].poll(fresh) == "token-of-alice"
    for _ in range(10):  # the claimed one is out of the pool, the pool's sets stay small
        await logins[0].start(address="10.0.0.2")
    assert await first._link.call("zcard", b"nopard:sessions:login") <= 6
