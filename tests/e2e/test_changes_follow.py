"""A nopard in another site following a central nopard's changes feed (NOPARD_CHANGES_URL), with real npm.

Two twistd processes: the central nopard (private packages published with npm 11) and the site's
nopard, whose upstream is the central one and which follows its /-/nopard/changes. Every request
the central nopard receives is counted from its access log (NOPARD_LOG_FORMAT=json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.package_managers import registry_key
from tests.polling import poll_until
from tests.support import NopardServer, Npm, make_package

INTERVAL = "3"  # the site's NOPARD_SYNC_INTERVAL


def records(server: NopardServer, event: str) -> list[dict[str, Any]]:
    """The server's JSON log lines of one event, in order."""
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    return [record for record in map(json.loads, lines) if record.get("event") == event]


def document_gets(requests: list[dict[str, Any]]) -> list[str]:
    """The package documents asked for among access records (not /-/ routes, not tarballs)."""
    return [r["path"] for r in requests if r["method"] == "GET" and not r["path"].startswith("/-/")
            and "/-/" not in r["path"]]


@pytest.fixture
def sites(tmp_path: Path) -> Any:
    """The central nopard with team-lib@1.0.0 published by npm, and npm logged in there."""
    central = NopardServer(tmp_path / "central", {"NOPARD_LOG_FORMAT": "json", "NOPARD_SYNC_INTERVAL": "0"})
    site = NopardServer(tmp_path / "site", {
        "NOPARD_FORWARDER_URL": central.url, "NOPARD_CHANGES_URL": central.url + "-/nopard/changes",
        "NOPARD_SYNC_INTERVAL": INTERVAL, "NOPARD_LOG_FORMAT": "json",
        # Stale at once: a sweep would revalidate team-lib every run, so only the feed keeps it from that.
        "NOPARD_META_TTL": "1"})
    central.start()
    try:
        npm = Npm(central.url, tmp_path / "publisher")
        with npm.userconfig.open("a") as npmrc:
            npmrc.write(f"{registry_key(central.url)}:_authToken={central.token('alice', 'secret-pw')}\n")
        npm.run("publish", cwd=make_package(tmp_path / "lib-1.0.0", "team-lib", "1.0.0"))
        yield central, site, npm
    finally:
        site.stop()
        central.stop()


def test_a_publish_on_the_central_nopard_reaches_the_site_with_no_polling(sites: Any, tmp_path: Path) -> None:
    """The site mirrors team-lib through the central nopard; npm publishes 1.0.1 on the central one;
    the site's first sync run after it has 1.0.1 in its store (nobody asking it), and over three runs
    the central nopard received no document GET but that one package's, beside the feed's pages, though
    the site's copy is stale at once (NOPARD_META_TTL=1: a sweep would revalidate it every run)."""
    central, site, npm = sites
    site.start()
    poll_until(lambda: records(site, "changes-start"), "the site's first run taking the feed's position")
    reader = Npm(site.url, tmp_path / "reader")
    assert reader.run("view", "team-lib", "version").stdout.strip() == "1.0.0"
    seen = len(records(central, "access"))
    npm.run("publish", cwd=make_package(tmp_path / "lib-1.0.1", "team-lib", "1.0.1"))
    runs = len(records(site, "sync-finished"))  # npm takes longer than an interval: count from here

    def refreshes() -> list[int]:
        return [r["changed"] for r in records(site, "sync-finished")[runs:] if r.get("job") == "refresh"]

    poll_until(lambda: 1 in refreshes(), "a refresh run of the site changing team-lib", timeout=60)
    # The first refresh run after the publish took it (or the second: the first may have been going on).
    assert refreshes()[:2] in ([1], [0, 1], [1, 0]), refreshes()
    stored = site.registry / "packages" / "team-lib" / "upstream" / "package.json"  # nobody asked the site
    assert "1.0.1" in json.loads(stored.read_text())["versions"]
    poll_until(lambda: len(refreshes()) >= 3, "two more refresh runs", timeout=60)
    asked = [r for r in records(central, "access")[seen:] if r["user"] != "alice"]  # the site's, not npm's
    assert document_gets(asked) == ["/team-lib"], [r["path"] for r in asked]
    assert {r["path"].split("?")[0] for r in asked if r["path"].startswith("/-/")} == {"/-/nopard/changes"}
    assert not records(site, "changes-failed")
