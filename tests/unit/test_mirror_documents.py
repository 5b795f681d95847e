"""Mirrored documents in-process: the offline-first table against a fake upstream, on a Clock."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import pytest_twisted

from nopard.domain.errors import NotFound, UpstreamUnavailable
from nopard.domain.publication import Publication
from tests.unit.mirror_harness import FakeRegistry, MirrorUnderTest, build, packument

BASE = "http://127.0.0.1:5984"
TTL = 10.0


def upstream_with(*names: str) -> FakeRegistry:
    """A fake upstream holding version 1.0.0 of each name."""
    return FakeRegistry({name: packument(name, "1.0.0") for name in names})


@pytest_twisted.ensureDeferred
async def test_missing_document_is_fetched_stored_and_served(tmp_path: Path) -> None:
    """A name nopard lacks is fetched once from the upstream and served as a MISS."""
    m = build(tmp_path, upstream_with("demo"))
    prepared, status = await m.settle(m.parts.mirror.packument("demo", BASE))
    assert status == "MISS" and m.upstream.asked() == 1
    assert (await m.parts.documents.mirrored_document("demo"))["versions"].keys() == {"1.0.0"}


@pytest_twisted.ensureDeferred
async def test_fresh_document_is_served_without_asking_the_upstream(tmp_path: Path) -> None:
    """Within META_TTL the stored copy is served (HIT) and the upstream is not asked again."""
    m = build(tmp_path, upstream_with("demo"), meta_ttl=str(TTL))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.clock.advance(TTL - 1)
    _, status = await m.settle(m.parts.mirror.packument("demo", BASE))
    assert status == "HIT" and m.upstream.asked() == 1


@pytest_twisted.ensureDeferred
async def test_stale_document_is_revalidated_with_its_etag(tmp_path: Path) -> None:
    """Past META_TTL the copy is revalidated with If-None-Match carrying the stored ETag."""
    m = build(tmp_path, upstream_with("demo"), meta_ttl=str(TTL))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.clock.advance(TTL + 1)
    _, status = await m.settle(m.parts.mirror.packument("demo", BASE))
    assert status == "REVALIDATED"
    assert m.upstream.requests[-1][1]["if-none-match"] == m.upstream.etag("demo")


@pytest_twisted.ensureDeferred
async def test_not_modified_keeps_the_copy_and_renews_its_time(tmp_path: Path) -> None:
    """A 304 keeps the stored document and marks it confirmed now."""
    m = build(tmp_path, upstream_with("demo"), meta_ttl=str(TTL))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.clock.advance(TTL + 1)
    await m.settle(m.parts.mirror.packument("demo", BASE))
    meta = await m.parts.documents.mirrored_meta("demo")
    assert meta is not None and meta.fetched_at == m.clock.seconds()


@pytest_twisted.ensureDeferred
async def test_changed_upstream_document_replaces_the_copy(tmp_path: Path) -> None:
    """A 200 to the revalidation replaces the stored document with the new one."""
    m = build(tmp_path, upstream_with("demo"), meta_ttl=str(TTL))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.documents["demo"] = packument("demo", "1.0.0", "1.1.0")
    m.clock.advance(TTL + 1)
    document = await m.settle(m.parts.mirror.served_document("demo", BASE))
    assert document["dist-tags"]["latest"] == "1.1.0"
    assert (await m.parts.documents.mirrored_document("demo"))["dist-tags"]["latest"] == "1.1.0"


@pytest_twisted.ensureDeferred
async def test_stale_document_is_served_when_the_upstream_fails(tmp_path: Path) -> None:
    """A revalidation answered with a 5xx serves the stale copy (STALE), not an error."""
    m = build(tmp_path, upstream_with("demo"), meta_ttl=str(TTL))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.fault = "5xx"
    m.clock.advance(TTL + 1)
    _, status = await m.settle(m.parts.mirror.packument("demo", BASE))
    assert status == "STALE" and m.upstream.asked() == 2


async def open_breaker(m: MirrorUnderTest, name: str) -> None:
    """Fail three refreshes of ``name`` so the upstream's breaker opens."""
    m.upstream.fault = "5xx"
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            await m.settle(m.parts.mirror.refresh(name))
    assert m.parts.mirror.upstream_of(name).breaker.down


@pytest_twisted.ensureDeferred
async def test_open_breaker_serves_stale_at_once_without_a_call(tmp_path: Path) -> None:
    """With the breaker open a stale copy is served (STALE) and nothing goes upstream."""
    m = build(tmp_path, upstream_with("demo"), meta_ttl=str(TTL))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.clock.advance(TTL + 1)
    await open_breaker(m, "demo")
    asked = m.upstream.asked()
    _, status = await m.settle(m.parts.mirror.packument("demo", BASE))
    assert status == "STALE" and m.upstream.asked() == asked


@pytest_twisted.ensureDeferred
async def test_missing_name_with_the_upstream_down_fails_fast_and_clearly(tmp_path: Path) -> None:
    """A name never fetched, breaker open and its probe in flight: NotFound saying the upstream is
    unreachable, no call of its own."""
    m = build(tmp_path, upstream_with("demo", "other", "third"))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    await open_breaker(m, "demo")
    m.upstream.fault = "silent"
    probe = m.started(m.parts.mirror.packument("third", BASE))
    m.http.flush()
    asked = m.upstream.asked()
    with pytest.raises(NotFound, match="not cached here and the upstream is unreachable"):
        await m.settle(m.parts.mirror.packument("other", BASE))
    assert m.upstream.asked() == asked and not probe.called


@pytest_twisted.ensureDeferred
async def test_a_name_never_stored_is_the_probe_when_the_upstream_came_back(tmp_path: Path) -> None:
    """The breaker is open and its probe timer has not fired, but the upstream is back: a request
    for a name nopard never stored (nothing to serve) is the probe at once, and is served; the
    breaker closes. It used to fail fast until the probe timer fired."""
    m = build(tmp_path, upstream_with("demo", "other"), probe_interval="600")
    await m.settle(m.parts.mirror.packument("demo", BASE))
    await open_breaker(m, "demo")
    m.upstream.fault = None
    asked = m.upstream.asked()
    _, status = await m.settle(m.parts.mirror.packument("other", BASE))
    breaker = m.parts.mirror.upstream_of("other").breaker
    assert status == "MISS" and m.upstream.asked() == asked + 1 and breaker.state == "closed"


@pytest_twisted.ensureDeferred
async def test_missing_name_with_a_silent_upstream_is_not_found_after_the_stale_deadline(tmp_path: Path) -> None:
    """An upstream that never answers: the client gets NotFound once NOPARD_STALE_DEADLINE passes."""
    m = build(tmp_path, upstream_with("demo"), stale_deadline="2")
    m.upstream.fault = "silent"
    pending = m.started(m.parts.mirror.packument("demo", BASE))
    m.http.flush()
    assert not pending.called
    m.clock.advance(2)
    with pytest.raises(NotFound, match="upstream is unreachable"):
        await m.settle(pending)


@pytest_twisted.ensureDeferred
async def test_upstream_404_is_not_found(tmp_path: Path) -> None:
    """A name the upstream does not have is NotFound."""
    m = build(tmp_path, upstream_with())
    with pytest.raises(NotFound, match="package not found: nothing"):
        await m.settle(m.parts.mirror.packument("nothing", BASE))


@pytest_twisted.ensureDeferred
async def test_concurrent_misses_share_one_upstream_request(tmp_path: Path) -> None:
    """Two clients asking for a missing name at once cause one upstream GET."""
    m = build(tmp_path, upstream_with("demo"))
    first = m.started(m.parts.mirror.packument("demo", BASE))
    second = m.started(m.parts.mirror.packument("demo", BASE))
    assert (await m.settle(first))[1] == "MISS"
    await m.settle(second)
    assert m.upstream.asked() == 1


@pytest_twisted.ensureDeferred
async def test_private_scope_is_never_sent_upstream(tmp_path: Path) -> None:
    """A name in NOPARD_PRIVATE_SCOPES is NotFound without any upstream request."""
    m = build(tmp_path, upstream_with("@acme/secret"), private_scopes="@acme")
    with pytest.raises(NotFound):
        await m.settle(m.parts.mirror.packument("@acme/secret", BASE))
    assert m.upstream.asked() == 0


@pytest_twisted.ensureDeferred
async def test_locally_published_name_is_never_sent_upstream(tmp_path: Path) -> None:
    """A name published here is served LOCAL and the upstream, which has it too, is not asked."""
    m = build(tmp_path, upstream_with("mine"))
    manifest = {"name": "mine", "version": "2.0.0", "dist": {}}
    publication = Publication("mine", {"2.0.0": manifest}, {"2.0.0": b"local bytes"}, {"latest": "2.0.0"})
    await m.settle(m.registry.publish(publication, {"name": "pat", "email": "pat@example.test"}))
    _, status = await m.settle(m.parts.mirror.packument("mine", BASE))
    assert status == "LOCAL" and m.upstream.asked() == 0


@pytest_twisted.ensureDeferred
async def test_malformed_parts_of_an_upstream_document_are_dropped_not_fatal(tmp_path: Path) -> None:
    """An upstream document whose time is a list, one version a number and a tag an object is
    served (the good version kept) instead of answering 500."""
    document = packument("demo", "1.0.0")
    document["versions"]["2.0.0"] = 42
    document["time"] = ["not", "an", "object"]
    document["dist-tags"]["odd"] = {"x": 1}
    m = build(tmp_path, FakeRegistry({"demo": document}))
    prepared, status = await m.settle(m.parts.mirror.packument("demo", BASE))
    served = orjson.loads(prepared.full.identity)
    assert status == "MISS" and set(served["versions"]) == {"1.0.0"}
    assert served["dist-tags"] == {"latest": "1.0.0"} and served["time"] == {}
    assert set(orjson.loads(prepared.abbreviated.identity)["versions"]) == {"1.0.0"}


@pytest_twisted.ensureDeferred
async def test_a_silent_upstream_costs_a_wave_of_stale_documents_a_few_requests(tmp_path: Path) -> None:
    """200 stale documents asked for at once, then again every second for 12 s (an install), the
    upstream accepting requests and never answering: every answer is STALE and the upstream gets
    at most 5 requests (each request of the first wave used to wait on its own revalidation)."""
    names = [f"pkg-{i}" for i in range(200)]
    m = build(tmp_path, upstream_with(*names), meta_ttl=str(TTL), stale_deadline="2")
    for name in names:
        await m.settle(m.parts.mirror.packument(name, BASE))
    m.clock.advance(TTL + 1)
    m.upstream.fault = "silent"
    asked = m.upstream.asked()
    answers = []
    for _ in range(12):
        answers += [m.started(m.parts.mirror.packument(name, BASE)) for name in names]
        m.http.flush()
        m.clock.advance(1)
    assert m.upstream.asked() - asked <= 5
    m.clock.advance(2)  # past the stale deadline of the last revalidation
    statuses = [(await m.settle(answer))[1] for answer in answers]
    assert set(statuses) == {"STALE"} and len(statuses) == 2400


@pytest_twisted.ensureDeferred
async def test_while_a_revalidation_is_unanswered_the_others_serve_stale_then_revalidate_again(
    tmp_path: Path,
) -> None:
    """A revalidation waits on the upstream (health unknown): another stale document is served STALE
    at once with no request of its own; once the upstream answered, it is revalidated again."""
    m = build(tmp_path, upstream_with("a", "b"), meta_ttl=str(TTL))
    for name in ("a", "b"):
        await m.settle(m.parts.mirror.packument(name, BASE))
    m.clock.advance(TTL + 1)
    m.upstream.hold_documents = True
    probe = m.started(m.parts.mirror.packument("a", BASE))
    m.http.flush()
    asked = m.upstream.asked()
    _, status = await m.settle(m.parts.mirror.packument("b", BASE))
    assert status == "STALE" and m.upstream.asked() == asked
    m.upstream.release()
    assert (await m.settle(probe))[1] == "REVALIDATED"
    m.upstream.hold_documents = False
    _, status = await m.settle(m.parts.mirror.packument("b", BASE))
    assert status == "REVALIDATED" and m.upstream.asked() == asked + 1
