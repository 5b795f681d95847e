"""The browser interface under ``/-/web/``: home, package pages, login, settings, status.

Routes only gather data and hand it to the pure page builders of
nopard.web.pages. A browser session is a random id in an HttpOnly,
SameSite=Lax cookie (Secure when the registry is reached over https), kept in
the same session store as `npm login`'s (Redis when instances share one).
Every form that changes something carries a CSRF token: the session's, or for
the login form a random one also set as a SameSite=Strict cookie.
"""

from __future__ import annotations

import hmac
import os
import secrets
import struct
import zlib
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
from klein import Klein
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from twisted.web.iweb import IRequest

from nopard.domain import names
from nopard.settings.config import ConfigError
from nopard.domain.errors import NotFound, TooManyAttempts
from nopard.catalog.search import parse_query, score
from nopard.web import pages
from nopard.web.readme import render_readme
from nopard.web.responses import header, client_address

SESSION_COOKIE = b"nopard_session"
CSRF_COOKIE = b"nopard_csrf"
SESSION_TTL = 12 * 3600.0
_STATIC = os.path.join(os.path.dirname(__file__), "static")


def square_png(size: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour: the icon browsers ask for, made here rather than shipped."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


STATIC = {  # name -> (content type, bytes): made once, served from memory
    "nopard.css": ("text/css; charset=utf-8", open(os.path.join(_STATIC, "nopard.css"), "rb").read()),
    "favicon.png": ("image/png", square_png(16, (0x0B, 0x5C, 0xAD))),
}
PAGE_HEADERS = {
    b"Content-Type": b"text/html; charset=utf-8",
    b"Cache-Control": b"no-store",
    # Nothing but nopard's own stylesheet and images may load; no script at all.
    b"Content-Security-Policy": b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    b"base-uri 'none'; frame-ancestors 'none'",
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",
}
MAX_LISTED = 500


class CsrfFailure(Exception):
    """A form post without the token of nopard's own page."""


def _token_ok(text: str) -> bool:
    """Whether a cookie value has the shape of nopard's random tokens."""
    return 20 <= len(text) <= 100 and all(c.isalnum() or c in "-_" for c in text)


def wants_html(request: IRequest) -> bool:
    """Whether the client is a browser: text/html comes first in its Accept header."""
    accept = header(request, "accept") or ""
    first = accept.split(",", 1)[0].split(";", 1)[0].strip().lower()
    return first == "text/html"


def is_admin(policy: Any, user: str | None) -> bool:
    """The admins of NOPARD_CONFIG and NOPARD_ADMINS; nobody while neither names one.

    Admins change where packages come from (the upstream URL): a user must be
    named one, never be one by default.
    """
    return user is not None and user in getattr(policy, "admins", frozenset())


class WebUI:
    """The pages; ``app`` is the RegistryApp whose components they show."""

    app = Klein()

    def __init__(self, registry_app: Any, sessions: Any, overrides: Any = None, store_size: Any = None) -> None:
        self.main = registry_app
        self.sessions = sessions
        self.overrides = overrides
        self.store_size = store_size

    def resource(self) -> Any:
        """The Twisted resource of the pages (mounted at /-/web/)."""
        return self.app.resource()

    # Sessions and the viewer ------------------------------------------------

    async def session(self, request: IRequest) -> tuple[str | None, dict[str, Any] | None]:
        """(session id, record) of the browser's session, or (None, None)."""
        session_id = request.getCookie(SESSION_COOKIE)
        if not session_id:
            return None, None
        key = session_id.decode("ascii", "replace")
        if not _token_ok(key):
            return None, None
        record = await self.sessions.get("web:" + key)
        return (key, record) if record else (None, None)

    def secure(self, request: IRequest) -> bool:
        """Whether the registry is reached over https (cookies then say Secure)."""
        return self.main.base_url(request).startswith("https://")

    def set_cookie(self, request: IRequest, name: bytes, value: bytes, same_site: bytes, max_age: int | None) -> None:
        request.addCookie(name, value, path=(self.root(request) or "/").encode(), httpOnly=True,
                          secure=self.secure(request), sameSite=same_site.decode(),
                          max_age=str(max_age) if max_age is not None else None)

    def root(self, request: IRequest) -> str:
        """The path prefix of nopard's URLs (NOPARD_BASE_URL's path)."""
        return urlsplit(self.main.base_url(request)).path.rstrip("/")

    async def viewer(self, request: IRequest, query: str = "") -> pages.Viewer:
        """Who looks, with the CSRF token their forms carry."""
        _session_id, record = await self.session(request)
        user = record["user"] if record else None
        request.user = user
        if record:
            csrf = record["csrf"]
        else:
            cookie = (request.getCookie(CSRF_COOKIE) or b"").decode("ascii", "replace")
            csrf = cookie if _token_ok(cookie) else ""
            if not csrf:
                csrf = secrets.token_urlsafe(24)
                self.set_cookie(request, CSRF_COOKIE, csrf.encode(), b"strict", None)
        return pages.Viewer(user=user, admin=is_admin(self.main.policy, user), csrf=csrf, root=self.root(request),
                            base_url=self.main.base_url(request), query=query)

    def check_csrf(self, request: IRequest, viewer: pages.Viewer) -> None:
        """Refuse a form post without the viewer's token (a cross-site request)."""
        sent = _arg(request, "csrf")
        if not viewer.csrf or not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
            raise CsrfFailure()

    async def start_session(self, request: IRequest, user: str) -> None:
        """Log the browser in as ``user``."""
        session_id = secrets.token_urlsafe(32)
        record = {"user": user, "csrf": secrets.token_urlsafe(24)}
        await self.sessions.put("web:" + session_id, record, SESSION_TTL)
        self.set_cookie(request, SESSION_COOKIE, session_id.encode(), b"lax", int(SESSION_TTL))
        request.user = user

    def visible(self, name: str, user: str | None) -> bool:
        """Whether ``user`` may see ``name`` (NOPARD_CONFIG's access rules)."""
        return self.main.policy.allows("access", name, user)

    def may_read(self, viewer: pages.Viewer) -> bool:
        """NOPARD_AUTH_READ: reads need a logged-in user."""
        return viewer.user is not None or not self.main.settings.current.auth_read

    # Rendering --------------------------------------------------------------

    async def html(self, request: IRequest, page: Any, status: int = 200, readme_html: str | None = None) -> bytes:
        body = await pages.render(page, readme_html)
        request.setResponseCode(status)
        for name, value in PAGE_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def redirect(self, request: IRequest, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode("utf-8"))
        request.setHeader(b"Cache-Control", b"no-store")
        return b""

    async def login_required(self, request: IRequest, viewer: pages.Viewer) -> bytes:
        page = pages.login_page(viewer, pages.link(viewer, "/-/web/login"),
                                note="Log in to see this registry's packages.")
        return await self.html(request, page, 401)

    @app.handle_errors(CsrfFailure)
    async def csrf_failed(self, request: IRequest, failure: Any) -> bytes:
        viewer = await self.viewer(request)
        page = pages.message_page(viewer, "Form expired", "This form was not sent from nopard's own page "
                                  "(or your session ended). Go back, reload the page and try again.")
        return await self.html(request, page, 403)

    @app.handle_errors(Exception)
    async def failed(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(NotFound, RouteNotFound):
            viewer = await self.viewer(request)
            message = failure.value.message if failure.check(NotFound) else "There is no such page."
            return await self.html(request, pages.message_page(viewer, "Not found", message), 404)
        if failure.check(MethodNotAllowed):
            viewer = await self.viewer(request)
            return await self.html(request, pages.message_page(viewer, "Not allowed", "This page cannot be "
                                                               "used that way."), 405)
        self.main.log.failure("unexpected error on a web page", failure, event="error")
        return await self.html(request, pages.message_page(await self.viewer(request), "Error",
                                                           "Something went wrong; see the registry's log."), 500)

    # Routes -----------------------------------------------------------------

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: IRequest, name: str) -> bytes:
        """nopard's stylesheet and icon: the only assets the pages load."""
        if name not in STATIC:
            raise NotFound(f"no such file: {name}")
        content_type, body = STATIC[name]
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return body

    @app.route("/", methods=["GET"])
    async def home(self, request: IRequest) -> bytes:
        """GET / in a browser (RegistryApp sends it here) and GET /-/web/."""
        query = _arg(request, "q")[:200].strip()
        viewer = await self.viewer(request, query)
        if not self.may_read(viewer):
            return await self.login_required(request, viewer)
        listing = await self.main.search.listing() if self.main.search is not None else []
        visible = [(entry, origin, fetched) for entry, origin, fetched in listing if self.visible(entry.name, viewer.user)]
        counts = {"local": sum(1 for _, o, _ in visible if o == "local"),
                  "cached": sum(1 for _, o, _ in visible if o != "local")}
        if query:
            parsed = parse_query({b"text": [query.encode()]})
            visible = [item for item in visible if score(item[0], parsed) > 0]
        visible.sort(key=lambda item: (item[1] != "local", item[0].name))
        listed = [pages.Listed(e.name, e.version, e.description, o, f) for e, o, f in visible[:MAX_LISTED]]
        return await self.html(request, pages.home_page(viewer, listed, counts, self.main.clock.seconds()))

    @app.route("/package/", branch=True, methods=["GET", "POST"])
    async def package(self, request: IRequest) -> bytes:
        """A package's page; POST .../refresh asks the upstream now (admins)."""
        raw = request.path.decode("latin-1")
        rest = unquote(raw.split("/-/web/package/", 1)[1]) if "/-/web/package/" in raw else ""
        refresh = rest.endswith("/refresh") and request.method == b"POST"
        name = rest[: -len("/refresh")] if refresh else rest
        viewer = await self.viewer(request)
        if not self.may_read(viewer):
            return await self.login_required(request, viewer)
        try:
            names.validate_name(name)
        except Exception:
            raise NotFound(f"package not found: {name}") from None
        if not self.visible(name, viewer.user):
            raise NotFound(f"package not found: {name}")
        if refresh:
            return await self.refresh(request, viewer, name)
        if request.method != b"GET":
            raise NotFound("nothing to post here")
        return await self.package_page(request, viewer, name)

    async def refresh(self, request: IRequest, viewer: pages.Viewer, name: str) -> bytes:
        self.check_csrf(request, viewer)
        if not viewer.admin:
            return await self.html(request, pages.message_page(viewer, "Not allowed",
                                                               "Only admins may refresh a package."), 403)
        await self.main.mirror.refresh(name)
        self.main.touched(name)
        return self.redirect(request, pages.package_path(viewer, name))

    async def package_page(self, request: IRequest, viewer: pages.Viewer, name: str) -> bytes:
        mirror = self.main.mirror
        prepared, status = await mirror.packument(name, viewer.base_url)
        document = orjson.loads(prepared.full.identity)
        origin = "local" if status == "LOCAL" else "upstream"  # merged documents count as mirrored
        meta = await mirror.meta(name) if origin != "local" else None
        sizes = await mirror.tarball_sizes(name, document)
        rows = pages.version_rows(document, lambda manifest: str((manifest.get("dist") or {}).get("tarball", "")), sizes)
        readme = _readme_of(document)
        stored = sum(1 for size in sizes.values() if size is not None)
        page = pages.package_page(viewer, document, rows, origin, meta.fetched_at if meta else None,
                                  self.main.clock.seconds(), bool(readme), stored)
        readme_html = await self.main.run_cpu(render_readme, readme) if readme else None
        return await self.html(request, page, readme_html=readme_html)

    @app.route("/login", methods=["GET"])
    async def login_form(self, request: IRequest) -> bytes:
        viewer = await self.viewer(request)
        if viewer.user:
            return self.redirect(request, pages.link(viewer, "/"))
        return await self.html(request, pages.login_page(viewer, pages.link(viewer, "/-/web/login")))

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        viewer = await self.viewer(request)
        self.check_csrf(request, viewer)
        username = _arg(request, "username").strip()
        try:
            ok = await self.main.accounts.check_password(username, _arg(request, "password"), client_address(request))
        except TooManyAttempts as error:
            request.setHeader(b"Retry-After", b"%d" % error.retry_after)
            page = pages.login_page(viewer, pages.link(viewer, "/-/web/login"), error.message, username)
            return await self.html(request, page, 429)
        if not ok:
            page = pages.login_page(viewer, pages.link(viewer, "/-/web/login"), "Wrong user name or password.", username)
            return await self.html(request, page, 401)
        await self.start_session(request, username)
        return self.redirect(request, pages.link(viewer, "/"))

    @app.route("/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        session_id, _record = await self.session(request)
        viewer = await self.viewer(request)
        self.check_csrf(request, viewer)
        if session_id:
            await self.sessions.take("web:" + session_id)
        self.set_cookie(request, SESSION_COOKIE, b"", b"lax", 0)
        request.user = None
        return self.redirect(request, pages.link(viewer, "/"))

    @app.route("/settings", methods=["GET", "POST"])
    async def settings(self, request: IRequest) -> bytes:
        viewer = await self.viewer(request)
        if viewer.user is None:
            return self.redirect(request, pages.link(viewer, "/-/web/login"))
        if not viewer.admin or self.overrides is None:
            return await self.html(request, pages.message_page(
                viewer, "Not allowed", "Only admins may see and change settings: they are named in "
                "NOPARD_ADMINS or in the admins of the NOPARD_CONFIG file."), 403)
        if request.method == b"GET":
            return await self.html(request, pages.settings_page(viewer, self.overrides.entries(),
                                                                saved=_arg(request, "saved") == "1"))
        self.check_csrf(request, viewer)
        entries = self.overrides.entries()
        values = {entry["name"]: _arg(request, entry["name"]).strip() for entry in entries
                  if _has_arg(request, entry["name"])}
        changed = {name: text for name, text in values.items()
                   if text != next(e["value"] for e in entries if e["name"] == name)}
        try:
            if changed:
                await self.overrides.change(changed, viewer.user)
        except ConfigError as error:
            invalid = next((e["name"] for e in entries if str(error).startswith(e["env"])), None)
            shown = [dict(e, value=values.get(e["name"], e["value"])) for e in entries]
            return await self.html(request, pages.settings_page(viewer, shown, str(error), invalid), 400)
        return self.redirect(request, pages.link(viewer, "/-/web/settings?saved=1"))

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        viewer = await self.viewer(request)
        if not self.may_read(viewer):
            return await self.login_required(request, viewer)
        counts = self.main.metrics.cache_counts() if self.main.metrics is not None else {}
        total = sum(counts.values())
        served_here = sum(v for k, v in counts.items() if k in ("LOCAL", "HIT", "STALE"))
        ratio = served_here / total if total else None
        page = pages.status_page(viewer, self.main.mirror.status(), self.main.sync.status(), ratio, counts,
                                 await self.storage_used(), self.main.clock.seconds())
        return await self.html(request, page)

    async def storage_used(self) -> str:
        if self.store_size is None:
            return "not measured"
        await self.store_size.refresh()
        if self.store_size.bytes is None:
            return "unknown"
        return f"{pages.human_size(self.store_size.bytes)} in {self.store_size.files} objects"


def _readme_of(document: dict[str, Any]) -> str:
    readme = document.get("readme")
    if not isinstance(readme, str) or not readme.strip():
        latest = (document.get("dist-tags") or {}).get("latest")
        readme = ((document.get("versions") or {}).get(latest) or {}).get("readme")
    return readme if isinstance(readme, str) else ""


def _arg(request: IRequest, name: str) -> str:
    """A query argument, or a field of a posted form (Twisted parses both into request.args)."""
    values = (request.args or {}).get(name.encode())
    return values[0].decode("utf-8", "replace") if values else ""


def _has_arg(request: IRequest, name: str) -> bool:
    return name.encode() in (request.args or {})


def package_location(root: str, name: str) -> str:
    """Where a browser asking for /<name> is sent."""
    return f"{root}/-/web/package/{quote(name, safe='@/')}"

