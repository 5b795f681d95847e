"""The sync worker's pure parts and manners, on a fake clock."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from nopard.jobs.sync import (
    LOCK_SECONDS,
    JobReport,
    RateLimit,
    StoreLock,
    backfill_versions,
    for_each,
    tarball_file,
)
from nopard.storage import keys
from nopard.storage.fs import FilesystemStorage
from nopard.upstream.client import retry_after_seconds

DOCUMENT = {
    "dist-tags": {"latest": "2.0.0", "next": "3.0.0-beta.1"},
    "versions": {v: {"dist": {"tarball": f"http://u.example/p/-/p-{v}.tgz"}}
                 for v in ("1.0.0", "1.1.0", "2.0.0", "3.0.0-beta.1", "1.10.0")},
}


@pytest.mark.parametrize("policy, expected", [
    ("none", []),
    ("tags", ["3.0.0-beta.1", "2.0.0"]),
    ("recent:2", ["3.0.0-beta.1", "2.0.0"]),
    ("recent:3", ["3.0.0-beta.1", "2.0.0", "1.10.0"]),
    ("all", ["3.0.0-beta.1", "2.0.0", "1.10.0", "1.1.0", "1.0.0"]),
])
def test_backfill_policies_choose_versions(policy, expected) -> None:
    """NOPARD_BACKFILL's policies pick versions by semver order, newest first."""
    assert backfill_versions(DOCUMENT, policy) == expected


def test_tarball_file_is_the_url_basename() -> None:
    """The file a manifest's tarball URL names; None without one."""
    assert tarball_file("p", "1.0.0", DOCUMENT["versions"]["1.0.0"]) == "p-1.0.0.tgz"
    assert tarball_file("p", "1.0.0", {"dist": {}}) is None
    assert tarball_file("p", "1.0.0", 42) is None


def test_an_odd_tarball_url_gets_the_conventional_file_name() -> None:
    """A tarball URL not ending in <name>-<version>.tgz is kept under the conventional name."""
    odd = {"dist": {"tarball": "http://registry.invalid/download/@s/p/1.0.0/0a1b2c"}}
    assert tarball_file("@s/p", "1.0.0", odd) == "p-1.0.0.tgz"
    assert tarball_file("@s/p", "v1", odd) is None


def test_rate_limit_spreads_requests_over_the_minute() -> None:
    """At 60 a minute, the fourth acquisition waits until three seconds have passed."""
    clock = Clock()
    limit = RateLimit(clock, lambda: 60)
    done = [defer.Deferred.fromCoroutine(limit.acquire()) for _ in range(4)]
    assert [d.called for d in done] == [True, False, False, False]
    clock.advance(1)
    assert [d.called for d in done] == [True, True, False, False]
    clock.advance(2)
    assert all(d.called for d in done)


@pytest_twisted.ensureDeferred
async def test_for_each_keeps_to_its_workers() -> None:
    """for_each never runs more than its number of workers at once, and does every item."""
    running, most, seen = [0], [0], []

    async def work(item: int) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await deferToThread(lambda: None)
        seen.append(item)
        running[0] -= 1

    await for_each(range(20), 3, work)
    assert sorted(seen) == list(range(20)) and most[0] == 3


@pytest_twisted.ensureDeferred
async def test_store_lock_excludes_a_second_owner_until_it_expires(tmp_path) -> None:
    """A job lock held by one instance refuses another, until its holder stops renewing it."""
    clock = Clock()
    storage = FilesystemStorage(str(tmp_path), deferToThread)
    first, second = StoreLock(storage, clock, "first"), StoreLock(storage, clock, "second")
    assert await first.acquire("refresh") is True
    assert await second.acquire("refresh") is False
    assert await second.acquire("backfill") is True
    clock.advance(601)
    assert await second.acquire("refresh") is True
    await first.release("refresh")  # not first's any more: stays
    assert await first.acquire("refresh") is False
    await second.release("refresh")
    assert await first.acquire("refresh") is True


@pytest.mark.parametrize("header, seconds", [
    ("120", 120.0), (None, 60.0), ("soon", 60.0), ("999999", 3600.0),
    ("Sun, 22 Nov 2026 00:01:40 GMT", 100.0),
])
def test_retry_after_header(header, seconds) -> None:
    """Retry-After in seconds or as an HTTP date; a missing or odd one means a minute; at most an hour."""
    now = 1795305600.0  # Sun, 22 Nov 2026 00:00:00 GMT
    assert retry_after_seconds(header, now) == seconds


def test_report_keeps_a_bounded_list_of_failures() -> None:
    """A run with a thousand failures keeps fifty with reasons and counts them all."""
    report = JobReport("refresh")
    for n in range(1000):
        report.fail(f"p{n}", "down")
    assert len(report.failures) == 50
    assert report.summary() == "refresh: checked 0, changed 0, tarballs 0 (0 bytes), failures 1000"


class Interleaving:
    """A store whose first read of ``key`` lets ``meanwhile`` run before the reader goes on."""

    def __init__(self, storage: FilesystemStorage, key: str, meanwhile) -> None:
        self._storage = storage
        self._key = key
        self._meanwhile = meanwhile

    def __getattr__(self, name: str):
        return getattr(self._storage, name)

    async def _then(self, result):
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            await meanwhile()
        return result

    async def read(self, key: str):
        result = await self._storage.read(key)
        return await self._then(result) if key == self._key else result

    async def read_versioned(self, key: str):
        result = await self._storage.read_versioned(key)
        return await self._then(result) if key == self._key else result


@pytest_twisted.ensureDeferred
async def test_a_stalled_holders_renew_fails_once_another_took_over(tmp_path) -> None:
    """A holds, stalls past the lock's time, B takes over: A's renew says False and B's record stays."""
    clock = Clock()
    storage = FilesystemStorage(str(tmp_path), deferToThread)
    a, b = StoreLock(storage, clock, "a"), StoreLock(storage, clock, "b")
    assert await a.acquire("backfill") is True
    clock.advance(LOCK_SECONDS + 1)
    assert await b.acquire("backfill") is True
    assert await a.renew("backfill") is False
    assert json.loads(await storage.read(keys.sync_lock_key("backfill")))["owner"] == "b"
    assert await a.acquire("backfill") is False  # B's renewed-looking lock still excludes A


@pytest_twisted.ensureDeferred
async def test_a_stalled_holders_release_leaves_the_new_holders_lock(tmp_path) -> None:
    """A's release reads its own (expired) record, B takes over right then: A deletes nothing of B's."""
    clock = Clock()
    plain = FilesystemStorage(str(tmp_path), deferToThread)
    b = StoreLock(plain, clock, "b")
    key = keys.sync_lock_key("backfill")
    a = StoreLock(Interleaving(plain, key, lambda: b.acquire("backfill")), clock, "a")
    assert await a.acquire("backfill") is True  # a create: no read yet
    clock.advance(LOCK_SECONDS + 1)
    await a.release("backfill")
    assert json.loads(await plain.read(key))["owner"] == "b"
    assert await b.renew("backfill") is True


@pytest_twisted.ensureDeferred
async def test_a_holder_renews_and_releases_its_own_lock(tmp_path) -> None:
    """The holder's renew pushes the expiry forward; its release frees the lock for another."""
    clock = Clock()
    storage = FilesystemStorage(str(tmp_path), deferToThread)
    a, b = StoreLock(storage, clock, "a"), StoreLock(storage, clock, "b")
    assert await a.acquire("refresh") is True
    clock.advance(LOCK_SECONDS - 1)
    assert await a.renew("refresh") is True
    clock.advance(LOCK_SECONDS - 1)
    assert await b.acquire("refresh") is False
    await a.release("refresh")
    assert await storage.read(keys.sync_lock_key("refresh")) is None
    assert await b.acquire("refresh") is True
