"""The ``advisories`` sync job: NOPARD_ADVISORIES_URL's zip of OSV records, kept imported.

Each run sends one conditional GET (If-None-Match with the ETag of the last zip
imported from that URL): a 304 costs nothing more. A new zip is written to the spool
directory as it arrives (at most MAX_DOWNLOAD bytes), read and parsed in a thread
(nopard.advisories.sources bounds every record), imported, and then the ETag is
stored in ``advisories/source.json``, so a run killed half-way is simply done again.
One instance at a time runs it (the sync jobs' store lock).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import treq
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.advisories.sources import read_source
from nopard.advisories.store import AdvisoryStore, ImportReport, parse_items
from nopard.domain.times import iso_time
from nopard.domain.urls import without_credentials
from nopard.jobs.sync import JobReport, StoreLock
from nopard.ops.metrics import Metrics
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys

JOB = "advisories"
MAX_DOWNLOAD = 2 * 1024 * 1024 * 1024  # OSV's npm zip is a few hundred MB at most
RunInThread = Callable[..., Awaitable[Any]]
AfterImport = Callable[[ImportReport], Awaitable[object]]


class TooBig(Exception):
    """The download passed MAX_DOWNLOAD."""


class AdvisoryRefresh:
    """Refreshes the stored advisories from NOPARD_ADVISORIES_URL."""

    def __init__(self, settings: LiveSettings, http: Any, store: AdvisoryStore, storage: Storage,
                 clock: IReactorTime, run_cpu: RunInThread, spool: str, log: Logger, owner: str,
                 metrics: Metrics | None = None, after_import: list[AfterImport] | None = None) -> None:
        self._settings = settings
        self._http = http
        self._store = store
        self._storage = storage
        self._clock = clock
        self._run_cpu = run_cpu
        self._spool = spool
        self._log = log
        self._lock = StoreLock(storage, clock, owner)
        self._metrics = metrics
        self.after_import = after_import if after_import is not None else []  # e.g. the malware blocks
        self.report: JobReport | None = None

    async def run(self) -> JobReport | None:
        """One run; None when NOPARD_ADVISORIES_URL is empty."""
        url = self._settings.current.advisories_url
        if not url:
            return None
        report = JobReport(JOB, started=iso_time(self._clock.seconds()), running=True)
        if not await self._lock.acquire(JOB):
            report.running, report.skipped = False, "another nopard instance is running it"
            self._count(report)
            return report
        self.report = report
        try:
            await self._refresh(url, report)
        except Exception as error:  # the next run tries again; this one says why it did not
            report.fail(without_credentials(url), f"{type(error).__name__}: {without_credentials(str(error))}")
            self._log.failure("sync advisories failed", event="sync-error")
        finally:
            report.running, report.ended = False, iso_time(self._clock.seconds())
            await self._lock.release(JOB)
            self._log.info("sync {summary}", summary=report.summary(), event="sync-finished", job=JOB)
            self._count(report)
        return report

    def _count(self, report: JobReport) -> None:
        if self._metrics is not None:
            self._metrics.sync_finished(report)

    async def _refresh(self, url: str, report: JobReport) -> None:
        state = _state(await self._storage.read(keys.ADVISORIES_SOURCE))
        headers = {"User-Agent": self._settings.current.user_agent}
        if state.get("url_sha256") == _digest(url) and state.get("etag"):
            headers["If-None-Match"] = state["etag"]
        response = await self._http.get(url, headers=headers, timeout=self._settings.current.upstream_timeout,
                                        reactor=self._clock)
        if response.code == 304:
            await treq.content(response)
            return
        if response.code != 200:
            await treq.content(response)
            raise OSError(f"{without_credentials(url)} answered {response.code}")
        os.makedirs(self._spool, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix="advisories-", suffix=".zip", dir=self._spool)
        try:
            with os.fdopen(handle, "wb") as spooled:
                written = [0]

                def keep(data: bytes) -> None:
                    written[0] += len(data)
                    if written[0] > MAX_DOWNLOAD:
                        raise TooBig(f"{without_credentials(url)} sent more than {MAX_DOWNLOAD} bytes")
                    spooled.write(data)

                await treq.collect(response, keep)
            imported = ImportReport()
            known = await self._store.known()
            records = await self._run_cpu(lambda: parse_items(read_source(path), imported, known))
            await self._store.import_records(records, imported)
        finally:
            os.unlink(path)
        report.checked, report.changed = imported.read, imported.new + imported.updated + imported.withdrawn
        for origin, why in imported.problems:
            report.fail(origin, why)
        report.failure_count = imported.problem_count
        for hook in self.after_import:
            await hook(imported)
        etag = response.headers.getRawHeaders("etag", [None])[0]
        await self._storage.write(keys.ADVISORIES_SOURCE, orjson.dumps({
            "url": without_credentials(url), "url_sha256": _digest(url), "etag": etag,
            "imported_at": iso_time(self._clock.seconds()), "summary": imported.summary()}))
        self._log.info("{summary} from {url}", summary=imported.summary(), url=without_credentials(url),
                       event="advisories-imported")


def _digest(url: str) -> str:
    """The stored state names its URL by digest too: a URL with credentials is stored without them."""
    return hashlib.sha256(url.encode()).hexdigest()


def _state(stored: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(stored) if stored else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
