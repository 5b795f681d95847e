"""Mirrored tarballs in-process: fetched once, verified, stored; corrupt ones refused."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import globalLogPublisher

from nopard.cli.maintenance import open_storage, scan
from nopard.domain import names
from nopard.domain.errors import NotFound, UpstreamBadContent
from nopard.storage import keys
from tests.unit import route_harness as routes
from tests.unit.mirror_harness import (
    UPSTREAM,
    FakeRegistry,
    MirrorUnderTest,
    build,
    odd_packument,
    packument,
    tarball,
)
from tests.unit.storage_contract import CollectingConsumer

BASE = "http://127.0.0.1:5984"


@pytest_twisted.ensureDeferred
async def test_tarball_is_fetched_once_then_served_from_the_store(tmp_path: Path) -> None:
    """The first read fetches (MISS), the second is a HIT with no further upstream request."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    blob, first = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    blob.close()
    blob, second = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    blob.close()
    assert (first, second) == ("MISS", "HIT") and m.upstream.asked("/-/") == 1


@pytest_twisted.ensureDeferred
async def test_fetched_tarball_is_stored_as_the_upstream_sent_it(tmp_path: Path) -> None:
    """The stored tarball holds exactly the upstream's (verified) bytes."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    fetched = await m.settle(m.parts.tarballs.ensure("demo", "demo-1.0.0.tgz", m.parts.mirror.upstream_of("demo")))
    stored = await m.storage.read(keys.upstream_tarball_key("demo", "demo-1.0.0.tgz"))
    assert stored == tarball("demo", "1.0.0") and fetched == len(stored)


@pytest_twisted.ensureDeferred
async def test_corrupt_tarball_is_refused_and_not_stored(tmp_path: Path) -> None:
    """Bytes that do not match dist.integrity, all there before the client was sent any: raise
    UpstreamBadContent (a 502) and leave nothing stored."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.fault = "corrupt"
    with pytest.raises(UpstreamBadContent, match="does not match its integrity"):
        await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    assert not await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")


# Cold tarballs streamed while verified ------------------------------------

TARBALL = tarball("demo", "1.0.0")


@contextmanager
def capture_events() -> Iterator[list[str]]:
    """The ``event`` of every log event emitted meanwhile."""
    events: list[str] = []

    def observe(event: dict) -> None:
        if "event" in event:
            events.append(event["event"])

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


async def streaming(m: MirrorUnderTest) -> tuple[Any, CollectingConsumer, Deferred]:
    """A client's MISS of demo's tarball, begun: the upstream declared its length and sent 10 bytes."""
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.hold_tarballs = True
    pending = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    m.http.flush()
    m.upstream.send(10)
    blob, status = await m.settle(pending)
    assert status == "MISS" and blob.size == len(TARBALL)
    consumer = CollectingConsumer()
    sending = Deferred.fromCoroutine(blob.send_to(consumer))
    m.http.flush()
    return blob, consumer, sending


@pytest_twisted.ensureDeferred
async def test_a_missing_tarball_reaches_the_client_as_it_arrives(tmp_path: Path) -> None:
    """A MISS is sent while the upstream is still sending: of the 10 bytes it sent so far the client
    has 9 (the last byte waits for the checksums); the rest follows once verified, then it is stored."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    _, consumer, sending = await streaming(m)
    assert consumer.data == TARBALL[:9] and not sending.called
    assert not await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")
    m.upstream.release()
    await m.settle(sending)
    assert consumer.data == TARBALL and consumer.producer is None
    assert await m.storage.read(keys.upstream_tarball_key("demo", "demo-1.0.0.tgz")) == TARBALL


@pytest_twisted.ensureDeferred
async def test_a_streamed_tarball_that_fails_its_checksums_is_cut_and_refetched_later(tmp_path: Path) -> None:
    """The upstream's bytes turn out corrupt after the client got most of them: its download fails
    before the declared length, nothing is stored (event integrity-mismatch), and the next request
    fetches the tarball again."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    m.upstream.fault = "corrupt"
    with capture_events() as events:
        _, consumer, sending = await streaming(m)
        assert len(consumer.data) == 9
        m.upstream.release()
        with pytest.raises(UpstreamBadContent, match="does not match its integrity"):
            await m.settle(sending)
    assert len(consumer.data) < len(TARBALL) and "integrity-mismatch" in events
    assert not await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")
    assert not list((tmp_path / "spool").iterdir())  # no spool file left either
    m.upstream.fault, m.upstream.hold_tarballs = None, False
    blob, status = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    again = CollectingConsumer()
    await m.settle(blob.send_to(again))
    assert status == "MISS" and again.data == TARBALL and m.upstream.asked("/-/") == 2
    assert await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")


@pytest_twisted.ensureDeferred
async def test_a_client_arriving_mid_download_follows_the_same_fetch(tmp_path: Path) -> None:
    """A second MISS while the first is being sent makes no upstream request: it is sent the
    tarball from its first byte, from the spool."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    _, first, sending = await streaming(m)
    blob, status = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    second = CollectingConsumer()
    following = Deferred.fromCoroutine(blob.send_to(second))
    assert status == "MISS" and second.data == TARBALL[:9]
    m.upstream.release()
    await m.settle(sending)
    await m.settle(following)
    assert first.data == second.data == TARBALL and m.upstream.asked("/-/") == 1


class PausingConsumer(CollectingConsumer):
    """A slow client: its buffer is full after every write, until ``take`` drains it."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()

    def take(self) -> None:
        self.producer.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_a_slow_client_is_sent_no_faster_than_it_reads(tmp_path: Path, monkeypatch) -> None:
    """A client that takes one chunk and pauses is written nothing more while the whole tarball
    arrives and is stored (it waits in the spool file, not in memory); resumed, it gets the rest."""
    from nopard.mirror import spool  # noqa: PLC0415 (the module this test is about)

    monkeypatch.setattr(spool, "CHUNK", 4)
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.hold_tarballs = True
    pending = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    m.http.flush()
    m.upstream.send(10)
    blob, _ = await m.settle(pending)
    consumer = PausingConsumer()
    sending = Deferred.fromCoroutine(blob.send_to(consumer))
    m.upstream.release()
    for _ in range(5):
        m.http.flush()
    assert await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")
    assert consumer.data == TARBALL[:4] and not sending.called
    while not sending.called:
        consumer.take()
    assert consumer.data == TARBALL


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_download_leaves_the_fetch_to_store(tmp_path: Path) -> None:
    """The first client goes away half-way (the connection lost): the fetch goes on, the second
    client gets the whole tarball, and it is stored."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    gone, _, sending = await streaming(m)
    blob, _ = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    staying = CollectingConsumer()
    following = Deferred.fromCoroutine(blob.send_to(staying))
    gone.stopProducing()
    await sending
    m.upstream.release()
    await m.settle(following)
    assert staying.data == TARBALL and await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")
    breaker = m.parts.mirror.upstream_of("demo").breaker
    assert (breaker.state, breaker.failures, m.upstream.asked("/-/")) == ("closed", 0, 1)


@pytest_twisted.ensureDeferred
async def test_concurrent_tarball_misses_share_one_download(tmp_path: Path) -> None:
    """Two clients asking for a missing tarball at once cause one upstream tarball GET."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    first = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    second = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    for waiter in (first, second):
        blob, _ = await m.settle(waiter)
        blob.close()
    assert m.upstream.asked("/-/") == 1


@pytest_twisted.ensureDeferred
async def test_tarball_of_a_private_scope_is_never_fetched(tmp_path: Path) -> None:
    """A tarball under NOPARD_PRIVATE_SCOPES is NotFound without any upstream request."""
    m = build(tmp_path, FakeRegistry({"@acme/secret": packument("@acme/secret", "1.0.0")}), private_scopes="@acme")
    with pytest.raises(NotFound):
        await m.settle(m.parts.mirror.tarball("@acme/secret", "secret-1.0.0.tgz"))
    assert m.upstream.asked() == 0


@pytest_twisted.ensureDeferred
async def test_a_waiter_hanging_up_leaves_the_shared_fetch_to_the_others(tmp_path: Path) -> None:
    """Of two clients waiting on one tarball fetch, the first hangs up (its Deferred cancelled):
    the second still gets the whole tarball, the upstream saw one tarball request, the tarball
    is stored, and no upstream failure is counted."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.hold_tarballs = True
    first = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    second = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    m.http.flush()
    assert len(m.upstream.held) == 1  # both wait on one upstream answer
    first.cancel()
    with pytest.raises(CancelledError):
        await first
    m.upstream.release()
    blob, status = await m.settle(second)
    consumer = CollectingConsumer()
    await blob.send_to(consumer)
    assert status == "MISS" and consumer.data == tarball("demo", "1.0.0")
    assert m.upstream.asked("/-/") == 1 and await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")
    breaker = m.parts.mirror.upstream_of("demo").breaker
    assert (breaker.state, breaker.failures) == ("closed", 0)
    assert m.metrics.upstream_errors._metrics == {}


@pytest_twisted.ensureDeferred
async def test_the_fetch_finishes_and_stores_when_every_waiter_hung_up(tmp_path: Path) -> None:
    """A tarball fetch whose only client hung up still completes and stores the tarball."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.hold_tarballs = True
    only = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    m.http.flush()
    only.cancel()
    with pytest.raises(CancelledError):
        await only
    m.upstream.release()
    for _ in range(100):  # deliver the upstream's answer to the fetch nobody waits on
        m.http.flush()
        if await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz"):
            break
        await task.deferLater(reactor, 0, lambda: None)
    assert await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz") and m.upstream.asked("/-/") == 1


@pytest_twisted.ensureDeferred
async def test_a_tarball_at_an_odd_upstream_url_is_served_under_the_conventional_one(tmp_path: Path) -> None:
    """An upstream whose dist.tarball is /download/@s/p/1.0.0/<hash>: the document served points
    at <base>/@s/p/-/p-1.0.0.tgz, that tarball is fetched from the upstream's URL, and its bytes
    match the document's integrity."""
    m = build(tmp_path, FakeRegistry({"@s/p": odd_packument("@s/p", "1.0.0")}))
    document = await m.settle(m.parts.mirror.served_document("@s/p", BASE))
    dist = document["versions"]["1.0.0"]["dist"]
    assert dist["tarball"] == f"{BASE}/@s/p/-/p-1.0.0.tgz"
    filename = names.tarball_file_from_url(dist["tarball"])
    names.validate_tarball_filename("@s/p", filename)  # a path the tarball route accepts
    blob, status = await m.settle(m.parts.mirror.tarball("@s/p", filename))
    consumer = CollectingConsumer()
    await blob.send_to(consumer)
    assert status == "MISS" and consumer.data == tarball("@s/p", "1.0.0")
    assert dist["integrity"] == "sha512-" + base64.b64encode(hashlib.sha512(consumer.data).digest()).decode()
    assert m.upstream.asked("/download/@s/p/1.0.0/") == 1
    stored = await m.parts.documents.mirrored_document("@s/p")
    assert stored["versions"]["1.0.0"]["dist"]["tarball"].startswith(UPSTREAM + "/download/")


@pytest_twisted.ensureDeferred
async def test_fsck_counts_a_tarball_kept_under_its_conventional_name_as_named(tmp_path: Path) -> None:
    """fsck (and so gc) reads the odd-URL document's tarball as named by it, not as an orphan."""
    m = build(tmp_path, FakeRegistry({"@s/p": odd_packument("@s/p", "1.0.0")}))
    await m.settle(m.parts.mirror.served_document("@s/p", BASE))
    blob, _ = await m.settle(m.parts.mirror.tarball("@s/p", "p-1.0.0.tgz"))
    blob.close()
    report = await scan(open_storage(str(tmp_path / "registry")), quarantine=False)
    assert report.tarballs == 1 and [f.kind for f in report.findings] == []


@pytest_twisted.ensureDeferred
async def test_through_the_route_a_refused_tarball_is_cut_before_its_declared_length(tmp_path: Path) -> None:
    """GET of a missing tarball whose bytes turn out corrupt, through nopard's site: the answer began
    (200, the upstream's Content-Length, the bytes as they came but the last) and the connection is
    closed short of that length, with no error body appended; nothing is stored. It used to be a 502
    once all was fetched."""
    fake = FakeRegistry({"demo": packument("demo", "1.0.0")})
    app = routes.build(tmp_path, upstream=fake)
    assert (await app.call("GET", "/demo")).status == 200
    fake.fault, fake.hold_tarballs = "corrupt", True
    exchange = Deferred.fromCoroutine(app.raw(b"GET /demo/-/demo-1.0.0.tgz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    for step in range(200):
        assert app.upstream_http is not None
        app.upstream_http.flush()
        if step == 5:
            fake.send(10)
        if step == 10:
            fake.release()
        if exchange.called:
            break
        await task.deferLater(reactor, 0, lambda: None)
    answer = await exchange
    head, _, body = answer.reply.partition(b"\r\n\r\n")
    assert answer.status == 200 and b"Content-Length: %d" % len(TARBALL) in head
    assert answer.closed and body == TARBALL[::-1][:-1]  # all it had but the last byte, no error body
    assert not await app.storage.exists(keys.upstream_tarball_key("demo", "demo-1.0.0.tgz"))


def test_spools_of_processes_gone_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A fetch killed with its process (kill -9 of a worker) leaves its spool file; the next
    process to start removes it, never the spool of a process still fetching."""
    from nopard.mirror.spool import Spool, remove_orphans

    mine = Spool(str(tmp_path))
    mine.append(b"half a tarball")
    Path(tmp_path, ".fetch-4242-abc").write_bytes(b"left by a killed worker")
    Path(tmp_path, ".fetch-4343-def").write_bytes(b"a live worker's fetch")
    Path(tmp_path, "something-else").write_bytes(b"")
    assert remove_orphans(str(tmp_path), lambda pid: pid == 4343) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(mine.path).name, ".fetch-4343-def", "something-else"])
    mine.end()
    assert remove_orphans(str(tmp_path / "none"), lambda pid: False) == 0
