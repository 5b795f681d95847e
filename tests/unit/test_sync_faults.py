"""The sync jobs in-process against the fake upstream, on a Clock: lost locks and bad packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from nopard.jobs.sync import LOCK_SECONDS, StoreLock
from nopard.storage import keys
from tests.unit.mirror_harness import FakeRegistry, build, odd_packument, packument

BASE = "http://127.0.0.1:5984"


@pytest_twisted.ensureDeferred
async def test_an_instance_that_lost_its_lock_stops_the_job(tmp_path: Path) -> None:
    """Instance A runs backfill and stalls (its tarball answer held) past the lock's time; B takes
    the lock over; A's next renew fails: A stops the run (the second package untouched), reports
    why, and its release leaves B's lock in place."""
    m = build(tmp_path, FakeRegistry({"one": packument("one", "1.0.0"), "two": packument("two", "1.0.0")}),
              sync_concurrency="1", sync_rate="60000", backfill="all",
              upstream_timeout=str(LOCK_SECONDS * 2))  # A's stalled request outlasts its lock
    for name in ("one", "two"):
        await m.settle(m.parts.mirror.packument(name, BASE))
    m.upstream.hold_tarballs = True
    a = m.sync_jobs("a")
    run = m.started(a.run("backfill"))
    m.http.flush()
    assert len(m.upstream.held) == 1  # A is fetching one's tarball
    m.clock.advance(LOCK_SECONDS + 1)  # A stalls past its lock's time
    b = StoreLock(m.storage, m.clock, "b")
    assert await b.acquire("backfill") is True
    m.upstream.hold_tarballs = False
    m.upstream.release()
    report = await m.run_job(run)
    assert [f["package"] for f in report.failures] == ["*"] and "lock" in report.failures[0]["reason"]
    assert m.upstream.asked("/two/-/") == 0 and not await m.parts.tarballs.stored("two", "two-1.0.0.tgz")
    assert json.loads(await m.storage.read(keys.sync_lock_key("backfill")))["owner"] == "b"
    assert await b.renew("backfill") is True


def odd_broken_good() -> FakeRegistry:
    """An upstream with an odd tarball URL (@s/odd), a document nopard cannot sort (broken:
    version "v1.0.0") and a plain package (good)."""
    broken = packument("broken", "1.0.0")
    broken["versions"] = {"v1.0.0": broken["versions"]["1.0.0"]}
    broken["dist-tags"] = {"latest": "v1.0.0"}
    return FakeRegistry({"@s/odd": odd_packument("@s/odd", "1.0.0"), "broken": broken,
                         "good": packument("good", "1.0.0")})


async def mirrored(m, *names: str) -> None:
    for name in names:
        await m.settle(m.parts.documents.refresh(name, m.parts.mirror.upstream_of(name)))


@pytest_twisted.ensureDeferred
async def test_backfill_over_odd_broken_and_good_packages_completes(tmp_path: Path) -> None:
    """backfill over [odd, broken, good]: the run ends, reports the broken package (counted in the
    metrics too), and keeps the odd package's tarball (under its conventional name) and the good one's."""
    m = build(tmp_path, odd_broken_good(), sync_rate="60000", backfill="all")
    await mirrored(m, "@s/odd", "broken", "good")
    report = await m.run_job(m.sync_jobs().run("backfill"))
    assert report.checked == 3 and [f["package"] for f in report.failures] == ["broken"]
    assert await m.parts.tarballs.stored("@s/odd", "odd-1.0.0.tgz")
    assert await m.parts.tarballs.stored("good", "good-1.0.0.tgz")
    assert report.tarballs == 2 and m.upstream.asked("/download/@s/odd/1.0.0/") == 1
    assert m.metrics.sync_failures.labels("backfill")._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_prefetch_over_odd_broken_and_good_packages_completes(tmp_path: Path) -> None:
    """prefetch of odd, broken and good: each is tried, the broken one reported, the others kept."""
    m = build(tmp_path, odd_broken_good(), sync_rate="60000")
    await mirrored(m, "broken")
    m.parts.documents.mirrored_document = broken_for("broken", m.parts.documents.mirrored_document)
    wanted = [("@s/odd", "1.0.0"), ("broken", "1.0.0"), ("good", "1.0.0")]
    report = await m.run_job(m.sync_jobs().prefetch(wanted))
    assert report.checked == 3 and [f["package"] for f in report.failures] == ["broken@1.0.0"]
    assert await m.parts.tarballs.stored("@s/odd", "odd-1.0.0.tgz")
    assert await m.parts.tarballs.stored("good", "good-1.0.0.tgz")


def broken_for(name: str, read):
    """A mirrored_document reader that fails for ``name`` as an unforeseen bug would."""
    async def reading(asked: str):
        if asked == name:
            raise KeyError("versions")
        return await read(asked)
    return reading
