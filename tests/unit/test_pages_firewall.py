"""What the firewall shows (issue 16 item 4): withheld versions on a package's page with why and
when, the counts on /-/nopard/status and /-/metrics, and the blocks page admins change blocks on."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from nopard.domain.times import iso_time
from tests.unit.mirror_harness import FakeRegistry
from tests.unit.route_harness import InProcess, build
from tests.unit.test_routes_accounts import post_form
from tests.unit.test_routes_firewall import DAY, NOW, app_with, young_pkg


async def browser_admin(tmp_path: Path) -> InProcess:
    app = build(tmp_path, admins=("root",), upstream=FakeRegistry(documents={"pkg": young_pkg()}),
                min_release_age="3d", meta_ttl=str(30 * DAY))
    app.skip_idle_time = True
    await app.user("root", "secret-pw")
    answer = await post_form(app, "/-/web/login", {"username": "root", "password": "secret-pw"})
    assert answer.status in (200, 303), answer.body
    return app


@pytest_twisted.ensureDeferred
async def test_the_package_page_shows_withheld_versions_with_why_and_when(tmp_path: Path) -> None:
    """A quarantined version is listed with its release time; a blocked one with the block's reason."""
    app, _ = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    assert app.firewall is not None
    await app.firewall.blocks.add("pkg", "1.0.0", "leaks tokens")
    page = (await app.call("GET", "/-/web/package/pkg")).body.decode()
    assert "Withheld versions" in page
    assert iso_time(NOW - DAY + 3 * DAY) in page  # when 1.2.0 leaves quarantine
    assert "leaks tokens" in page


@pytest_twisted.ensureDeferred
async def test_status_and_metrics_count_withheld_versions(tmp_path: Path) -> None:
    """/-/nopard/status and /-/metrics count the versions withheld and the tarballs refused."""
    app, _ = app_with(tmp_path, {"pkg": young_pkg()}, min_release_age="3d")
    assert app.firewall is not None
    await app.firewall.blocks.add("pkg", "1.0.0", "leaks tokens")
    await app.call("GET", "/pkg")
    assert (await app.call("GET", "/pkg/-/pkg-1.0.0.tgz")).status == 451
    firewall = (await app.call("GET", "/-/nopard/status")).json()["firewall"]
    assert firewall["withheld"] == {"quarantined": 1, "blocked": 1}
    assert firewall["refused"]["blocked"] == 1 and firewall["block_changes"]["added"] == 1
    metrics = (await app.call("GET", "/-/metrics")).body.decode()
    assert 'nopard_withheld_versions{kind="quarantined"} 1.0' in metrics
    assert 'nopard_withheld_refused_total{kind="blocked"} 1.0' in metrics
    assert 'nopard_block_changes_total{change="added"} 1.0' in metrics
    page = (await app.call("GET", "/-/web/status")).body.decode()
    assert "1 quarantined, 1 blocked" in page


@pytest_twisted.ensureDeferred
async def test_admins_add_and_remove_blocks_on_the_blocks_page(tmp_path: Path) -> None:
    """The blocks page's form blocks at once; its remove button lifts the block."""
    app = await browser_admin(tmp_path)
    added = await post_form(app, "/-/web/blocks", {"spec": "pkg@1.1.0", "reason": "compromised build"})
    assert added.status == 303, added.body
    page = (await app.call("GET", "/-/web/blocks")).body.decode()
    assert "pkg@1.1.0" in page and "compromised build" in page
    assert list((await app.call("GET", "/pkg")).json()["versions"]) == ["1.0.0"]
    assert app.firewall is not None
    block = (await app.firewall.blocks.all())[0]
    assert (await post_form(app, "/-/web/blocks", {"remove": block.id})).status == 303
    assert "No blocks." in (await app.call("GET", "/-/web/blocks")).body.decode()
    bad = await post_form(app, "/-/web/blocks", {"spec": "pkg@!!", "reason": "x"})
    assert bad.status == 400 and "not an npm version range" in bad.body.decode()
