"""Fetched copies written after their answers (nopard.mirror.writeback): served at once from what
waits, written once fetches pause (or too much waits, or at stop), never lost to a reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted

from nopard.mirror import writeback
from nopard.mirror.spool import remove_orphans
from nopard.mirror.writeback import MAX_AGE, WriteBehindService
from nopard.ops.metrics import LiveCollector
from nopard.storage import keys
from tests.unit.mirror_harness import FakeRegistry, MirrorUnderTest, build, packument, tarball
from tests.unit.storage_contract import CollectingConsumer

NAMES = ("alpha", "beta", "gamma")


def stored_files(tmp_path: Path) -> set[str]:
    """The mirrored files in the store, as paths below packages/."""
    root = tmp_path / "registry" / "packages"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def spool_files(tmp_path: Path) -> list[str]:
    spool = tmp_path / "spool"
    return sorted(os.listdir(spool)) if spool.exists() else []


async def fetch(m: MirrorUnderTest, name: str) -> tuple[bytes, str]:
    """A client's GET of ``name``'s 1.0.0 tarball: its bytes and how it was served."""
    blob, status = await m.settle(m.parts.mirror.tarball(name, f"{name}-1.0.0.tgz"))
    consumer = CollectingConsumer()
    await blob.send_to(consumer)
    return consumer.data, status


def waiting_gauge(gauges: LiveCollector) -> float:
    """nopard_mirror_writes_waiting as /-/metrics would show it."""
    (family,) = [f for f in gauges.collect() if f.name == "nopard_mirror_writes_waiting"]
    return family.samples[0].value


def mirror(tmp_path: Path, **settings: str) -> MirrorUnderTest:
    return build(tmp_path, FakeRegistry({n: packument(n, "1.0.0") for n in NAMES}), write_behind=True, **settings)


@pytest_twisted.ensureDeferred
async def test_a_fetched_copy_is_served_at_once_and_written_once_fetches_pause(tmp_path: Path) -> None:
    """A cold tarball is sent whole and verified before anything is written; asked again it is a
    HIT from the waiting copy (no second fetch), its document is read as stored, and once no
    fetch came for NOPARD_MIRROR_WRITE_DELAY the document, its meta and the tarball are stored
    and the spool's second name is gone."""
    m = mirror(tmp_path, mirror_write_delay="0.5")
    data, status = await fetch(m, "alpha")
    assert (data, status) == (tarball("alpha", "1.0.0"), "MISS")
    assert stored_files(tmp_path) == set() and m.parts.writes.waiting == 2  # the document, the tarball
    gauges = LiveCollector()
    gauges.writes = m.parts.writes
    assert waiting_gauge(gauges) == 2.0
    again, status = await fetch(m, "alpha")
    assert (again, status) == (data, "HIT") and m.upstream.asked("/-/") == 1
    assert (await m.parts.documents.mirrored_document("alpha"))["name"] == "alpha"
    assert (await m.parts.documents.mirrored_meta("alpha")) is not None
    assert await m.parts.tarballs.stored("alpha", "alpha-1.0.0.tgz")
    m.clock.advance(0.49)
    assert stored_files(tmp_path) == set()
    m.clock.advance(0.01)
    assert stored_files(tmp_path) == {"alpha/upstream/package.json", "alpha/upstream/meta.json",
                                      "alpha/upstream/tarballs/alpha-1.0.0.tgz"}
    assert m.parts.writes.waiting == 0 and spool_files(tmp_path) == [] and waiting_gauge(gauges) == 0.0
    assert await m.storage.read(keys.upstream_tarball_key("alpha", "alpha-1.0.0.tgz")) == data
    third, status = await fetch(m, "alpha")
    assert (third, status) == (data, "HIT") and m.upstream.asked("/-/") == 1


@pytest_twisted.ensureDeferred
async def test_a_burst_is_written_at_most_max_age_after_its_first_copy(tmp_path: Path) -> None:
    """Fetches that never pause still get written: the first copy waits MAX_AGE at most."""
    m = mirror(tmp_path, mirror_write_delay="2")
    await fetch(m, "alpha")
    for _ in range(int(MAX_AGE)):  # a fetch every second: the delay never passes
        m.clock.advance(1)
        await m.settle(m.parts.documents.refetch("beta", m.parts.mirror.upstream_of("beta")))
    assert "alpha/upstream/tarballs/alpha-1.0.0.tgz" in stored_files(tmp_path)


@pytest_twisted.ensureDeferred
async def test_too_many_waiting_copies_are_written_at_once(tmp_path: Path, monkeypatch) -> None:
    """Beyond MAX_WAITING copies nothing more waits for the delay (memory and disk stay bounded)."""
    monkeypatch.setattr(writeback, "MAX_WAITING", 4)
    m = mirror(tmp_path, mirror_write_delay="60")
    await fetch(m, "alpha")
    assert stored_files(tmp_path) == set()
    await fetch(m, "beta")  # the fourth copy
    m.clock.advance(0)
    assert len(stored_files(tmp_path)) == 6 and m.parts.writes.waiting == 0


@pytest_twisted.ensureDeferred
async def test_everything_waiting_is_written_when_nopard_stops(tmp_path: Path) -> None:
    """Stopping (SIGTERM) writes every waiting copy before the store's thread pools stop."""
    m = mirror(tmp_path, mirror_write_delay="60")
    service = WriteBehindService(m.parts.writes, m.clock, m.parts.documents._log)
    assert service.stops_first
    service.startService()
    for name in NAMES:
        await fetch(m, name)
    assert stored_files(tmp_path) == set()
    await service.stopService()
    assert len(stored_files(tmp_path)) == 3 * len(NAMES) and spool_files(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_a_copy_that_cannot_be_written_is_dropped_and_fetched_again(tmp_path: Path, monkeypatch) -> None:
    """A waiting tarball the store refuses (disk full) is logged and dropped, its file removed;
    the next client gets it fetched again, not a 500 or a half-stored file."""
    m = mirror(tmp_path, mirror_write_delay="0.5")
    await fetch(m, "alpha")
    refused = []

    async def full(key: str, path: str) -> bool:
        refused.append(key)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m.storage, "create_from_file", full)
    m.clock.advance(0.5)
    assert refused == [keys.upstream_tarball_key("alpha", "alpha-1.0.0.tgz")] and spool_files(tmp_path) == []
    assert stored_files(tmp_path) == {"alpha/upstream/package.json", "alpha/upstream/meta.json"}
    monkeypatch.undo()
    data, status = await fetch(m, "alpha")
    assert (data, status) == (tarball("alpha", "1.0.0"), "MISS") and m.upstream.asked("/-/") == 2


@pytest.mark.parametrize("write_behind, delay", [(False, "0.5"), (True, "0")], ids=["shared-store", "delay-0"])
@pytest_twisted.ensureDeferred
async def test_nothing_waits_when_the_store_is_shared_or_the_delay_is_0(
        tmp_path: Path, write_behind: bool, delay: str) -> None:
    """Other processes sharing the store (Redis, workers) must find what one served: then, and with
    NOPARD_MIRROR_WRITE_DELAY=0, a copy is stored before its answer ends."""
    m = build(tmp_path, FakeRegistry({"alpha": packument("alpha", "1.0.0")}), write_behind=write_behind,
              mirror_write_delay=delay)
    await fetch(m, "alpha")
    assert len(stored_files(tmp_path)) == 3 and m.parts.writes.waiting == 0 and spool_files(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_a_redirect_to_the_store_writes_the_copy_first(tmp_path: Path) -> None:
    """NOPARD_ACCEL_REDIRECT and presigned redirects name the stored object: it is there first."""
    m = mirror(tmp_path, mirror_write_delay="60")
    await fetch(m, "alpha")
    key, status = await m.settle(m.parts.tarballs.stored_key("alpha", "alpha-1.0.0.tgz",
                                                             m.parts.mirror.upstream_of("alpha")))
    assert status == "HIT" and await m.storage.read(key) == tarball("alpha", "1.0.0")
    key, status = await m.settle(m.parts.tarballs.stored_key("beta", "beta-1.0.0.tgz",
                                                             m.parts.mirror.upstream_of("beta")))
    assert status == "MISS" and await m.storage.read(key) == tarball("beta", "1.0.0")


def test_a_copy_left_by_a_killed_process_is_removed_as_its_spools_are(tmp_path: Path) -> None:
    """What kill -9 leaves of a waiting tarball (the spool's second name) goes at the next start."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / ".fetch-999999-kept-0a1b").write_bytes(b"x")
    (spool / f".fetch-{os.getpid()}-kept-0a1b").write_bytes(b"x")
    assert remove_orphans(str(spool), lambda pid: pid == os.getpid()) == 1
    assert os.listdir(spool) == [f".fetch-{os.getpid()}-kept-0a1b"]
