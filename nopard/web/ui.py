"""The browser interface under ``/-/web/``: home, package pages, login, settings, status.

Routes only gather data and hand it to the pure page builders of
nopard.web.pages; sessions, cookies and CSRF checks are nopard.web.browser's.
Each group of pages gets only the services it shows.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any, cast
from urllib.parse import unquote

import orjson
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from nopard.auth import Accounts
from nopard.catalog.search import SearchIndex, parse_query, score
from nopard.domain import names
from nopard.domain.errors import NotFound, OneTimePasswordRequired, TooManyAttempts
from nopard.jobs.schedule import SyncSchedule
from nopard.ops.metrics import Metrics, StoreSize
from nopard.settings.config import ConfigError
from nopard.settings.overrides import Overrides
from nopard.web import pages
from nopard.web.api.common import add_route
from nopard.web.browser import (
    BrowserSessions,
    CsrfFailure,
    csrf_refused,
    form_arg,
    has_form_arg,
    html,
    redirect,
)
from nopard.web.charts import day_section
from nopard.web.errors import set_retry_after, status_of
from nopard.web.pages_firewall import firewall_status, withheld_section
from nopard.web.readme_renders import ReadmeRenders
from nopard.web.responses import client_address
from nopard.web.services import ChangeListener, MirroredPages, MirrorStatus, TarballSizes

_STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_LISTED = 500


def square_png(size: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour: the icon browsers ask for, made here rather than shipped."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _read_static(name: str) -> bytes:
    with open(os.path.join(_STATIC, name), "rb") as file:
        return file.read()


STATIC = {  # name -> (content type, bytes): made once, served from memory
    "nopard.css": ("text/css; charset=utf-8", _read_static("nopard.css")),
    "favicon.png": ("image/png", square_png(16, (0x0B, 0x5C, 0xAD))),
}


class PackagePages:
    """The home page (the package list) and each package's page (readmes rendered by ``readmes``)."""

    def __init__(self, browser: BrowserSessions, mirror: MirroredPages, tarball_sizes: TarballSizes,
                 index: SearchIndex, changes: ChangeListener, readmes: ReadmeRenders, clock: IReactorTime) -> None:
        self._browser = browser
        self._mirror = mirror
        self._tarball_sizes = tarball_sizes
        self._index = index
        self._changes = changes
        self._readmes = readmes
        self._clock = clock

    def mount(self, app: Klein) -> None:
        """Add these pages to ``app``."""
        add_route(app, "pages", "/", ["GET"], self.home)
        add_route(app, "pages", "/package/", ["GET", "POST"], self.package, branch=True)

    async def home(self, request: IRequest) -> bytes:
        """GET / in a browser (RegistryApp sends it here) and GET /-/web/."""
        query = form_arg(request, "q")[:200].strip()
        viewer = await self._browser.viewer(request, query)
        if not self._browser.may_read(viewer):
            return await self._browser.login_required(request, viewer)
        listing = await self._index.listing()
        visible = [item for item in listing if self._browser.visible(item[0].name, viewer.user)]
        counts = {"local": sum(1 for _, o, _ in visible if o == "local"),
                  "cached": sum(1 for _, o, _ in visible if o != "local")}
        if query:
            parsed = parse_query({b"text": [query.encode()]})
            visible = [item for item in visible if score(item[0], parsed) > 0]
        visible.sort(key=lambda item: (item[1] != "local", item[0].name))
        listed = [pages.Listed(e.name, e.version, e.description, o, f) for e, o, f in visible[:MAX_LISTED]]
        return await html(request, pages.home_page(viewer, listed, counts, self._clock.seconds()))

    async def package(self, request: IRequest) -> bytes:
        """A package's page; POST .../refresh asks the upstream now (admins)."""
        raw = request.path.decode("latin-1")
        rest = unquote(raw.split("/-/web/package/", 1)[1]) if "/-/web/package/" in raw else ""
        refresh = rest.endswith("/refresh") and request.method == b"POST"
        name = rest[: -len("/refresh")] if refresh else rest
        viewer = await self._browser.viewer(request)
        if not self._browser.may_read(viewer):
            return await self._browser.login_required(request, viewer)
        try:
            names.validate_name(name)
        except Exception:
            raise NotFound(f"package not found: {name}") from None
        if not self._browser.visible(name, viewer.user):
            raise NotFound(f"package not found: {name}")
        if refresh:
            return await self.refresh(request, viewer, name)
        if request.method != b"GET":
            raise NotFound("nothing to post here")
        return await self.package_page(request, viewer, name)

    async def refresh(self, request: IRequest, viewer: pages.Viewer, name: str) -> bytes:
        """An admin asks the upstream for ``name`` now, then sees the page again."""
        self._browser.check_csrf(request, viewer)
        if not viewer.admin:
            return await html(request, pages.message_page(viewer, "Not allowed",
                                                          "Only admins may refresh a package."), 403)
        await self._mirror.refresh(name)
        self._changes.changed(name)
        return redirect(request, pages.package_path(viewer, name))

    async def package_page(self, request: IRequest, viewer: pages.Viewer, name: str) -> bytes:
        """The versions, tags, readme and mirror state of ``name``."""
        prepared, status = await self._mirror.packument(name, viewer.base_url)
        document = orjson.loads(prepared.full.identity)
        origin = "local" if status == "LOCAL" else "upstream"  # merged documents count as mirrored
        meta = await self._mirror.mirrored_meta(name) if origin != "local" else None
        # Only the versions object goes below: it may be anything in a document from anywhere.
        sizes = await self._tarball_sizes(name, {"versions": pages.mapping(document.get("versions"))})
        rows = pages.version_rows(
            document, lambda manifest: pages.text_of(pages.mapping(manifest.get("dist")).get("tarball")), sizes)
        readme = _readme_of(document)
        stored = sum(1 for size in sizes.values() if size is not None)
        page = pages.package_page(viewer, name, document, rows, origin, meta.fetched_at if meta else None,
                                  self._clock.seconds(), bool(readme), stored, withheld_section(prepared.withheld))
        latest = pages.text_of(pages.mapping(document.get("dist-tags")).get("latest"))
        readme_html = await self._readmes.html(name, latest, readme) if readme else None
        return await html(request, page, readme_html=readme_html)


class AccountPages:
    """Logging a browser in and out."""

    def __init__(self, browser: BrowserSessions, accounts: Accounts) -> None:
        self._browser = browser
        self._accounts = accounts

    def mount(self, app: Klein) -> None:
        """Add these pages to ``app``."""
        add_route(app, "pages", "/login", ["GET"], self.login_form)
        add_route(app, "pages", "/login", ["POST"], self.login)
        add_route(app, "pages", "/logout", ["POST"], self.logout)

    async def login_form(self, request: IRequest) -> bytes:
        """The login form (the home page for a browser already logged in)."""
        viewer = await self._browser.viewer(request)
        if viewer.user:
            return redirect(request, pages.link(viewer, "/"))
        return await html(request, pages.login_page(viewer, pages.link(viewer, "/-/web/login")))

    async def login(self, request: IRequest) -> bytes:
        """Check the posted password and start a session."""
        viewer = await self._browser.viewer(request)
        self._browser.check_csrf(request, viewer)
        username = form_arg(request, "username").strip()
        action = pages.link(viewer, "/-/web/login")
        address = client_address(request)
        try:
            ok = await self._accounts.check_password(username, form_arg(request, "password"), address)
            if ok:
                await self._accounts.second_factor(username, form_arg(request, "otp").strip() or None,
                                                   f"web:{address}", address)
        except (TooManyAttempts, OneTimePasswordRequired) as error:
            set_retry_after(request, error)
            return await html(request, pages.login_page(viewer, action, error.message, username), status_of(error))
        if not ok:
            return await html(request, pages.login_page(viewer, action, "Wrong user name or password.", username), 401)
        if not await self._browser.start_session(request, username):
            page = pages.login_page(viewer, action, "Too many sessions are open; try again later.", username)
            return await html(request, page, 503)
        return redirect(request, pages.link(viewer, "/"))

    async def logout(self, request: IRequest) -> bytes:
        """End the browser's session."""
        session_id, _record = await self._browser.session(request)
        viewer = await self._browser.viewer(request)
        self._browser.check_csrf(request, viewer)
        await self._browser.end_session(request, session_id)
        return redirect(request, pages.link(viewer, "/"))


class AdminPages:
    """The settings page (admins) and the status page."""

    def __init__(self, browser: BrowserSessions, overrides: Overrides, mirror: MirrorStatus, sync: SyncSchedule,
                 metrics: Metrics, store_size: StoreSize, clock: IReactorTime) -> None:
        self._browser = browser
        self._overrides = overrides
        self._mirror = mirror
        self._sync = sync
        self._metrics = metrics
        self._store_size = store_size
        self._clock = clock

    def mount(self, app: Klein) -> None:
        """Add these pages to ``app``."""
        add_route(app, "pages", "/settings", ["GET", "POST"], self.settings)
        add_route(app, "pages", "/status", ["GET"], self.status)

    async def settings(self, request: IRequest) -> bytes:
        """The runtime settings: shown to admins, changed by their form."""
        viewer = await self._browser.viewer(request)
        if viewer.user is None:
            return redirect(request, pages.link(viewer, "/-/web/login"))
        if not viewer.admin:
            return await html(request, pages.message_page(
                viewer, "Not allowed", "Only admins may see and change settings: they are named in "
                "NOPARD_ADMINS or in the admins of the NOPARD_CONFIG file."), 403)
        if request.method == b"GET":
            return await html(request, pages.settings_page(viewer, self._overrides.entries(),
                                                           saved=form_arg(request, "saved") == "1"))
        self._browser.check_csrf(request, viewer)
        entries = self._overrides.entries()
        values = {entry["name"]: form_arg(request, entry["name"]).strip() for entry in entries
                  if has_form_arg(request, entry["name"])}
        changed = {name: text for name, text in values.items()
                   if text != next(e["value"] for e in entries if e["name"] == name)}
        try:
            if changed:
                await self._overrides.change(changed, viewer.user)
        except ConfigError as error:
            invalid = next((e["name"] for e in entries if str(error).startswith(e["env"])), None)
            shown = [dict(e, value=values.get(e["name"], e["value"])) for e in entries]
            return await html(request, pages.settings_page(viewer, shown, str(error), invalid), 400)
        return redirect(request, pages.link(viewer, "/-/web/settings?saved=1"))

    async def status(self, request: IRequest) -> bytes:
        """Upstreams, cache, sync jobs and storage at a glance."""
        viewer = await self._browser.viewer(request)
        if not self._browser.may_read(viewer):
            return await self._browser.login_required(request, viewer)
        counts = self._metrics.cache_counts()
        total = sum(counts.values())
        served_here = sum(v for k, v in counts.items() if k in ("LOCAL", "HIT", "STALE"))
        ratio = served_here / total if total else None
        status = self._mirror.status()
        history = self._metrics.history
        day = day_section(await history.day()) if history is not None else ""
        page = pages.status_page(viewer, status, self._sync.status(), ratio, counts, await self.storage_used(),
                                 self._clock.seconds(), firewall_status(status.get("firewall")), day)
        return await html(request, page)

    async def storage_used(self) -> str:
        """How much the store holds, as the status page says it."""
        await self._store_size.refresh()
        if self._store_size.bytes is None:
            return "unknown"
        return f"{pages.human_size(self._store_size.bytes)} in {self._store_size.files} objects"


class WebUI:
    """The pages under /-/web/: their static files, their error pages, and the page groups."""

    def __init__(
        self, browser: BrowserSessions, log: Logger, *groups: Any,
    ) -> None:
        self._browser = browser
        self._log = log
        self._app = Klein()
        self._app.handle_errors(CsrfFailure)(self.csrf_failed)
        self._app.handle_errors(Exception)(self.failed)
        add_route(self._app, "pages", "/static/<name>", ["GET"], self.static)
        for group in groups:
            group.mount(self._app)

    def resource(self) -> IResource:
        """The Twisted resource of the pages (mounted at /-/web/)."""
        return self._app.resource()

    @property
    def klein(self) -> Klein:
        """The pages' Klein app (RegistryApp.routes lists its routes)."""
        return self._app

    def static(self, request: IRequest, name: str) -> bytes:
        """nopard's stylesheet and icon: the only assets the pages load."""
        if name not in STATIC:
            raise NotFound(f"no such file: {name}")
        content_type, body = STATIC[name]
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return body

    async def csrf_failed(self, request: IRequest, failure: Failure) -> bytes:
        """A form from elsewhere (or from an ended session): refused, with a way back."""
        return await csrf_refused(request, await self._browser.viewer(request))

    async def failed(self, request: IRequest, failure: Failure) -> bytes:
        """Errors as pages: not found, not allowed, or a logged internal error."""
        # werkzeug merges a path's "//" by raising a redirect: no page needs one, so not found.
        if failure.check(NotFound, RouteNotFound, RequestRedirect):
            message = cast(NotFound, failure.value).message if failure.check(NotFound) else "There is no such page."
            viewer = await self._browser.viewer(request)
            return await html(request, pages.message_page(viewer, "Not found", message), 404)
        if failure.check(MethodNotAllowed):
            viewer = await self._browser.viewer(request)
            return await html(request, pages.message_page(viewer, "Not allowed", "This page cannot be "
                                                          "used that way."), 405)
        self._log.failure("unexpected error on a web page", failure, event="error")
        viewer = await self._browser.viewer(request)
        return await html(request, pages.message_page(viewer, "Error",
                                                      "Something went wrong; see the registry's log."), 500)


def _readme_of(document: dict[str, Any]) -> str:
    readme = document.get("readme")
    if not isinstance(readme, str) or not readme.strip():
        readme = pages.latest_manifest(document).get("readme")
    return readme if isinstance(readme, str) else ""
