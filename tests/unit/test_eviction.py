"""The eviction job in-process (nopard.jobs.eviction): the mirror measured, least recently used
upstream tarballs evicted past NOPARD_MIRROR_MAX_SIZE, local packages and pinned versions kept,
an evicted tarball fetched again when asked for; the size, limit and evictions in the status,
the status page and the metrics. The e2e tests (tests/e2e/test_eviction.py) do the same with npm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from nopard.jobs import eviction
from nopard.jobs.sync import StoreLock
from nopard.storage import keys
from tests.support import publish_body
from tests.unit.mirror_harness import FakeRegistry, packument, tarball
from tests.unit.route_harness import OPERATOR_TOKEN, InProcess, build

OPERATOR = {"X_Nopard_Operator_Token": OPERATOR_TOKEN}
NAMES = ("oldest", "older", "newer", "newest")


async def evict(app: InProcess) -> dict:
    answer = await app.call("POST", "/-/nopard/sync", body={"job": "evict"}, **OPERATOR)
    assert answer.status == 200, answer.body
    (report,) = answer.json()["reports"]
    return report


async def mirrored(tmp_path: Path) -> tuple[InProcess, FakeRegistry]:
    """A nopard that served each of NAMES' tarball (and document) in turn, a minute apart."""
    upstream = FakeRegistry({name: packument(name, "1.0.0", "2.0.0") for name in NAMES})
    app = build(tmp_path, upstream=upstream)
    for name in NAMES:
        app.clock.advance(60)
        for version in ("1.0.0", "2.0.0"):
            assert (await app.call("GET", f"/{name}/-/{name}-{version}.tgz")).status == 200
    return app, upstream


def stored_tarballs(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "registry" / "packages").glob("*/upstream/tarballs/*")}


@pytest_twisted.ensureDeferred
async def test_least_recently_used_tarballs_go_first_and_come_back_when_asked(tmp_path: Path) -> None:
    app, upstream = await mirrored(tmp_path)
    report = await evict(app)  # no limit: measured only
    measured = (await app.call("GET", "/-/nopard/status")).json()["mirror"]
    assert report["changed"] == 0 and measured["limit"] is None and measured["size"] > 0
    three = 2 * len(tarball("oldest", "1.0.0")) + len(tarball("older", "1.0.0"))
    app.settings.update(mirror_max_size=measured["size"] - three)  # three tarballs must go
    report = await evict(app)
    assert (report["changed"], report["bytes"]) == (3, three)
    assert stored_tarballs(tmp_path) == {"older-2.0.0.tgz", "newer-1.0.0.tgz", "newer-2.0.0.tgz",
                                         "newest-1.0.0.tgz", "newest-2.0.0.tgz"}
    status = (await app.call("GET", "/-/nopard/status")).json()["mirror"]
    assert status == {**status, "size": measured["size"] - three, "evictions": 3,
                      "limit": measured["size"] - three}
    # The documents stayed: the evicted tarball is fetched again, and is stored again.
    upstream.requests.clear()
    again = await app.call("GET", "/oldest/-/oldest-1.0.0.tgz")
    assert (again.status, again.body) == (200, tarball("oldest", "1.0.0"))
    assert [path for path, _ in upstream.requests] == ["/oldest/-/oldest-1.0.0.tgz"]
    assert "oldest-1.0.0.tgz" in stored_tarballs(tmp_path)
    exposition = (await app.call("GET", "/-/metrics")).body.decode()
    assert "nopard_mirror_evictions_total 3.0" in exposition
    assert f"nopard_mirror_limit_bytes {float(measured['size'] - three)}" in exposition
    assert app.metrics is not None and app.metrics.history is not None
    await app.metrics.history.measure()  # the status page's 24-hour chart of sizes
    page = (await app.call("GET", "/-/web/status")).body.decode()
    assert "3 tarballs evicted" in page and "(NOPARD_MIRROR_MAX_SIZE)" in page and "mirror limit: " in page


@pytest_twisted.ensureDeferred
async def test_a_recent_use_saves_a_tarball_from_eviction(tmp_path: Path) -> None:
    """Use is counted per tarball: oldest-1.0.0 used again is kept, its sibling goes first, then older's."""
    app, _ = await mirrored(tmp_path)
    app.clock.advance(60)
    assert (await app.call("GET", "/oldest/-/oldest-1.0.0.tgz")).status == 200
    for gone in ("oldest-2.0.0.tgz", "older-1.0.0.tgz"):
        await evict(app)
        app.settings.update(mirror_max_size=(await app.call("GET", "/-/nopard/status")).json()["mirror"]["size"] - 1)
        assert (await evict(app))["changed"] == 1
        assert gone not in stored_tarballs(tmp_path) and "oldest-1.0.0.tgz" in stored_tarballs(tmp_path)
    assert len(stored_tarballs(tmp_path)) == 6


@pytest_twisted.ensureDeferred
async def test_local_packages_and_pinned_versions_stay_unless_asked(tmp_path: Path) -> None:
    app, _ = await mirrored(tmp_path)
    assert (await app.call("PUT", "/mine", publish_body("mine", "1.0.0"), token=await app.user("pat"))).status == 201
    prefetched = await app.call("POST", "/-/nopard/prefetch", body={"packages": [["oldest", "1.0.0"]]},
                                **OPERATOR)
    assert prefetched.status == 200
    app.settings.update(mirror_max_size=1)
    report = await evict(app)
    assert stored_tarballs(tmp_path) == {"oldest-1.0.0.tgz"}
    assert report["failure_count"] == 1  # still over the limit: said so
    assert (tmp_path / "registry" / "packages" / "mine" / "tarballs" / "mine-1.0.0.tgz").exists()
    assert (await app.storage.read(keys.USAGE_PINNED)) is not None
    app.settings.update(mirror_evict_pinned=True)
    await evict(app)
    assert stored_tarballs(tmp_path) == set()
    assert (tmp_path / "registry" / "packages" / "mine" / "tarballs" / "mine-1.0.0.tgz").exists()


@pytest_twisted.ensureDeferred
async def test_a_run_evicts_at_most_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = await mirrored(tmp_path)
    monkeypatch.setattr(eviction, "EVICT_BATCH", 2)
    app.settings.update(mirror_max_size=1)
    assert (await evict(app))["changed"] == 2
    assert len(stored_tarballs(tmp_path)) == 6
    assert (await evict(app))["changed"] == 2


@pytest_twisted.ensureDeferred
async def test_backfill_fetches_only_into_the_room_left(tmp_path: Path) -> None:
    """A tag target evicted is not backfilled while the mirror has no room (eviction would take it
    again, never used); with room, backfill fetches it as usual."""
    app, upstream = await mirrored(tmp_path)
    app.skip_idle_time = True  # backfill paces its requests by the clock
    await evict(app)
    size = (await app.call("GET", "/-/nopard/status")).json()["mirror"]["size"]
    app.settings.update(mirror_max_size=size - 2 * len(tarball("oldest", "1.0.0")))
    assert (await evict(app))["changed"] == 2  # oldest-1.0.0 and oldest-2.0.0, its latest
    upstream.requests.clear()
    answer = await app.call("POST", "/-/nopard/sync", body={"job": "backfill"}, **OPERATOR)
    assert answer.json()["reports"][0]["tarballs"] == 0 and not upstream.asked(".tgz")
    app.settings.update(mirror_max_size=10**9)
    answer = await app.call("POST", "/-/nopard/sync", body={"job": "backfill"}, **OPERATOR)
    assert answer.json()["reports"][0]["tarballs"] == 1 and upstream.asked(".tgz") == 1
    assert "oldest-2.0.0.tgz" in stored_tarballs(tmp_path)


@pytest_twisted.ensureDeferred
async def test_one_instance_evicts_at_a_time(tmp_path: Path) -> None:
    app, _ = await mirrored(tmp_path)
    assert app.storage is not None
    other = StoreLock(app.storage, app.clock, "another instance")
    assert await other.acquire("evict")
    app.settings.update(mirror_max_size=1)
    report = await evict(app)
    assert report["skipped"] == "another nopard instance is running it" and len(stored_tarballs(tmp_path)) == 8
    await other.release("evict")
    assert (await evict(app))["changed"] == 8
