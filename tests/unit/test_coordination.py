"""nopard.cluster.coordination against a real redis-server: two RedisCoordination objects
stand for two instances; killing the server makes them degraded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from nopard.cluster.coordination import RedisCoordination
from nopard.cluster.feed import ChangeFeed
from nopard.cluster.link import POOL_SIZE, RedisLink, RedisPool
from nopard.cluster.sessions import MemorySessions, RedisSessions
from nopard.cluster.stamps import decode_document, encode_document
from nopard.domain.prepared import CachedDocument, prepare
from nopard.settings.config import ConfigError, load_settings
from nopard.settings.values import redis_arguments
from nopard.settings.values import redis_arguments as parse_redis_url
from tests.polling import poll_until_async
from tests.redis_server import RedisServer, shared_state_url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Instance:
    """What one nopard instance holds of Redis."""

    def __init__(self, url: str, lock_ttl: float = 1.0) -> None:
        self.forgotten = 0
        self.events: list[dict[str, Any]] = []  # what the coordination logged
        self.link = RedisLink(url, reactor, Logger(), probe_interval=0.05)
        self.coordination = RedisCoordination(self.link, reactor, Logger(observer=self.events.append),
                                              self.forget, lock_ttl=lock_ttl)
        self.sessions = RedisSessions(self.link, MemorySessions(reactor))

    def forget(self) -> None:
        self.forgotten += 1

    async def start(self) -> Instance:
        self.link.start()
        await poll_until_async(lambda: self.link.up, sleep, "the Redis link up", 10)
        return self


def two_instances(url: str) -> Iterator[list[Instance]]:
    made = [Instance(url), Instance(url)]
    yield made
    for instance in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(instance.link.stop()))


@pytest.fixture
def instances(redis_server: RedisServer) -> Iterator[list[Instance]]:
    yield from two_instances(redis_server.url)


@pytest.fixture(params=["redis-server", "supervisor"])
def sharing(request: pytest.FixtureRequest) -> Iterator[list[Instance]]:
    """Two instances over a real redis-server, or two workers over their supervisor's keyspace."""
    with shared_state_url(request.param) as url:
        yield from two_instances(url)


def test_redis_urls() -> None:
    """redis://[:password@]host[:port][/db]; anything else is refused, naming the setting."""
    assert parse_redis_url("redis://:s3cret@redis.example:6380/2") == {
        "host": "redis.example", "port": 6380, "dbid": 2, "password": "s3cret", "username": None,
    }
    assert parse_redis_url("redis://127.0.0.1")["port"] == 6379
    for bad in ("http://redis.example", "redis://", "redis://host/db1", "redis://host:99999"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)
    with pytest.raises(ConfigError, match="NOPARD_REDIS_URL"):
        load_settings({}, {"NOPARD_REDIS_URL": "http://x.example"}, cwd="/srv")
    assert load_settings({}, {"REDIS_URL": "redis://a.example"}, cwd="/srv").redis_url == "redis://a.example"
    both = {"REDIS_URL": "redis://a.example", "NOPARD_REDIS_URL": "redis://b.example"}
    assert load_settings({}, both, cwd="/srv").redis_url == "redis://b.example"


def test_shared_documents_survive_the_round_trip() -> None:
    """What one instance puts in Redis is byte for byte what the other serves."""
    prepared = prepare({"name": "a", "versions": {"1.0.0": {"name": "a"}}, "time": {"modified": "x"}},
                       "http://registry.example")
    entry = CachedDocument(prepared, "upstream", 12.5, 'W/"e"', "epoch.3")
    again = decode_document(encode_document(entry))
    assert again == entry
    with pytest.raises(ValueError):
        decode_document(encode_document(entry)[:-1])


@pytest_twisted.ensureDeferred
async def test_a_bump_changes_the_stamp_every_instance_sees(sharing: list[Instance]) -> None:
    first, second = [await instance.start() for instance in sharing]
    before = await second.coordination.stamp("pkg")
    assert before == await first.coordination.stamp("pkg")
    bumped = await first.coordination.bump("pkg")
    assert bumped != before and await second.coordination.stamp("pkg") == bumped
    assert await second.coordination.stamp("other") == before.rsplit(".", 1)[0] + ".0"


@pytest_twisted.ensureDeferred
async def test_a_lock_is_held_against_other_instances_and_expires_with_its_holder(
    instances: list[Instance], redis_server: RedisServer
) -> None:
    first, second = [await instance.start() for instance in instances]
    order: list[str] = []

    async def hold(instance: Instance, label: str, seconds: float) -> None:
        async with instance.coordination.lock("doc:pkg"):
            order.append(label + " in")
            await sleep(seconds)
            order.append(label + " out")

    # Held longer than the lock's TTL: renewal keeps the other instance out.
    both = [Deferred.fromCoroutine(hold(first, "first", 2.5))]
    await sleep(0.1)
    both.append(Deferred.fromCoroutine(hold(second, "second", 0)))
    for deferred in both:
        await deferred
    assert order == ["first in", "first out", "second in", "second out"]

    # A holder that stops renewing (a killed instance) blocks the others for one TTL at most.
    # Counted, not timed: second gets the lock itself (its token in Redis, no "gave up waiting").
    redis_server.command("SET", "nopard:lock:doc:gone", "dead-instance", "PX", "1000")
    async with second.coordination.lock("doc:gone"):
        holder = redis_server.command("GET", "nopard:lock:doc:gone")
    assert b"dead-instance" not in holder and holder != b"$-1\r\n"
    assert not any(e.get("event") == "lock-timeout" for e in second.events)


@pytest_twisted.ensureDeferred
async def test_a_holder_that_lost_its_lock_neither_renews_nor_releases_the_new_one(
    instances: list[Instance], redis_server: RedisServer
) -> None:
    """A lock that expired while held and was taken by another instance keeps the new holder's
    token through the old holder's renewals and its release (both compare the token)."""
    first, _ = [await instance.start() for instance in instances]
    async with first.coordination.lock("doc:taken"):
        # As if first stalled past the TTL and another instance took the lock meanwhile.
        redis_server.command("SET", "nopard:lock:doc:taken", "new-holder", "PX", "60000")
        await poll_until_async(lambda: any(e.get("event") == "lock-lost" for e in first.events), sleep,
                               "a renewal that finds the lock taken")
    assert redis_server.command("GET", "nopard:lock:doc:taken").endswith(b"new-holder\r\n")
    assert int(redis_server.command("PTTL", "nopard:lock:doc:taken")[1:]) > 30_000


@pytest_twisted.ensureDeferred
async def test_sessions_are_shared_and_handed_out_once(sharing: list[Instance]) -> None:
    first, second = [await instance.start() for instance in sharing]
    assert await first.sessions.put("s1", {"token": "t"}, 60)
    assert await second.sessions.get("s1") == {"token": "t"}
    assert 0 < await second.sessions.ttl("s1") <= 60
    assert await second.sessions.take("s1") == {"token": "t"}
    assert await first.sessions.take("s1") is None


@pytest_twisted.ensureDeferred
async def test_without_redis_nothing_fails_and_recovery_starts_a_new_epoch(
    instances: list[Instance], redis_server: RedisServer
) -> None:
    """Down: stamps are None (trust no cache), locks are in-process, sessions in memory; back: a new epoch."""
    first, _second = [await instance.start() for instance in instances]
    stamp = await first.coordination.stamp("pkg")
    redis_server.kill()
    await poll_until_async(lambda: not first.link.up, sleep, "the Redis link down", 10)
    assert first.coordination.state == "down"
    assert await first.coordination.stamp("pkg") is None
    assert await first.coordination.bump("pkg") is None
    async with first.coordination.lock("doc:pkg"):
        pass
    assert await first.sessions.put("s2", {"token": "u"}, 60)
    assert await first.sessions.take("s2") == {"token": "u"}
    forgotten = first.forgotten
    redis_server.restart()
    await poll_until_async(lambda: first.link.up, sleep, "the Redis link back up", 15)
    assert first.forgotten == forgotten + 1  # memory dropped before Redis is used again
    new = await first.coordination.stamp("pkg")
    assert new is not None and new.split(".")[0] != stamp.split(".")[0]


@pytest_twisted.ensureDeferred
async def test_the_pool_adapter_reports_a_lost_pool(redis_server: RedisServer) -> None:
    """RedisPool builds txredisapi's pool through its public factory API and learns when the
    last connection is gone: this fails first if txredisapi changes that API."""
    pool = RedisPool(redis_arguments(redis_server.url), reactor)
    try:
        await poll_until_async(lambda: pool.connected == POOL_SIZE, sleep, "the whole pool connected", 10)
        assert await pool.client.ping() in (b"PONG", "PONG")
        empty = pool.when_empty()
        assert not empty.called
        redis_server.kill()
        await poll_until_async(lambda: empty.called, sleep, "the pool to report it is empty", 10)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_losing_every_connection_makes_nopard_degraded_before_the_next_probe(
    redis_server: RedisServer,
) -> None:
    """The probe runs seldom here: the pool's word makes the link go down first."""
    events: list[dict[str, Any]] = []
    link = RedisLink(redis_server.url, reactor, Logger(observer=events.append), probe_interval=1.0)
    link.start()
    try:
        await poll_until_async(lambda: link.up, sleep, "the Redis link up", 10)
        redis_server.kill()
        await poll_until_async(lambda: not link.up, sleep, "the Redis link down", 5)
        [down] = [event for event in events if event.get("event") == "redis-down"]
        assert down["reason"] == "connection lost"
    finally:
        await link.stop()


class Listener:
    """One process's change feed: what it was told, and how often it forgot everything."""

    def __init__(self, url: str) -> None:
        self.changed: list[str] = []
        self.resets = 0
        self.link = RedisLink(url, reactor, Logger(), probe_interval=0.05)
        self.feed = ChangeFeed(url, self.link, reactor, Logger(), self.changed.append, self.reset)

    def reset(self) -> None:
        self.resets += 1

    async def start(self) -> Listener:
        self.link.start()
        self.feed.start()
        await poll_until_async(lambda: self.link.up and self.feed.live, sleep, "the feed subscribed", 10)
        return self

    async def stop(self) -> None:
        await self.feed.stop()
        await self.link.stop()


@pytest.fixture(params=["redis-server", "supervisor"])
def any_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real redis-server's URL, or a supervisor's keyspace's."""
    with shared_state_url(request.param) as url:
        yield url


@pytest_twisted.ensureDeferred
async def test_a_change_announced_by_one_process_reaches_every_subscribed_one(any_url: str) -> None:
    first, second = [await Listener(any_url).start() for _ in range(2)]
    try:
        assert first.resets == second.resets == 1  # subscribing forgets what may have been missed
        await first.feed.announce("@scope/pkg")
        await poll_until_async(lambda: second.changed == ["@scope/pkg"], sleep, "the news", 5)
        assert first.changed == ["@scope/pkg"]  # its own news too: harmless
    finally:
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_a_feed_that_lost_redis_is_not_live_and_forgets_everything_when_back(
    redis_server: RedisServer,
) -> None:
    listener = await Listener(redis_server.url).start()
    try:
        redis_server.kill()
        await poll_until_async(lambda: not listener.feed.live, sleep, "the feed down", 10)
        await listener.feed.announce("pkg")  # never raises: the change itself goes on
        redis_server.restart()
        await poll_until_async(lambda: listener.feed.live, sleep, "the feed back", 15)
        assert listener.resets == 2 and listener.feed.subscriptions == 2
    finally:
        await listener.stop()


class Hearing(Instance):
    """An instance whose stamps hear the change feed, wired as service.open_coordination does."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.stamps = self.coordination.stamp_keeper
        self.feed = ChangeFeed(url, self.link, reactor, Logger(), self.stamps.heard, self.stamps.reset)
        self.stamps.announce = self.feed.announce
        self.stamps.news_arrives = lambda: self.feed.live

    async def start(self) -> Hearing:
        self.feed.start()
        await super().start()
        await poll_until_async(lambda: self.feed.live, sleep, "the feed subscribed", 10)
        return self

    async def stop(self) -> None:
        await self.feed.stop()
        await self.link.stop()


async def stamp_becomes(instance: Instance, name: str, wanted: str | None, timeout: float = 5.0) -> bool:
    """Whether ``instance`` answers ``wanted`` as ``name``'s stamp within ``timeout`` (news travels)."""
    for _ in range(int(timeout / 0.05)):
        if await instance.coordination.stamp(name) == wanted:
            return True
        await sleep(0.05)
    return False


@pytest_twisted.ensureDeferred
async def test_a_stamp_is_kept_while_the_feed_is_live_and_news_of_a_change_anywhere_voids_it(
    redis_server: RedisServer,
) -> None:
    """A warm request asks Redis nothing; a bump or a new epoch through another instance shows
    on this one as soon as the news comes."""
    first, second = Hearing(redis_server.url), Hearing(redis_server.url)
    try:
        await first.start()
        await second.start()
        stamp = await second.coordination.stamp("pkg")
        before = redis_server.calls()
        for _ in range(20):
            assert await second.coordination.stamp("pkg") == stamp
        assert redis_server.calls().get("mget") == before.get("mget")  # no round trip

        bumped = await first.coordination.bump("pkg")
        assert bumped != stamp
        assert await stamp_becomes(second, "pkg", bumped)

        first.link.mark_down("test: as if first lost Redis")  # its recovery starts a new epoch
        await poll_until_async(lambda: first.link.up, sleep, "first back", 10)
        new = await first.coordination.stamp("pkg")
        assert new.split(".")[0] != bumped.split(".")[0]
        assert await stamp_becomes(second, "pkg", new)
    finally:
        await first.stop()
        await second.stop()
