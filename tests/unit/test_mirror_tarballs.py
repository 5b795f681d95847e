"""Mirrored tarballs in-process: fetched once, verified, stored; corrupt ones refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from nopard.domain.errors import NotFound, UpstreamBadContent
from nopard.storage import keys
from tests.unit.mirror_harness import FakeRegistry, build, packument, tarball

BASE = "http://127.0.0.1:5984"


@pytest_twisted.ensureDeferred
async def test_tarball_is_fetched_once_then_served_from_the_store(tmp_path: Path) -> None:
    """The first read fetches (MISS), the second is a HIT with no further upstream request."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    _, first = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    _, second = await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
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
    """Bytes that do not match dist.integrity raise UpstreamBadContent and leave nothing stored."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    m.upstream.fault = "corrupt"
    with pytest.raises(UpstreamBadContent, match="does not match its integrity"):
        await m.settle(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    assert not await m.parts.tarballs.stored("demo", "demo-1.0.0.tgz")


@pytest_twisted.ensureDeferred
async def test_concurrent_tarball_misses_share_one_download(tmp_path: Path) -> None:
    """Two clients asking for a missing tarball at once cause one upstream tarball GET."""
    m = build(tmp_path, FakeRegistry({"demo": packument("demo", "1.0.0")}))
    await m.settle(m.parts.mirror.packument("demo", BASE))
    first = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    second = m.started(m.parts.mirror.tarball("demo", "demo-1.0.0.tgz"))
    await m.settle(first)
    await m.settle(second)
    assert m.upstream.asked("/-/") == 1


@pytest_twisted.ensureDeferred
async def test_tarball_of_a_private_scope_is_never_fetched(tmp_path: Path) -> None:
    """A tarball under NOPARD_PRIVATE_SCOPES is NotFound without any upstream request."""
    m = build(tmp_path, FakeRegistry({"@acme/secret": packument("@acme/secret", "1.0.0")}), private_scopes="@acme")
    with pytest.raises(NotFound):
        await m.settle(m.parts.mirror.tarball("@acme/secret", "secret-1.0.0.tgz"))
    assert m.upstream.asked() == 0
