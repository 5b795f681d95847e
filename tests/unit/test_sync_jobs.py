"""The sync jobs' logic on a fake clock, against the fake upstream (a real process)."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from nopard.domain.prepared import PreparedCache
from nopard.jobs.changes import ChangesFollower
from nopard.jobs.sync import SyncJobs
from nopard.local.packages import Registry
from nopard.mirror import MirrorParts, build_mirror
from nopard.mirror.upstreams import Upstreams
from nopard.settings.config import LiveSettings, load_settings
from nopard.storage.fs import FilesystemStorage
from nopard.upstream.client import Upstream
from tests.upstream import FakeUpstream


def build(tmp_path: Path, fake: FakeUpstream, clock: task.Clock, log: Logger | None = None,
          **settings: str) -> tuple[MirrorParts, SyncJobs]:
    """A mirror and its sync jobs whose sense of time is ``clock``; I/O is real; ``log``: the jobs' logger."""
    env = {"NOPARD_FORWARDER_URL": fake.url, "NOPARD_SYNC_RATE": "60000",
           **{f"NOPARD_{k.upper()}": v for k, v in settings.items()}}
    live = LiveSettings(load_settings({}, env, cwd=str(tmp_path)))
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    cache = PreparedCache(lambda: live.current.memory_cache_size)
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    upstreams = Upstreams(live, lambda url, token: Upstream(url, http, live, clock, token))
    registry = Registry(storage, cache, clock)
    parts = build_mirror(live, storage, registry, upstreams, cache, clock, str(tmp_path / "spool"), Logger())
    log = log or Logger()
    jobs = SyncJobs(live, upstreams, registry, parts.documents, parts.tarballs, storage, clock, log, owner="test",
                    follower=ChangesFollower(live, upstreams, storage, clock, log))
    return parts, jobs


def keep_time_moving(clock: task.Clock) -> task.LoopingCall:
    """The rate limit waits on the fake clock: nudge it along from the real reactor."""
    nudger = task.LoopingCall(clock.advance, 0.01)
    nudger.start(0.001)
    return nudger


@pytest_twisted.ensureDeferred
async def test_refresh_takes_what_will_be_stale_before_the_next_run(tmp_path: Path, fake: FakeUpstream) -> None:
    """With META_TTL 300 and an interval of 100, a document fetched at t=0 is left alone at
    t=150 (fresh until the next run) and revalidated at t=250 (stale before the next run)."""
    clock = task.Clock()
    parts, jobs = build(tmp_path, fake, clock, meta_ttl="300", sync_interval="100")
    await parts.mirror.refresh("debug")
    fake.reset()
    clock.advance(150)
    report = await jobs.run("refresh")
    assert (report.checked, report.changed) == (1, 0) and fake.stats()["requests"] == []
    clock.advance(100)
    report = await jobs.run("refresh")
    assert fake.stats()["requests"] == [["GET", "/debug"]]
    assert (await parts.documents.mirrored_meta("debug")).fetched_at == clock.seconds()


@pytest_twisted.ensureDeferred
async def test_refresh_counts_changed_documents(tmp_path: Path, fake: FakeUpstream) -> None:
    """A document that changed upstream is replaced and counted; an unchanged one is not."""
    clock = task.Clock()
    parts, jobs = build(tmp_path, fake, clock, meta_ttl="1", sync_interval="100")
    for name in ("ms", "semver"):
        await parts.mirror.refresh(name)
    published = fake.change("ms")
    clock.advance(10)
    nudger = keep_time_moving(clock)
    try:
        report = await jobs.run("refresh")
    finally:
        nudger.stop()
    assert (report.checked, report.changed, report.failures) == (2, 1, [])
    assert (await parts.documents.mirrored_document("ms"))["dist-tags"]["latest"] == published["version"]


@pytest_twisted.ensureDeferred
async def test_backfill_is_idempotent(tmp_path: Path, fake: FakeUpstream) -> None:
    """A second backfill finds nothing to do: no tarball fetched, no upstream request."""
    clock = task.Clock()
    parts, jobs = build(tmp_path, fake, clock, backfill="all")
    await parts.mirror.refresh("ms")
    nudger = keep_time_moving(clock)
    try:
        first = await jobs.run("backfill")
        fake.reset()
        second = await jobs.run("backfill")
    finally:
        nudger.stop()
    document = await parts.documents.mirrored_document("ms")
    assert first.tarballs == len(document["versions"]) and first.bytes > 0
    assert (second.tarballs, second.failures) == (0, [])
    assert fake.stats()["requests"] == []


@pytest_twisted.ensureDeferred
async def test_jobs_wait_out_a_429(tmp_path: Path, fake: FakeUpstream) -> None:
    """While the upstream's Retry-After runs, a job makes no request; afterwards it goes on."""
    clock = task.Clock()
    parts, jobs = build(tmp_path, fake, clock, meta_ttl="1")
    await parts.mirror.refresh("ms")
    upstream = parts.mirror.upstream_of("ms")
    upstream.paused_until = clock.seconds() + 120
    clock.advance(5)
    fake.reset()
    run = Deferred.fromCoroutine(jobs.run("refresh"))
    await task.deferLater(reactor, 0.2, lambda: None)
    assert not run.called and fake.stats()["requests"] == []
    clock.advance(120)
    report = await run
    assert report.checked == 1 and fake.stats()["requests"] == [["GET", "/ms"]]
