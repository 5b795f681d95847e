"""The sync worker following the fake upstream's changes feed (NOPARD_CHANGES_URL), on a fake clock.

The fake upstream is the real process (tests/fake_upstream.py, its feed tests/fake_changes.py);
every test counts the requests it received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import task
from twisted.logger import Logger

from nopard.jobs.sync import JobReport, SyncJobs
from nopard.mirror import MirrorParts
from tests.unit.test_sync_jobs import build, keep_time_moving
from tests.upstream import FakeUpstream

CACHED = ("debug", "ms", "accepts")


def paths(fake: FakeUpstream) -> list[str]:
    """The paths the fake upstream was asked for since its last reset, in order."""
    return [path for _method, path in fake.stats()["requests"]]


def documents(fake: FakeUpstream) -> list[str]:
    """The document paths asked for (not the feed)."""
    return [path for path in paths(fake) if path != "/_changes"]


class Following:
    """Sync jobs with NOPARD_CHANGES_URL set to the fake upstream's feed, three packages mirrored, and a log."""

    def __init__(self, tmp_path: Path, fake: FakeUpstream, clock: task.Clock) -> None:
        self.events: list[dict[str, Any]] = []
        self.fake, self.clock, self.tmp_path = fake, clock, tmp_path
        self.parts, self.jobs = self.jobs_on_store()

    def jobs_on_store(self) -> tuple[MirrorParts, SyncJobs]:
        """Another instance's jobs on the same store (same settings, same log)."""
        return build(self.tmp_path, self.fake, self.clock, Logger(observer=self.events.append),
                     meta_ttl="300", sync_interval="100", changes_url=self.fake.url + "_changes")

    async def run(self, jobs: SyncJobs | None = None) -> JobReport:
        """A refresh run, once every cached document would be due for the sweep."""
        self.clock.advance(250)
        self.fake.reset()
        nudger = keep_time_moving(self.clock)
        try:
            return await (jobs or self.jobs).run("refresh")
        finally:
            nudger.stop()

    def logged(self, event: str) -> int:
        """How many lines of this event were logged."""
        return sum(1 for line in self.events if line.get("event") == event)


async def following(tmp_path: Path, fake: FakeUpstream) -> Following:
    """Three packages mirrored, and the first run made (it takes the feed's position and sweeps once)."""
    world = Following(tmp_path, fake, task.Clock())
    for name in CACHED:
        await world.parts.mirror.refresh(name)
    first = await world.run()
    assert first.checked == len(CACHED) and sorted(documents(fake)) == sorted(f"/{n}" for n in CACHED)
    assert world.logged("changes-start") == 1
    return world


@pytest_twisted.ensureDeferred
async def test_only_the_changed_cached_package_is_refreshed(tmp_path: Path, fake: FakeUpstream) -> None:
    """With the feed healthy, a run asks the feed and then only for the package that changed upstream;
    a changed name nopard does not hold is ignored, and the new version is in the copy."""
    world = await following(tmp_path, fake)
    version = fake.change("debug")["version"]
    fake.feed(record=["left-pad-not-cached", "ms-not-here"])
    report = await world.run()
    assert documents(fake) == ["/debug"] and report.changed == 1
    assert version in (await world.parts.documents.mirrored_document("debug") or {})["versions"]
    quiet = await world.run()  # nothing changed since: the feed only
    assert paths(fake) == ["/_changes"] and quiet.checked == 0


@pytest_twisted.ensureDeferred
async def test_another_instance_goes_on_from_the_stored_position(tmp_path: Path, fake: FakeUpstream) -> None:
    """The position is in the store: a second instance (or a restart) continues, with no sweep."""
    world = await following(tmp_path, fake)
    fake.change("ms")
    _, other = world.jobs_on_store()
    await world.run(other)
    assert documents(fake) == ["/ms"]


@pytest_twisted.ensureDeferred
async def test_a_failing_feed_falls_back_to_the_sweep_logged_once(tmp_path: Path, fake: FakeUpstream) -> None:
    """A feed answering 500: every run sweeps as before, one warning for the whole outage; back again,
    one line says so and the sweep stops."""
    world = await following(tmp_path, fake)
    fake.feed("500")
    for _ in range(2):
        await world.run()
        assert sorted(documents(fake)) == sorted(f"/{n}" for n in CACHED)
    assert world.logged("changes-failed") == 1
    fake.feed("normal")
    fake.change("accepts")
    await world.run()
    assert documents(fake) == ["/accepts"] and world.logged("changes-recovered") == 1


@pytest_twisted.ensureDeferred
async def test_an_untrustworthy_page_sweeps_and_starts_over(tmp_path: Path, fake: FakeUpstream) -> None:
    """A page cut off, one of several MB, or sequences going backwards: the run sweeps, logs it, and the
    next run takes the feed's position again (and sweeps once more, as after a first start)."""
    world = await following(tmp_path, fake)
    for mode in ("garbage", "huge", "backwards"):
        fake.feed(mode)
        await world.run()
        assert sorted(documents(fake)) == sorted(f"/{n}" for n in CACHED), mode
        fake.feed("normal")
        await world.run()
        assert world.logged("changes-start") == 1 + ("garbage", "huge", "backwards").index(mode) + 1, mode
    assert world.logged("changes-failed") >= 1
    fake.change("debug")
    await world.run()
    assert documents(fake) == ["/debug"]


@pytest_twisted.ensureDeferred
async def test_a_feed_ignoring_the_limit_is_read_a_page_at_a_time(tmp_path: Path, fake: FakeUpstream) -> None:
    """A feed sending every change whatever the limit: the follower keeps the limit's worth, logs the
    rest as left over, and reads on from the last change it kept (a full page: then the next one, here
    empty); nothing is missed."""
    world = await following(tmp_path, fake)
    assert world.jobs.follower is not None
    world.jobs.follower.page_limit = 2
    fake.feed("ignore-limit", record=["one-not-cached", "two-not-cached"])
    fake.change("debug")
    fake.change("accepts")
    await world.run()
    assert sorted(documents(fake)) == ["/accepts", "/debug"]
    assert paths(fake).count("/_changes") == 3 and world.logged("changes-oversized") == 1


@pytest_twisted.ensureDeferred
async def test_every_feed_page_request_takes_a_slot_of_the_sync_rate(tmp_path: Path, fake: FakeUpstream) -> None:
    """NOPARD_SYNC_RATE budgets every upstream request of a run: each feed page waits for its slot
    like each document (three pages and two documents: five slots, one per request made)."""
    world = await following(tmp_path, fake)
    assert world.jobs.follower is not None
    world.jobs.follower.page_limit = 2
    slots = []
    acquire = world.jobs.rate.acquire

    async def counted() -> None:
        slots.append(len(paths(fake)))  # the requests made before this slot was asked for
        await acquire()

    world.jobs.rate.acquire = counted  # type: ignore[method-assign]
    fake.feed("ignore-limit", record=["one-not-cached", "two-not-cached"])
    fake.change("debug")
    fake.change("accepts")
    await world.run()
    assert paths(fake).count("/_changes") == 3 and sorted(documents(fake)) == ["/accepts", "/debug"]
    assert len(slots) == len(paths(fake)) == 5
