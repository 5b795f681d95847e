"""The sync jobs in-process against the fake upstream, on a Clock: lost locks and bad packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from nopard.jobs.sync import LOCK_SECONDS, StoreLock
from nopard.storage import keys
from tests.unit.mirror_harness import FakeRegistry, build, packument

BASE = "http://127.0.0.1:5984"


@pytest_twisted.ensureDeferred
async def test_an_instance_that_lost_its_lock_stops_the_job(tmp_path: Path) -> None:
    """Instance A runs backfill and stalls (its tarball answer held) past the lock's time; B takes
    the lock over; A's next renew fails: A stops the run (the second package untouched), reports
    why, and its release leaves B's lock in place."""
    m = build(tmp_path, FakeRegistry({"one": packument("one", "1.0.0"), "two": packument("two", "1.0.0")}),
              sync_concurrency="1", sync_rate="60000", backfill="all")
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
