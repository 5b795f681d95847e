"""The firewall through the routes (issue 16): quarantined and blocked versions gone from every
answer, their tarballs refused with why, and a version released when its time comes, on a Clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from nopard.domain.times import iso_time
from nopard.storage import keys
from tests.support import publish_body
from tests.unit.mirror_harness import FakeRegistry, packument
from tests.unit.route_harness import OPERATOR_TOKEN, InProcess, build

DAY = 86400.0
NOW = 1_800_000_000.0  # the harness's clock at the start


def timed(name: str, ages: dict[str, float | None]) -> dict[str, Any]:
    """An upstream document whose versions were published ``ages`` seconds before NOW (None: no time)."""
    document = packument(name, *ages)
    document["time"] = {v: iso_time(NOW - age) for v, age in ages.items() if age is not None}
    document["time"]["created"] = iso_time(NOW - 100 * DAY)
    document["time"]["modified"] = iso_time(NOW - min(a for a in ages.values() if a is not None))
    return document


def app_with(tmp_path: Path, documents: dict[str, dict[str, Any]], **settings: str) -> tuple[InProcess, FakeRegistry]:
    upstream = FakeRegistry(documents=documents)
    settings.setdefault("meta_ttl", str(30 * DAY))  # fresh throughout: nothing asks the upstream again
    app = build(tmp_path, upstream=upstream, **settings)
    app.skip_idle_time = True
    return app, upstream


def young_pkg() -> dict[str, Any]:
    return timed("pkg", {"1.0.0": 20 * DAY, "1.1.0": 10 * DAY, "1.2.0": DAY})


@pytest_twisted.ensureDeferred
async def test_young_versions_are_gone_from_every_form(tmp_path: Path) -> None:
    """Full and abbreviated documents, dist-tags and /pkg/latest all agree: 1.2.0 is not there yet."""
    app, _ = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    full = (await app.call("GET", "/pkg")).json()
    assert sorted(full["versions"]) == ["1.0.0", "1.1.0"]
    assert full["dist-tags"]["latest"] == "1.1.0" and "1.2.0" not in full["time"]
    assert all(v in full["time"] for v in full["versions"])
    small = (await app.call("GET", "/pkg", Accept="application/vnd.npm.install-v1+json")).json()
    assert sorted(small["versions"]) == ["1.0.0", "1.1.0"] and small["dist-tags"]["latest"] == "1.1.0"
    assert (await app.call("GET", "/-/package/pkg/dist-tags")).json()["latest"] == "1.1.0"
    assert (await app.call("GET", "/pkg/latest")).json()["version"] == "1.1.0"


@pytest_twisted.ensureDeferred
async def test_a_young_version_and_its_tarball_say_when_they_come(tmp_path: Path) -> None:
    """/pkg/1.2.0 and its tarball answer 404 naming the version and its release time."""
    app, _ = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    release = iso_time(NOW - DAY + 3 * DAY)
    for path in ("/pkg/1.2.0", "/pkg/-/pkg-1.2.0.tgz"):
        answer = await app.call("GET", path)
        assert answer.status == 404, (path, answer.body)
        assert "pkg@1.2.0" in answer.json()["error"] and release in answer.json()["error"]
        assert answer.json()["until"] == release and answer.json()["kind"] == "quarantined"
    assert (await app.call("GET", "/pkg/-/pkg-1.1.0.tgz")).status == 200


@pytest_twisted.ensureDeferred
async def test_a_pinned_tarball_is_refused_without_the_document_asked_first(tmp_path: Path) -> None:
    """A lockfile's client asks for the tarball straight away: still refused, and not fetched."""
    app, upstream = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    assert (await app.call("GET", "/pkg/-/pkg-1.2.0.tgz")).status == 404
    assert upstream.asked(".tgz") == 0


@pytest_twisted.ensureDeferred
async def test_a_version_is_released_at_its_time_without_asking_the_upstream(tmp_path: Path) -> None:
    """When 1.2.0 is old enough it is served, latest moves to it, and the ETag and modified change."""
    app, upstream = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    before = await app.call("GET", "/pkg")
    asked = upstream.asked("/pkg")
    app.clock.advance(2 * DAY + 1)
    after = await app.call("GET", "/pkg")
    assert after.json()["dist-tags"]["latest"] == "1.2.0" and "1.2.0" in after.json()["time"]
    assert after.headers["etag"] != before.headers["etag"]
    assert after.json()["time"]["modified"] > before.json()["time"]["modified"]
    assert upstream.asked("/pkg") == asked
    assert (await app.call("GET", "/pkg/-/pkg-1.2.0.tgz")).status == 200


@pytest_twisted.ensureDeferred
async def test_a_version_without_a_time_counts_as_young(tmp_path: Path) -> None:
    """No ``time`` for a version: withheld, with no release time to give."""
    app, _ = app_with(tmp_path, {"pkg": timed("pkg", {"1.0.0": 20 * DAY, "2.0.0": None})}, min_release_age="3d")
    assert sorted((await app.call("GET", "/pkg")).json()["versions"]) == ["1.0.0"]
    answer = await app.call("GET", "/pkg/-/pkg-2.0.0.tgz")
    assert answer.status == 404 and "no publish time" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_exclusions_and_rules_decide_per_package(tmp_path: Path) -> None:
    """NOPARD_MIN_RELEASE_AGE_EXCLUDE globs and a rule's min_release_age override the setting."""
    documents = {"pkg": young_pkg(), "@acme/tool": timed("@acme/tool", {"1.0.0": 20 * DAY, "1.1.0": DAY})}
    app, _ = app_with(tmp_path, documents, min_release_age="3d", min_release_age_exclude="@acme/*")
    assert sorted((await app.call("GET", "/@acme%2ftool")).json()["versions"]) == ["1.0.0", "1.1.0"]
    rules = {"packages": [{"pattern": "pkg", "access": ["$all"], "proxy": ["$all"], "min_release_age": "12h"},
                          {"pattern": "**", "access": ["$all"], "proxy": ["$all"]}]}
    ruled = build(tmp_path / "ruled", rules=rules, upstream=FakeRegistry(documents=documents),
                  min_release_age="3d", meta_ttl=str(30 * DAY))
    ruled.skip_idle_time = True
    assert "1.2.0" in (await ruled.call("GET", "/pkg")).json()["versions"]  # a day old: past its 12h


@pytest_twisted.ensureDeferred
async def test_local_packages_are_never_quarantined(tmp_path: Path) -> None:
    """A version published here a second ago is served at once."""
    app, _ = app_with(tmp_path, {}, min_release_age="3d", auth_write="no")
    assert (await app.call("PUT", "/mine", publish_body("mine", "1.0.0"))).status == 201
    assert list((await app.call("GET", "/mine")).json()["versions"]) == ["1.0.0"]
    assert (await app.call("GET", "/mine/-/mine-1.0.0.tgz")).status == 200


@pytest_twisted.ensureDeferred
async def test_blocked_versions_vanish_and_their_tarballs_say_why(tmp_path: Path) -> None:
    """A block withholds its range at once (451 with the reason); removed, the versions come back."""
    app, _ = app_with(tmp_path, {"pkg": young_pkg()})
    assert (await app.call("GET", "/pkg")).json()["dist-tags"]["latest"] == "1.2.0"
    assert app.firewall is not None
    block = await app.firewall.blocks.add("pkg", ">=1.1.0", "hijacked maintainer account")
    served = (await app.call("GET", "/pkg")).json()
    assert sorted(served["versions"]) == ["1.0.0"] and served["dist-tags"]["latest"] == "1.0.0"
    answer = await app.call("GET", "/pkg/-/pkg-1.1.0.tgz")
    assert answer.status == 451 and "hijacked maintainer account" in answer.json()["error"]
    assert (await app.call("GET", "/pkg/1.2.0")).status == 451
    await app.firewall.blocks.remove_id(block.id)
    assert (await app.call("GET", "/pkg")).json()["dist-tags"]["latest"] == "1.2.0"
    assert (await app.call("GET", "/pkg/-/pkg-1.1.0.tgz")).status == 200


@pytest_twisted.ensureDeferred
async def test_admins_block_and_unblock_through_the_api(tmp_path: Path) -> None:
    """POST /-/nopard/blocks blocks at once; GET lists it; DELETE lifts it; others are refused."""
    upstream = FakeRegistry(documents={"pkg": young_pkg()})
    app = build(tmp_path, upstream=upstream, admins=("root",), meta_ttl=str(30 * DAY))
    app.skip_idle_time = True
    admin, other = await app.user("root"), await app.user("bob")
    spec = {"spec": "pkg@>=1.1.0 <1.2.0", "reason": "typosquat"}
    assert (await app.call("POST", "/-/nopard/blocks", spec)).status == 401
    assert (await app.call("POST", "/-/nopard/blocks", spec, token=other)).status == 403
    added = await app.call("POST", "/-/nopard/blocks", spec, token=admin)
    assert added.status == 201, added.body
    block = added.json()["block"]
    assert sorted((await app.call("GET", "/pkg")).json()["versions"]) == ["1.0.0", "1.2.0"]
    listed = (await app.call("GET", "/-/nopard/blocks", token=admin)).json()["blocks"]
    assert [(b["name"], b["range"], b["reason"]) for b in listed] == [("pkg", ">=1.1.0 <1.2.0", "typosquat")]
    assert (await app.call("DELETE", f"/-/nopard/blocks/{block['id']}", token=other)).status == 403
    assert (await app.call("DELETE", f"/-/nopard/blocks/{block['id']}", token=admin)).status == 200
    assert "1.1.0" in (await app.call("GET", "/pkg")).json()["versions"]
    assert (await app.call("DELETE", f"/-/nopard/blocks/{block['id']}", token=admin)).status == 404


@pytest_twisted.ensureDeferred
async def test_a_bad_block_is_a_400_and_stores_nothing(tmp_path: Path) -> None:
    """A range npm cannot read, a bad name or no reason: 400 saying why; no block."""
    app = build(tmp_path, admins=("root",))
    admin = await app.user("root")
    for body in ({"spec": "pkg@!!", "reason": "x"}, {"spec": "Bad Name", "reason": "x"}, {"spec": "pkg@1"},
                 ["pkg"]):
        answer = await app.call("POST", "/-/nopard/blocks", body, token=admin)
        assert answer.status == 400 and answer.json()["error"], body
    assert (await app.call("GET", "/-/nopard/blocks", token=admin)).json() == {"blocks": []}


@pytest_twisted.ensureDeferred
async def test_a_version_newer_than_the_copy_is_young(tmp_path: Path) -> None:
    """A lockfile pinning a version published after nopard's copy was read: refused, not fetched."""
    app, upstream = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    assert (await app.call("GET", "/pkg")).status == 200
    upstream.documents["pkg"] = timed("pkg", {"1.0.0": 20 * DAY, "1.1.0": 10 * DAY, "1.2.0": DAY, "1.3.0": 60})
    answer = await app.call("GET", "/pkg/-/pkg-1.3.0.tgz")
    assert answer.status == 404 and "quarantined" in answer.json()["error"]
    assert upstream.asked(".tgz") == 0


@pytest_twisted.ensureDeferred
async def test_the_sync_fetches_quarantined_tarballs_ahead_and_no_blocked_one(tmp_path: Path) -> None:
    """Backfill keeps the young version's tarball (ready when released) and the served latest's;
    a blocked version's tarball is never fetched."""
    app, upstream = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d", backfill="tags")
    assert app.firewall is not None
    await app.firewall.blocks.add("pkg", "1.0.0", "leaks tokens")
    assert (await app.call("GET", "/pkg")).status == 200
    ran = await app.call("POST", "/-/nopard/sync", {"job": "backfill"}, X_Nopard_Operator_Token=OPERATOR_TOKEN)
    assert ran.status == 200, ran.body
    stored = {v for v in ("1.0.0", "1.1.0", "1.2.0")
              if (tmp_path / "registry" / keys.upstream_tarball_key("pkg", f"pkg-{v}.tgz")).exists()}
    assert stored == {"1.1.0", "1.2.0"}
    assert upstream.asked("pkg-1.0.0.tgz") == 0


@pytest_twisted.ensureDeferred
async def test_search_shows_the_version_served(tmp_path: Path) -> None:
    """Search gives the old-enough latest while a young one is quarantined, then the new one once released."""
    app, _ = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    assert (await app.call("GET", "/pkg")).status == 200
    found = (await app.call("GET", "/-/v1/search?text=pkg")).json()["objects"]
    assert [(o["package"]["name"], o["package"]["version"]) for o in found] == [("pkg", "1.1.0")]
    app.clock.advance(2 * DAY + 60)
    found = (await app.call("GET", "/-/v1/search?text=pkg")).json()["objects"]
    assert [o["package"]["version"] for o in found] == ["1.2.0"]
