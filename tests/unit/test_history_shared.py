"""The status page's day shared by instances: through a real redis-server, and through the keyspace a
NOPARD_WORKERS supervisor serves its workers (nopard.cluster.history's scripts in Python)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger

from nopard.cluster.history import MAX_FIELDS, RedisDays, bucket_key
from nopard.cluster.link import RedisLink
from nopard.domain.history import BUCKET_SECONDS, BUCKETS, bucket_index
from nopard.ops.history import History
from nopard.upstream.breaker import Breaker
from tests.polling import poll_until_async
from tests.redis_server import RedisServer, shared_state_url

DAY = BUCKET_SECONDS * BUCKETS
URL = "http://up.example.test"


@dataclass
class Watched:
    shown_url: str
    breaker: Breaker


class Store:
    def __init__(self, size: int) -> None:
        self.bytes = size

    async def refresh(self) -> None:
        pass


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def linked(url: str) -> RedisLink:
    link = RedisLink(url, reactor, Logger(), probe_interval=0.05)
    link.start()
    await poll_until_async(lambda: link.up, sleep, "the Redis link up", 10)
    return link


@pytest.fixture(params=["redis-server", "supervisor"])
def shared_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with shared_state_url(request.param) as url:
        yield url


@pytest_twisted.ensureDeferred
async def test_two_instances_see_one_day(shared_url: str) -> None:
    """Requests add up; the store's size and an upstream's down time are the most either saw; a sync
    run on one instance shows on the other's page."""
    clock = Clock()
    clock.advance(1_800_000_000)
    links = [await linked(shared_url), await linked(shared_url)]
    try:
        breakers = [Breaker(clock.seconds, threshold=1), Breaker(clock.seconds, threshold=1)]
        made = [History(clock, lambda b=b: [Watched(URL, b)], Store(size),  # type: ignore[misc]
                        shared=RedisDays(link, clock, BUCKET_SECONDS, DAY))
                for b, size, link in zip(breakers, (5000, 6000), links, strict=True)]
        first, second = made
        for _ in range(3):
            first.served("HIT")
        second.served("HIT")
        second.served("MISS")
        breakers[0].failed()
        clock.advance(30)
        breakers[0].succeeded()
        clock.advance(10)
        await first.tick()
        await second.tick()
        second.synced(type("Report", (), {"skipped": None, "checked": 4, "changed": 1, "tarballs": 2,
                                          "failure_count": 0})())
        for _ in range(100):  # the run is sent at once, not at the next tick: on another connection
            day = await first.day()
            if day.total("sync:runs"):
                break
            await sleep(0.05)
        assert day.total("served:HIT") == 4 and day.total("served:MISS") == 1
        assert day.total(f"down:{URL}") == 30 and day.total(f"up:{URL}") == 40  # the second saw it up all along
        assert max(b.get("store:bytes", 0) for b in day.buckets) == 6000
        assert day.total("sync:runs") == 1 and day.total("sync:changed") == 1
        assert (await second.day()).total("served:HIT") == 4
        # This instance's own ring still holds only its own requests.
        assert first.ring.bucket(bucket_index(clock.seconds()))["served:HIT"] == 3
    finally:
        for link in links:
            await link.stop()


@pytest_twisted.ensureDeferred
async def test_shared_buckets_expire_a_day_after_and_hold_a_bounded_number_of_fields() -> None:
    with RedisServer() as server:
        link = await linked(server.url)
        try:
            clock = Clock()
            clock.advance(1_800_000_000)
            days = RedisDays(link, clock, BUCKET_SECONDS, DAY)
            index = bucket_index(clock.seconds())
            await days.add({index: {f"down:http://u{n}.test": 1.0 for n in range(MAX_FIELDS + 20)}})
            assert int(server.command("HLEN", bucket_key(index)).strip()[1:]) == MAX_FIELDS
            ttl = int(server.command("PTTL", bucket_key(index)).strip()[1:]) / 1000
            assert DAY < ttl <= DAY + BUCKET_SECONDS
            server.kill()
            await poll_until_async(lambda: not link.up, sleep, "the link down", 10)
            history = History(clock, shared=days)
            history.served("HIT")
            assert (await history.day()).total("served:HIT") == 1  # Redis down: this instance's own day
        finally:
            await Deferred.fromCoroutine(link.stop())
