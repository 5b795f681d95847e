"""Operator routes: ping, health, metrics, status, and the sync and prefetch triggers.

Who may call each: ``/-/ping`` and ``/-/nopard/health`` anyone (load balancers);
``/-/nopard/status``, ``/-/metrics`` and ``GET /-/nopard/sync`` readers (NOPARD_AUTH_READ),
the sync reports showing only the packages the caller may read; ``POST /-/nopard/sync``
and ``/-/nopard/prefetch`` admins and nopard-admin's operator token (Gate.operator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from nopard import __version__
from nopard.domain.errors import InvalidInput
from nopard.domain.urls import without_credentials
from nopard.jobs.schedule import ALL_JOBS, SyncSchedule
from nopard.ops.metrics import Metrics, StoreProbe
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import Requests, header, json_response
from nopard.web.services import MirrorStatus


class OperationRoutes:
    """``/-/ping``, ``/-/metrics`` and ``/-/nopard/{status,health,sync,prefetch}``."""

    def __init__(self, requests: Requests, gate: Gate, mirror: MirrorStatus, sync: SyncSchedule, metrics: Metrics,
                 health: StoreProbe) -> None:
        self._requests = requests
        self._gate = gate
        self._mirror = mirror
        self._sync = sync
        self._metrics = metrics
        self._health = health

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "operations", "/-/ping", ["GET"], self.ping)
        add_route(app, "operations", "/-/nopard/status", ["GET"], self.status)
        add_route(app, "operations", "/-/nopard/health", ["GET"], self.health_check)
        add_route(app, "operations", "/-/metrics", ["GET"], self.metrics_exposition)
        add_route(app, "operations", "/-/nopard/sync", ["GET"], self.sync_status)
        add_route(app, "operations", "/-/nopard/sync", ["POST"], self.sync_now)
        add_route(app, "operations", "/-/nopard/prefetch", ["POST"], self.prefetch)

    def ping(self, request: IRequest) -> bytes:
        """npm ping: the registry answers."""
        return json_response(request, 200, {})

    async def status(self, request: IRequest) -> bytes:
        """Upstream health and cache use, for operators and monitoring."""
        await self._gate.reader(request)
        return json_response(request, 200, {"nopard": __version__, **self._mirror.status()})

    async def health_check(self, request: IRequest) -> bytes:
        """200 while nopard can serve (its store works), 503 otherwise: for load balancers and watchdogs."""
        error = await self._health.check()
        status = self._mirror.status()
        upstreams = [{"url": u["url"], "state": u["state"]} for u in status["upstreams"]]
        redis = status["redis"]
        if error is not None:
            return json_response(request, 503, {"status": "unavailable", "error": error, "upstreams": upstreams,
                                                "redis": redis})
        # Without Redis nopard still serves everything from storage: degraded, not down.
        overall = "degraded" if redis["state"] == "down" else "ok"
        return json_response(request, 200, {"status": overall, "nopard": __version__, "upstreams": upstreams,
                                            "redis": redis})

    async def metrics_exposition(self, request: IRequest) -> bytes:
        """The metrics in Prometheus' text format (OpenMetrics when asked for)."""
        await self._gate.reader(request)
        body, content_type = await self._metrics.exposition(header(request, "accept"))
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    async def sync_status(self, request: IRequest) -> bytes:
        """Each sync job's last run and the next one, naming only packages the caller may read."""
        may_read = await self._gate.names_readable(request)
        status = self._sync.status()
        jobs = {job: visible_report(report, may_read) if report else report for job, report in status["jobs"].items()}
        return json_response(request, 200, {**status, "jobs": jobs})

    async def sync_now(self, request: IRequest) -> bytes:
        """Run the sync jobs now and answer their reports (nopard-admin sync --now)."""
        may_read = await self._gate.operator(request)
        body = await self._requests.optional_json_body(request)
        job = body.get("job") if isinstance(body, dict) else None
        if job not in (None, *ALL_JOBS):
            raise InvalidInput(f"unknown job {job!r}: use one of {', '.join(ALL_JOBS)}")
        reports = await self._sync.run_now(job)
        return json_response(request, 200, {"reports": [visible_report(r.__dict__, may_read) for r in reports]})

    async def prefetch(self, request: IRequest) -> bytes:
        """Fetch the documents and tarballs of the given name/version pairs (nopard-admin prefetch)."""
        may_read = await self._gate.operator(request)
        body = await self._requests.json_body(request)
        packages = body.get("packages") if isinstance(body, dict) else None
        if not isinstance(packages, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in packages
        ):
            raise InvalidInput('the body must be {"packages": [["name", "version"], ...]}')
        report = await self._sync.jobs.prefetch([(name, version) for name, version in packages], may_read=may_read)
        return json_response(request, 200, visible_report(report.__dict__, may_read))


def failed_package(what: str) -> str:
    """The package a sync failure names: ``name``, ``name@version`` (scoped names start with @), or ``*``."""
    at = what.rfind("@")
    return what[:at] if at > 0 else what


def visible_report(report: dict[str, Any], may_read: Callable[[str], bool]) -> dict[str, Any]:
    """A job report as a reader sees it: failures of packages they may not read left out (and
    uncounted, as for a package that does not exist), URLs in reasons without credentials."""
    failures = [{"package": f["package"], "reason": without_credentials(f["reason"])} for f in report["failures"]
                if f["package"] == "*" or may_read(failed_package(f["package"]))]
    hidden = len(report["failures"]) - len(failures)
    return {**report, "failures": failures, "failure_count": report["failure_count"] - hidden}
