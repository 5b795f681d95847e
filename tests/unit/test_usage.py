"""The record of use (nopard.mirror.usage) and the refresh by use (nopard.domain.usage, the sync job).

Use is counted in memory and flushed as one compare-and-swap per shard touched: N requests
cost no store write, a flush costs one per shard, and instances flushing the same shard
merge. A refresh run asks the upstream only for the documents the schedule by use says are
due: the used ones every META_TTL, unused ones daily.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nopard.domain import usage
from nopard.domain.usage import DAY, HOUR, WEEK, merged, refresh_due, refresh_interval
from nopard.mirror.usage import FLUSH_SECONDS, STOP_FLUSH_SECONDS, UsageFlusher, UsageLog
from nopard.storage import keys
from tests.unit.mirror_harness import FakeRegistry, packument
from tests.unit.mirror_harness import build as build_mirror
from tests.unit.route_harness import build
from tests.unit.test_route_budgets import CountingStorage

NOW = 1_800_000_000.0
TTL = 300.0


@pytest.mark.parametrize(("idle", "every"), [
    (0.0, TTL), (DAY - 1, TTL), (DAY, 6 * HOUR), (WEEK - 1, 6 * HOUR), (WEEK, DAY), (100 * DAY, DAY), (None, DAY),
])
def test_the_refresh_schedule_by_use(idle: float | None, every: float) -> None:
    """Used in the last day: every META_TTL; in the last week: every 6 hours; longer ago or never: daily."""
    assert refresh_interval(None if idle is None else NOW - idle, NOW, TTL) == every


def test_a_long_meta_ttl_is_never_shortened() -> None:
    assert refresh_interval(NOW, NOW, 2 * DAY) == 2 * DAY
    assert refresh_interval(None, NOW, 2 * DAY) == 2 * DAY


@pytest.mark.parametrize(("fetched_ago", "used_ago", "due"), [
    (TTL - 100, 0.0, True),  # stale before the next run (interval 100): refreshed now
    (TTL - 101, 0.0, False),
    (6 * HOUR - 100, 2 * DAY, True),
    (5 * HOUR, 2 * DAY, False),
    (12 * HOUR, None, False),  # never used: daily
    (DAY, None, True),
])
def test_refresh_due(fetched_ago: float, used_ago: float | None, due: bool) -> None:
    used = None if used_ago is None else NOW - used_ago
    assert refresh_due(NOW - fetched_ago, used, NOW, TTL, 100.0) is due


def test_a_package_without_a_copy_is_always_due() -> None:
    assert refresh_due(None, None, NOW, TTL, 100.0)


times = st.integers(min_value=0, max_value=2_000_000_000)
records = st.dictionaries(
    st.sampled_from(["a", "b", "@s/c"]),
    st.fixed_dictionaries({"used": times, "files": st.dictionaries(st.sampled_from(["a-1.tgz", "a-2.tgz"]), times)}),
)


@given(records, records, records)
def test_merging_is_commutative_associative_and_idempotent(a: dict, b: dict, c: dict) -> None:
    """So instances may flush in any order, and a retried flush counts nothing twice."""
    assert merged(a, b) == merged(b, a)
    assert merged(merged(a, b), c) == merged(a, merged(b, c))
    assert merged(merged(a, b), b) == merged(a, b)


@given(records, records)
def test_merging_keeps_the_later_time(a: dict, b: dict) -> None:
    both = merged(a, b)
    for source in (a, b):
        for name, entry in source.items():
            assert both[name]["used"] >= entry["used"]
            assert all(both[name]["files"][f] >= t for f, t in entry["files"].items())


def test_a_damaged_record_loses_only_its_odd_entries() -> None:
    assert merged({"a": {"used": "x", "files": {"a-1.tgz": True, "a-2.tgz": 5}}, "b": 3}, {}) == {
        "a": {"used": 0, "files": {"a-2.tgz": 5}}}


@pytest_twisted.ensureDeferred
async def test_many_requests_cost_one_write_per_shard_at_the_flush(tmp_path: Path) -> None:
    """300 document and tarball requests for three packages write nothing to the store; the flush
    writes one object per shard they hash to, and a flush with nothing new writes nothing."""
    names = ("alpha", "beta", "gamma")
    counting: list[CountingStorage] = []
    app = build(tmp_path, upstream=FakeRegistry({n: packument(n, "1.0.0") for n in names}),
                wrap_storage=lambda inner: counting.append(CountingStorage(inner)) or counting[0])
    for name in names:  # the first fetch of each stores its document and tarball
        assert (await app.call("GET", f"/{name}/-/{name}-1.0.0.tgz")).status == 200
    before = counting[0].writes
    for _ in range(50):
        for name in names:
            assert (await app.call("GET", f"/{name}")).status == 200
            assert (await app.call("GET", f"/{name}/-/{name}-1.0.0.tgz")).status == 200
    assert counting[0].writes == before
    assert app.usage is not None
    await app.usage.flush()
    shards = {keys.usage_shard_key(name) for name in names}
    assert counting[0].writes == before + len(shards)
    await app.usage.flush()
    assert counting[0].writes == before + len(shards)
    recorded = await app.usage.recorded()
    assert {name: recorded[name]["files"] for name in names} == {
        name: {f"{name}-1.0.0.tgz": int(app.clock.seconds())} for name in names}


@pytest_twisted.ensureDeferred
async def test_instances_flushing_into_one_store_lose_no_use(tmp_path: Path) -> None:
    """Two instances (two logs on one store) record uses of the same packages: the record holds the union,
    each at its latest time, whatever order they flush in."""
    m = build_mirror(tmp_path)
    first, second = UsageLog(m.storage, m.clock, Logger()), UsageLog(m.storage, m.clock, Logger())
    first.used("shared", "shared-1.0.0.tgz")
    first.used("only-first")
    m.clock.advance(10)
    second.used("shared", "shared-2.0.0.tgz")
    second.used("only-second", "only-second-1.0.0.tgz")
    await m.settle(second.flush())
    await m.settle(first.flush())
    recorded = await m.settle(first.recorded())
    t = int(m.clock.seconds())
    assert recorded["shared"] == {"used": t, "files": {"shared-1.0.0.tgz": t - 10, "shared-2.0.0.tgz": t}}
    assert set(recorded) == {"shared", "only-first", "only-second"}


@pytest_twisted.ensureDeferred
async def test_a_flush_racing_another_instance_merges_again(tmp_path: Path) -> None:
    """Another instance writes the shard between this one's read and its compare-and-swap: the
    swap fails, this one reads again and merges, and both instances' uses are kept."""
    m = build_mirror(tmp_path)
    other = UsageLog(m.storage, m.clock, Logger())
    other.used("racing", "racing-2.0.0.tgz")
    read = m.storage.read_versioned
    raced: list[str] = []

    async def read_then_race(key: str) -> tuple[bytes, str] | None:
        found = await read(key)
        if not raced:
            raced.append(key)
            await other.flush()  # lands after this read, before this instance's swap
        return found

    mine = UsageLog(m.storage, m.clock, Logger())
    mine.used("racing", "racing-1.0.0.tgz")
    m.storage.read_versioned = read_then_race  # type: ignore[method-assign]
    await m.settle(mine.flush())
    m.storage.read_versioned = read  # type: ignore[method-assign]
    assert raced == [keys.usage_shard_key("racing")] and mine.pending == 0  # merged within this flush
    recorded = await m.settle(mine.recorded())
    assert set(recorded["racing"]["files"]) == {"racing-1.0.0.tgz", "racing-2.0.0.tgz"}


@pytest_twisted.ensureDeferred
async def test_a_flush_that_fails_keeps_its_uses_for_the_next(tmp_path: Path) -> None:
    m = build_mirror(tmp_path)
    log = m.parts.usage
    log.used("kept", "kept-1.0.0.tgz")
    real = m.storage.replace

    async def failing(*args: object) -> bool:
        raise OSError("disk full")

    m.storage.replace = failing  # type: ignore[method-assign]
    await m.settle(log.flush())
    assert log.pending == 1
    m.storage.replace = real  # type: ignore[method-assign]
    await m.settle(log.flush())
    assert log.pending == 0 and "kept" in await m.settle(log.recorded())


@pytest_twisted.ensureDeferred
async def test_a_sync_run_refreshes_used_packages_and_leaves_unused_ones(tmp_path: Path) -> None:
    """40 cached packages, 3 of them used by clients: an hour later (META_TTL 300) a refresh run asks
    the upstream for those 3 documents only; a day later, for all 40 (unused ones are daily)."""
    names = [f"pkg-{i:02}" for i in range(40)]
    m = build_mirror(tmp_path, FakeRegistry({n: packument(n, "1.0.0") for n in names}), meta_ttl="300",
                     sync_interval="300", sync_rate="60000")
    for name in names:
        await m.settle(m.parts.documents.refresh(name, m.upstreams.for_name(name)))  # cached by a sync, not used
    used = names[:3]
    for name in used:
        await m.settle(m.parts.mirror.packument(name, "http://nopard.test"))
    jobs = m.sync_jobs(use=m.parts.usage)  # as nopard.service wires it
    m.clock.advance(HOUR)
    m.upstream.requests.clear()
    report = await m.run_job(jobs.run("refresh"))
    assert report.checked == 40 and report.failures == []
    assert sorted(path for path, _ in m.upstream.requests) == [f"/{name}" for name in used]
    m.clock.advance(DAY)
    m.upstream.requests.clear()
    await m.run_job(jobs.run("refresh"), step=0.1)
    assert len(m.upstream.requests) == 40


def test_the_eviction_order_is_least_recently_used_first() -> None:
    tarballs = [usage.StoredTarball(f"k{i}", "p", f"p-{i}.tgz", 10, used_at=t) for i, t in enumerate([5, 1, 0, 3])]
    chosen = usage.choose_evictions(tarballs, 40, 20, frozenset(), 100)
    assert [t.key for t in chosen] == ["k2", "k1"]
    assert usage.choose_evictions(tarballs, 40, 20, frozenset({"k2"}), 100) == [tarballs[1], tarballs[3]]
    assert usage.choose_evictions(tarballs, 40, 40, frozenset(), 100) == []
    assert usage.choose_evictions(tarballs, 40, 0, frozenset(), 3) == [tarballs[2], tarballs[1], tarballs[3]]


stored = st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 100)), max_size=30)


@given(stored, st.integers(0, 20_000), st.sets(st.integers(0, 29)), st.integers(0, 40))
def test_eviction_takes_the_oldest_never_kept_within_budget(found: list, limit: int, kept_at: set, budget: int) -> None:
    """Under the limit afterwards when enough may go; never a kept key; nothing used later than
    something left (of those that could go); never more than the budget."""
    tarballs = [usage.StoredTarball(f"k{i:02}", "p", f"p-{i}.tgz", size, used_at=t)
                for i, (size, t) in enumerate(found)]
    kept = frozenset(f"k{i:02}" for i in kept_at)
    size = sum(t.size for t in tarballs)
    chosen = usage.choose_evictions(tarballs, size, limit, kept, budget)
    assert len(chosen) <= budget and not {t.key for t in chosen} & kept
    left = size - sum(t.size for t in chosen)
    evictable = [t for t in tarballs if t.key not in kept]
    if len(chosen) < budget and len(chosen) < len(evictable):
        assert left <= limit
    if chosen:
        last = max((t.used_at, t.key) for t in chosen)
        assert all((t.used_at, t.key) > last for t in evictable if t not in chosen)


@pytest_twisted.ensureDeferred
async def test_uses_reach_the_store_every_minute_and_at_stop(tmp_path: Path) -> None:
    m = build_mirror(tmp_path)
    flusher = UsageFlusher(m.parts.usage, m.clock)
    flusher.startService()
    m.parts.usage.used("every-minute")
    m.clock.advance(FLUSH_SECONDS - 1)
    assert await m.settle(m.storage.read(keys.usage_shard_key("every-minute"))) is None
    m.clock.advance(1)
    assert b"every-minute" in await m.settle(m.storage.read(keys.usage_shard_key("every-minute")))
    m.parts.usage.used("at-stop")
    await m.settle(flusher.stopService())
    assert b"at-stop" in await m.settle(m.storage.read(keys.usage_shard_key("at-stop")))


@pytest_twisted.ensureDeferred
async def test_a_flush_that_raises_does_not_stop_the_next_ones(tmp_path: Path) -> None:
    m = build_mirror(tmp_path)
    flusher = UsageFlusher(m.parts.usage, m.clock)
    flusher.startService()
    m.parts.usage.used("NOT a name")  # no shard key: that flush raises (and is logged)
    m.clock.advance(FLUSH_SECONDS)
    m.parts.usage.used("next-minute")
    m.clock.advance(FLUSH_SECONDS)
    assert b"next-minute" in await m.settle(m.storage.read(keys.usage_shard_key("next-minute")))
    await m.settle(flusher.stopService())


@pytest_twisted.ensureDeferred
async def test_a_store_that_hangs_holds_the_stop_only_so_long(tmp_path: Path) -> None:
    m = build_mirror(tmp_path)
    flusher = UsageFlusher(m.parts.usage, m.clock)
    flusher.startService()
    m.parts.usage.used("hanging")
    m.storage.read_versioned = lambda key: Deferred()  # type: ignore[method-assign,assignment,return-value]
    stopped: list[bool] = []
    pending = flusher.stopService()
    assert isinstance(pending, Deferred)
    pending.addCallback(lambda _: stopped.append(True))
    m.clock.advance(STOP_FLUSH_SECONDS - 1)
    assert not stopped
    m.clock.advance(1)
    assert stopped
