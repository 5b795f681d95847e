"""The web face of the registry: one Klein app with every route group mounted.

The groups (nopard.web.api.*) each get exactly the services they use;
``RegistryApp`` only builds them from what nopard.service hands it. Domain
errors become JSON answers through one table (nopard.web.errors.STATUS_OF).
"""

from __future__ import annotations

from typing import NamedTuple

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from nopard import __version__
from nopard.auth import Accounts
from nopard.auth.operator import OperatorCredential
from nopard.auth.weblogin import WebLogins
from nopard.catalog.changes import ChangeLog
from nopard.catalog.search import SearchIndex
from nopard.firewall.verdicts import Firewall
from nopard.jobs.schedule import SyncSchedule
from nopard.local.packages import Registry
from nopard.ops.metrics import Metrics, StoreProbe, StoreSize
from nopard.settings.acl import Policy
from nopard.settings.config import LiveSettings
from nopard.settings.overrides import Overrides
from nopard.web.api.accounts import AccountRoutes
from nopard.web.api.blocks import BlockRoutes
from nopard.web.api.changes import ChangesRoutes
from nopard.web.api.common import Gate, add_route
from nopard.web.api.operations import OperationRoutes
from nopard.web.api.packages import PackageRoutes
from nopard.web.api.profile import ProfileRoutes
from nopard.web.api.provenance import ProvenanceRoutes
from nopard.web.api.search import SearchRoutes
from nopard.web.api.settings import SettingsRoutes
from nopard.web.api.weblogin import WebLoginRoutes
from nopard.web.browser import BrowserSessions, wants_html
from nopard.web.errors import Utf8PathGuard, install_error_handlers
from nopard.web.hot import HotRoutes
from nopard.web.readme_renders import ReadmeRenders
from nopard.web.redirects import TarballRedirects
from nopard.web.responses import Requests, json_response
from nopard.web.services import (
    AuditAnswers,
    MirrorServices,
    MirrorStatus,
    ProvenanceSource,
    RunInThread,
    Sessions,
    TarballSizes,
    UpstreamSearch,
)
from nopard.web.ui import AccountPages, AdminPages, PackagePages, WebUI
from nopard.web.ui_blocks import BlockPages


class Route(NamedTuple):
    """One mounted route: its werkzeug path rule, its methods (None: any) and its endpoint's name."""

    path: str
    methods: frozenset[str] | None
    endpoint: str


def route_table(app: Klein) -> list[Route]:
    """The routes of one Klein app, from its URL map."""
    return [Route(rule.rule, frozenset(rule.methods) if rule.methods else None, str(rule.endpoint))
            for rule in app.url_map.iter_rules()]


class RegistryApp:
    """Every route of the registry, mounted into one Klein app; no global state.

    ``clock`` is the reactor's time (nothing here reads the global reactor);
    ``run_cpu`` runs parsing in the CPU thread pool; ``readmes`` renders
    readmes, away from that pool (nopard.web.readme_renders).
    """

    def __init__(
        self, *, settings: LiveSettings, policy: Policy, registry: Registry, mirror: MirrorServices,
        status: MirrorStatus, audits: AuditAnswers, tarball_sizes: TarballSizes,
        sync: SyncSchedule, accounts: Accounts, weblogins: WebLogins, sessions: Sessions, search: SearchIndex,
        metrics: Metrics, health: StoreProbe, store_size: StoreSize, overrides: Overrides,
        run_cpu: RunInThread, readmes: ReadmeRenders, clock: IReactorTime, log: Logger,
        operator: OperatorCredential | None = None, redirects: TarballRedirects | None = None,
        upstream_search: UpstreamSearch | None = None, provenance: ProvenanceSource | None = None,
        firewall: Firewall | None = None, changes: ChangeLog | None = None,
    ) -> None:
        requests = Requests(settings, run_cpu)
        gate = Gate(accounts, policy, mirror, operator)
        browser = BrowserSessions(sessions, policy, requests, settings)
        self._home = PackagePages(browser, mirror, tarball_sizes, search, search, readmes, clock)
        self._ui = WebUI(
            browser, log, self._home, AccountPages(browser, accounts),
            AdminPages(browser, overrides, status, sync, metrics, store_size, clock),
            *([BlockPages(browser, firewall.blocks)] if firewall is not None else []),
        )
        self._app = Klein()
        install_error_handlers(self._app, log)
        add_route(self._app, "web", "/", ["GET"], self.root)
        add_route(self._app, "web", "/-/web/", None, self.web, branch=True)
        self._log = log
        self._packages = PackageRoutes(requests, gate, settings, accounts, registry, mirror, search, run_cpu, redirects)
        groups = (
            OperationRoutes(requests, gate, status, sync, metrics, health),
            AccountRoutes(requests, gate, accounts),
            ProfileRoutes(requests, gate, accounts),
            WebLoginRoutes(requests, weblogins, browser),
            SearchRoutes(requests, gate, search, audits, clock, upstream_search),
            SettingsRoutes(requests, gate, overrides),
            self._packages,
        )
        for group in groups:
            group.mount(self._app)
        if provenance is not None:
            ProvenanceRoutes(gate, provenance).mount(self._app)
        if firewall is not None:
            BlockRoutes(requests, gate, firewall.blocks).mount(self._app)
        if changes is not None:
            ChangesRoutes(gate, changes).mount(self._app)

    def resource(self) -> IResource:
        """The Twisted resource serving this app."""
        return Utf8PathGuard(HotRoutes(self._app.resource(), self._packages, self._log))

    def routes(self) -> list[Route]:
        """Every route mounted, the pages' under /-/web/ too (the property tests cover each one)."""
        pages = [Route("/-/web" + route.path, route.methods, route.endpoint) for route in route_table(self._ui.klein)]
        return route_table(self._app) + pages

    async def root(self, request: IRequest) -> bytes:
        """A browser sees the registry's home page; a client a small JSON document."""
        if wants_html(request):
            return await self._home.home(request)
        return json_response(request, 200, {"registry": "nopard", "version": __version__})

    def web(self, request: IRequest) -> IResource:
        """The browser pages (nopard.web.ui)."""
        return self._ui.resource()
