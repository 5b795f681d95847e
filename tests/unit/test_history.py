"""The last day in buckets (nopard.domain.history) and its recorder (nopard.ops.history) on a Clock,
with the upstream client's real Breaker."""

from __future__ import annotations

from dataclasses import dataclass

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger

from nopard.cluster.history import RedisDays
from nopard.cluster.link import RedisLink
from nopard.domain.history import (
    BUCKET_SECONDS,
    BUCKETS,
    MAX_UPSTREAMS,
    BucketRing,
    breaker_spans,
    bucket_index,
    merge,
    spread,
    window,
)
from nopard.jobs.sync import JobReport
from nopard.ops.history import History
from nopard.upstream.breaker import Breaker

DAY = BUCKET_SECONDS * BUCKETS
moments = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(moments, st.floats(min_value=0, max_value=3 * DAY, allow_nan=False))
def test_a_span_is_cut_into_buckets_that_add_up_to_it(start: float, length: float) -> None:
    pieces = spread(start, start + length)
    assert abs(sum(seconds for _, seconds in pieces) - length) < 1e-6 * max(1.0, start)
    assert all(0 < seconds <= BUCKET_SECONDS for _, seconds in pieces)
    indexes = [index for index, _ in pieces]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes))) if indexes else start + length == start
    if pieces:
        assert indexes[0] == bucket_index(start)


@given(moments)
def test_the_window_is_a_day_ending_with_the_bucket_of_now(now: float) -> None:
    day = window(now)
    assert len(day) == BUCKETS and day[-1] == bucket_index(now)
    assert day[0] * BUCKET_SECONDS <= now - DAY + BUCKET_SECONDS


@given(st.booleans(), st.lists(st.tuples(st.floats(min_value=0, max_value=1000), st.sampled_from(["open", "closed"]))))
def test_breaker_spans_cover_the_span_and_alternate(open_at_start: bool, transitions: list[tuple[float, str]]) -> None:
    spans = breaker_spans(open_at_start, transitions, 100.0, 900.0)
    assert spans[0][0] == 100.0 and spans[-1][1] == 900.0
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[0][2] == open_at_start


figures = st.dictionaries(st.sampled_from(["served:HIT", "served:MISS", "sync:runs", "store:bytes", "up:u", "down:u"]),
                          st.integers(min_value=0, max_value=10**9).map(float))


@given(st.lists(figures, max_size=5))
def test_merging_instances_does_not_depend_on_their_order(records: list[dict[str, float]]) -> None:
    assert merge(records) == merge(list(reversed(records)))
    merged = merge(records)
    for field in merged:
        values = [r[field] for r in records if field in r]
        expected = sum(values) if field.startswith(("served:", "sync:")) else max(values)
        assert abs(merged[field] - expected) <= 1e-6 * max(1.0, expected)


def test_the_ring_keeps_a_day_in_fixed_memory() -> None:
    """A week of records at every bucket, with ever new upstreams and unknown fields: the ring holds
    at most BUCKETS buckets, each with a bounded set of fields, and only the last day."""
    ring = BucketRing()
    start = 1_800_000_000.0
    for step in range(7 * BUCKETS):
        at = start + step * BUCKET_SECONDS
        for status in ("HIT", "MISS", "BOGUS"):
            ring.add(at, f"served:{status}", 1)
        ring.add(at, "nonsense", 1)
        for upstream in range(MAX_UPSTREAMS + 5):
            ring.add(at, f"down:http://u{step}-{upstream}.test", 10)
    fields = list(ring.fields())
    assert len(fields) <= BUCKETS * (2 + MAX_UPSTREAMS)
    assert not any("BOGUS" in f or f == "nonsense" for f in fields)
    now = start + (7 * BUCKETS - 1) * BUCKET_SECONDS
    day = ring.day(now)
    assert len(day) == BUCKETS and all(bucket["served:HIT"] == 1 for _, bucket in day)
    ring.add(now - 2 * DAY, "served:HIT", 1)  # older than a day: not kept, nothing overwritten
    assert ring.bucket(bucket_index(now - 2 * DAY)) == {}
    assert [b["served:HIT"] for _, b in ring.day(now)] == [1] * BUCKETS


@dataclass
class Watched:
    """An upstream as History reads it: its shown URL and its breaker."""

    shown_url: str
    breaker: Breaker


class Store:
    """A store whose size is measured (StoreSize's interface)."""

    def __init__(self) -> None:
        self.bytes: int | None = 5000
        self.measured = 0

    async def refresh(self) -> None:
        self.measured += 1


@pytest_twisted.ensureDeferred
async def test_an_outage_shorter_than_a_tick_is_recorded_and_sizes_once_a_bucket() -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    breaker = Breaker(clock.seconds, threshold=1)
    store = Store()
    history = History(clock, lambda: [Watched("http://up.example.test", breaker)], store,
                      mirror=lambda: (3000, 10_000), tick=60)
    history.startService()
    try:
        clock.advance(10)
        breaker.failed()  # down for 20 s, between two ticks
        clock.advance(20)
        breaker.succeeded()
        for _ in range(10):
            clock.advance(60)
        day = await history.day()
    finally:
        history.stopService()
    down = day.total("down:http://up.example.test")
    up = day.total("up:http://up.example.test")
    assert down == 20 and abs(up + down - 630) < 1e-6
    assert store.measured <= 4  # the 630 s touch at most 3 buckets, and the page's read may add one
    sizes = [b for b in day.buckets if "store:bytes" in b]
    assert sizes and sizes[-1]["store:bytes"] == 5000 and sizes[-1]["mirror:limit"] == 10_000
    assert sizes[-1]["mirror:bytes"] == 3000


def test_requests_and_sync_runs_are_counted_in_their_bucket() -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    history = History(clock)
    for status in ("HIT", "HIT", "MISS", None, "NONSENSE"):
        history.served(status)
    history.synced(JobReport("refresh", checked=10, changed=2, tarballs=3))
    history.synced(JobReport("refresh", skipped="the upstream is down"))
    bucket = history.ring.bucket(bucket_index(clock.seconds()))
    assert bucket == {"served:HIT": 2, "served:MISS": 1, "sync:runs": 1, "sync:checked": 10, "sync:changed": 2,
                      "sync:tarballs": 3, "sync:failed": 0}


@pytest_twisted.ensureDeferred
async def test_figures_for_an_unreachable_redis_are_kept_a_day_at_most() -> None:
    """Redis never reached for two days: what waits for it stays within a day's buckets, and the page
    shows this instance's own day meanwhile."""
    clock = Clock()
    clock.advance(1_800_000_000)
    link = RedisLink("redis://127.0.0.1:9", clock, Logger())  # never connected: down
    history = History(clock, shared=RedisDays(link, clock, BUCKET_SECONDS, DAY))
    for _ in range(2 * BUCKETS):
        history.served("HIT")
        await history.tick()
        clock.advance(BUCKET_SECONDS)
    history.served("MISS")
    assert history.unsent <= BUCKETS + 1
    day = await history.day()
    assert day.total("served:HIT") == BUCKETS - 1 and day.total("served:MISS") == 1


@pytest_twisted.ensureDeferred
async def test_a_mirror_size_measured_mid_bucket_shows_at_once_and_the_store_is_walked_once_a_bucket() -> None:
    clock = Clock()
    clock.advance(1_800_000_000 - 1_800_000_000 % BUCKET_SECONDS)  # the start of a bucket
    mirrored: list[tuple[int | None, int | None]] = [(None, 10_000)]  # before the evict job's first measure
    store = Store()
    history = History(clock, store=store, mirror=lambda: mirrored[-1])
    await history.tick()
    clock.advance(60)
    mirrored.append((3000, 10_000))  # the evict job measured the mirror
    day = await history.day()
    assert day.buckets[-1]["mirror:bytes"] == 3000 and day.buckets[-1]["mirror:limit"] == 10_000
    for _ in range(10):
        clock.advance(5)
        await history.tick()
    assert store.measured == 1
