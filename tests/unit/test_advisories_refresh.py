"""The advisories sync job in-process: NOPARD_ADVISORIES_URL's zip fetched by conditional GET,
imported when it changed, and a broken download reported without touching what is stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import task
from twisted.logger import Logger

from nopard.advisories.store import AdvisoryStore
from nopard.cli.maintenance import open_storage
from nopard.jobs.advisories import AdvisoryRefresh
from nopard.settings.config import LiveSettings, load_settings
from tests.fake_advisories import AdvisoryZip, ZipServer
from tests.support import REPO

DATA = REPO / "tests" / "data" / "advisories"
URL = "http://127.0.0.1:9/osv/npm/all.zip"


async def in_thread(work: Any) -> Any:
    """run_cpu stand-in: the work at once."""
    return work()


def refresher(tmp_path: Path, server: ZipServer, settings: LiveSettings | None = None
              ) -> tuple[AdvisoryRefresh, AdvisoryStore]:
    """The job over a fresh filesystem store, its URL served by ``server``."""
    settings = settings or LiveSettings(load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path / "registry"),
                                                           "NOPARD_ADVISORIES_URL": URL}))
    storage = open_storage(str(tmp_path / "registry"))
    store = AdvisoryStore(storage)
    job = AdvisoryRefresh(settings, StubTreq(server), store, storage, task.Clock(), in_thread,
                          str(tmp_path / "spool"), Logger(), owner="test")
    return job, store


@pytest_twisted.ensureDeferred
async def test_the_zip_is_imported_then_asked_for_conditionally(tmp_path: Path) -> None:
    """First run imports the records; the second sends the ETag, gets 304 and imports nothing."""
    server = ZipServer(AdvisoryZip(DATA))
    job, store = refresher(tmp_path, server)
    first = await job.run()
    assert first is not None and (first.checked, first.changed, first.failure_count) == (3, 2, 0)
    assert set(await store.advisories_for(["ms", "balanced-match"])) == {"ms", "balanced-match"}
    second = await job.run()
    assert second is not None and (second.checked, second.changed) == (0, 0)
    assert server.asked[0] is None and server.asked[1] is not None
    assert list((tmp_path / "spool").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_changed_zip_brings_the_new_record(tmp_path: Path) -> None:
    """A record added upstream changes the ETag: the next run imports just that change."""
    served = AdvisoryZip(DATA)
    job, store = refresher(tmp_path, ZipServer(served))
    await job.run()
    record = json.loads((DATA / "GHSA-2222-3333-4444.json").read_text())
    served.add({**record, "id": "GHSA-2222-3333-5555", "affected": [
        {"package": {"ecosystem": "npm", "name": "bytes"}, "versions": ["3.1.2"]}]})
    report = await job.run()
    assert report is not None and report.changed == 1
    assert [a.id for a in (await store.advisories_for(["bytes"]))["bytes"]] == ["GHSA-2222-3333-5555"]


@pytest_twisted.ensureDeferred
async def test_a_download_that_is_no_zip_is_reported_and_changes_nothing(tmp_path: Path) -> None:
    """Garbage instead of a zip: the run reports it, the stored advisories stay, the next good run imports."""
    server = ZipServer(AdvisoryZip(DATA))
    job, store = refresher(tmp_path, server)
    server.broken = True
    report = await job.run()
    assert report is not None and report.failure_count == 1 and "neither" in report.failures[0]["reason"]
    assert not await store.has_advisories()
    server.broken = False
    assert (await job.run()).changed == 2  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_without_a_url_the_job_does_nothing(tmp_path: Path) -> None:
    """NOPARD_ADVISORIES_URL empty: no run, no request."""
    server = ZipServer(AdvisoryZip(DATA))
    job, _ = refresher(tmp_path, server, LiveSettings(load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path)})))
    assert await job.run() is None and server.asked == []
