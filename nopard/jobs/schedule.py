"""Runs the sync jobs on a schedule: APScheduler's TwistedScheduler, inside the twistd service.

Jobs are coroutines run on the reactor thread (ReactorExecutor), not in a
thread pool: they only wait on Deferreds, and a thread blocked on one would
hang the reactor's shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.executors.base import BaseExecutor, run_coroutine_job
from apscheduler.schedulers.twisted import TwistedScheduler
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from nopard.jobs.advisories import JOB as ADVISORIES_JOB
from nopard.jobs.advisories import AdvisoryRefresh
from nopard.jobs.eviction import JOB as EVICT_JOB
from nopard.jobs.eviction import Eviction
from nopard.jobs.sync import JobReport, SyncJobs
from nopard.settings.config import LiveSettings

JOBS = ("refresh", "backfill")
# Jobs nopard-admin sync --now may name: also the advisories (NOPARD_ADVISORIES_URL), run after the others,
# and the eviction (NOPARD_MIRROR_MAX_SIZE), last, so it sees what backfill fetched.
ALL_JOBS = (*JOBS, ADVISORIES_JOB, EVICT_JOB)
# The one job store the schedule uses (APScheduler's in-memory default).
JOBSTORE = "default"


class SchedulerReactor(Protocol):
    """What TwistedScheduler calls on its reactor: timers, and handing calls to the reactor thread."""

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> IDelayedCall:
        """Call ``callable`` in ``delay`` seconds."""

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``callable`` on the reactor thread."""


class ReactorExecutor(BaseExecutor):
    """Runs coroutine jobs on the reactor thread, each as a Deferred.

    ``_do_submit_job``, ``_run_job_success`` and ``_run_job_error`` are the
    hooks APScheduler 3 documents for writing an executor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running: set[Deferred] = set()

    def _do_submit_job(self, job: Any, run_times: Any) -> None:
        running = Deferred.fromCoroutine(run_coroutine_job(job, JOBSTORE, run_times, self._logger.name))
        self.running.add(running)

        def done(result: Any) -> None:
            self.running.discard(running)
            if isinstance(result, list):
                self._run_job_success(job.id, result)
            else:
                self._run_job_error(job.id, result.value, result.getTracebackObject())

        running.addBoth(done)

    def cancel_all(self) -> None:
        """Stop every running job at its next wait (used at shutdown)."""
        for running in list(self.running):
            running.cancel()


class SyncSchedule(Service):
    """Starts the schedule with nopard and stops it (and any running job) with it."""

    def __init__(self, jobs: SyncJobs, settings: LiveSettings, reactor: SchedulerReactor, log: Logger,
                 advisories: AdvisoryRefresh | None = None, eviction: Eviction | None = None) -> None:
        self.jobs = jobs
        self.advisories = advisories
        self.eviction = eviction
        self._settings = settings
        self._log = log
        self._executor = ReactorExecutor()
        self._interval = 0.0  # the interval the schedule runs at (0: none)
        self.scheduler = TwistedScheduler(reactor=reactor, timezone=UTC,
                                          executors={"default": self._executor})

    def startService(self) -> None:
        super().startService()
        self._interval = self._settings.current.sync_interval
        if self._interval > 0:
            self._add_job(self._interval)
        self.scheduler.start()

    def _add_job(self, interval: float) -> None:
        first = datetime.now(UTC) + timedelta(seconds=min(interval, 60))
        self.scheduler.add_job(self._cycle, "interval", seconds=interval, id="sync", jobstore=JOBSTORE,
                               max_instances=1, coalesce=True, next_run_time=first)

    def follow_interval(self) -> None:
        """Reschedule after NOPARD_SYNC_INTERVAL changed at runtime (0 removes the schedule).

        Called whenever settings change; does nothing while the interval is unchanged.
        """
        interval = self._settings.current.sync_interval
        if not self.scheduler.running or interval == self._interval:
            return
        scheduled = self.scheduler.get_job("sync") is not None
        if interval <= 0:
            if scheduled:
                self.scheduler.remove_job("sync")
        elif scheduled:
            # The next run comes one new interval from now, not at once.
            self.scheduler.reschedule_job("sync", trigger="interval", seconds=interval)
        else:
            self._add_job(interval)
        self._interval = interval

    def stopService(self) -> None:
        super().stopService()
        self._executor.cancel_all()
        self.scheduler.shutdown(wait=False)

    async def _cycle(self) -> None:
        """One scheduled run: refresh, then backfill (which needs the fresh documents), the advisories, eviction."""
        for job in ALL_JOBS:
            try:
                await self._run(job)
            except CancelledError:
                raise
            except Exception:
                self._log.failure("sync {job} crashed", job=job, event="sync-error")

    async def _run(self, job: str) -> JobReport | None:
        if job == EVICT_JOB:
            return await self.eviction.run() if self.eviction is not None else None
        if job != ADVISORIES_JOB:
            return await self.jobs.run(job)
        return await self.advisories.run() if self.advisories is not None else None

    async def run_now(self, only: str | None = None) -> list[JobReport]:
        """Run the jobs at once (``only`` one of them), for nopard-admin sync --now."""
        reports = [await self._run(job) for job in ALL_JOBS if only in (None, job)]
        # Without NOPARD_MIRROR_MAX_SIZE the evict job only measures: reported when asked for by name.
        quiet = only is None and self._settings.current.mirror_max_size is None
        return [report for report in reports if report is not None and not (quiet and report.job == EVICT_JOB)]

    def status(self) -> dict[str, Any]:
        """Each job's last report, when the schedule runs next, and (with NOPARD_CHANGES_URL) what
        this instance's changes feed follower last did (jobs/changes.FollowerState)."""
        scheduled = self.scheduler.get_job("sync") if self.scheduler.running else None
        next_run = scheduled.next_run_time.isoformat() if scheduled and scheduled.next_run_time else None
        reports = {job: (self.jobs.reports[job].__dict__ if job in self.jobs.reports else None)
                   for job in (*JOBS, "prefetch")}
        if self.advisories is not None and self._settings.current.advisories_url:
            reports[ADVISORIES_JOB] = self.advisories.report.__dict__ if self.advisories.report else None
        if self.eviction is not None and self._settings.current.mirror_max_size is not None:
            reports[EVICT_JOB] = self.eviction.report.__dict__ if self.eviction.report else None
        follower, url = self.jobs.follower, self._settings.current.changes_url
        changes = follower.state_of(url) if follower is not None and url else None
        return {"interval": self._settings.current.sync_interval, "next_run": next_run, "jobs": reports,
                "changes": changes}
