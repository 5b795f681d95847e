"""What every browser page shares: the session cookie, the viewer, CSRF checks, HTML answers.

A browser session is a random id in an HttpOnly, SameSite=Lax cookie (Secure
when the registry is reached over https), kept in the same session store as
`npm login`'s (Redis when instances share one). Every form that changes
something carries a CSRF token: the session's, or for the login forms a random
one also set as a SameSite=Strict cookie; and a post the browser marks as sent
from another site (Sec-Fetch-Site, Origin) is refused even with a token.
Browser sessions are bounded per user (MAX_SESSIONS_PER_USER: a new login
pushes out that user's oldest) and in all (MAX_SESSIONS).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.web.iweb import IRequest
from twisted.web.template import Tag

from nopard.settings.acl import Policy
from nopard.settings.config import LiveSettings
from nopard.web import pages
from nopard.web.responses import Requests, header
from nopard.web.services import Sessions
from nopard.web.site import log_user

SESSION_COOKIE = b"nopard_session"
CSRF_COOKIE = b"nopard_csrf"
SESSION_TTL = 12 * 3600.0
SESSION_POOL = "browser"
MAX_SESSIONS_PER_USER = 10
MAX_SESSIONS = 10_000
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


class CsrfFailure(Exception):
    """A form post without the token of nopard's own page."""


def _token_ok(text: str) -> bool:
    """Whether a cookie value has the shape of nopard's random tokens."""
    return 20 <= len(text) <= 100 and all(c.isalnum() or c in "-_" for c in text)


def cross_site(request: IRequest, base_url: str) -> bool:
    """Whether the browser says this request comes from another site (a form posted from elsewhere).

    Sec-Fetch-Site is the browser's own verdict; Origin, when sent and not "null", must be the
    registry's (its base URL's, or the Host it was reached at).
    """
    fetch_site = (header(request, "sec-fetch-site") or "").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        return True
    origin = (header(request, "origin") or "").strip()
    if not origin or origin == "null":
        return False
    sent = urlsplit(origin).netloc.lower()
    ours = {urlsplit(base_url).netloc.lower(), (header(request, "host") or "").strip().lower()}
    return sent not in ours


async def csrf_refused(request: IRequest, viewer: pages.Viewer) -> bytes:
    """The 403 page of a form that did not come from nopard's own page (nothing was changed)."""
    page = pages.message_page(viewer, "Form expired", "This form was not sent from nopard's own page "
                              "(or your session ended). Go back, reload the page and try again.")
    return await html(request, page, 403)


def wants_html(request: IRequest) -> bool:
    """Whether the client is a browser: text/html comes first in its Accept header."""
    accept = header(request, "accept") or ""
    first = accept.split(",", 1)[0].split(";", 1)[0].strip().lower()
    return first == "text/html"


def root_path(base_url: str) -> str:
    """The path prefix of nopard's URLs (NOPARD_BASE_URL's path)."""
    return urlsplit(base_url).path.rstrip("/")


def package_location(root: str, name: str) -> str:
    """Where a browser asking for /<name> is sent."""
    return f"{root}/-/web/package/{quote(name, safe='@/')}"


def form_arg(request: IRequest, name: str) -> str:
    """A query argument, or a field of a posted form (Twisted parses both into request.args)."""
    values = (request.args or {}).get(name.encode())
    return values[0].decode("utf-8", "replace") if values else ""


def has_form_arg(request: IRequest, name: str) -> bool:
    """Whether the query or the posted form has field ``name`` (even empty)."""
    return name.encode() in (request.args or {})


async def html(request: IRequest, page: Tag, status: int = 200, readme_html: str | None = None) -> bytes:
    """Answer with ``page`` rendered, and the headers every page carries."""
    body = await pages.render(page, readme_html)
    request.setResponseCode(status)
    for name, value in PAGE_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def redirect(request: IRequest, location: str) -> bytes:
    """Send the browser on to ``location`` (after a form post: 303)."""
    request.setResponseCode(303)
    request.setHeader(b"Location", location.encode("utf-8"))
    request.setHeader(b"Cache-Control", b"no-store")
    return b""


class BrowserSessions:
    """The browser's session and CSRF cookies, and the ``Viewer`` every page is built for."""

    def __init__(self, sessions: Sessions, policy: Policy, requests: Requests, settings: LiveSettings) -> None:
        self._sessions = sessions
        self._policy = policy
        self._requests = requests
        self._settings = settings

    async def session(self, request: IRequest) -> tuple[str | None, dict[str, Any] | None]:
        """(session id, record) of the browser's session, or (None, None)."""
        session_id = request.getCookie(SESSION_COOKIE)
        if not session_id:
            return None, None
        key = session_id.decode("ascii", "replace")
        if not _token_ok(key):
            return None, None
        record = await self._sessions.get("web:" + key)
        return (key, record) if record else (None, None)

    def set_cookie(self, request: IRequest, name: bytes, value: bytes, same_site: bytes, max_age: int | None) -> None:
        """Set one of nopard's cookies: HttpOnly, on nopard's path, Secure over https."""
        base_url = self._requests.base_url(request)
        # httpOnly and sameSite: Request.addCookie takes them, IRequest does not declare them.
        request.addCookie(name, value, path=(root_path(base_url) or "/").encode(), httpOnly=True,  # type: ignore[call-arg]
                          secure=base_url.startswith("https://"), sameSite=same_site.decode(),
                          max_age=str(max_age) if max_age is not None else None)

    async def viewer(self, request: IRequest, query: str = "") -> pages.Viewer:
        """Who looks, with the CSRF token their forms carry."""
        _session_id, record = await self.session(request)
        user = record["user"] if record else None
        log_user(request, user)
        if record:
            csrf = record["csrf"]
        else:
            cookie = (request.getCookie(CSRF_COOKIE) or b"").decode("ascii", "replace")
            csrf = cookie if _token_ok(cookie) else ""
            if not csrf:
                csrf = secrets.token_urlsafe(24)
                self.set_cookie(request, CSRF_COOKIE, csrf.encode(), b"strict", None)
        base_url = self._requests.base_url(request)
        return pages.Viewer(user=user, admin=self._policy.is_admin(user), csrf=csrf, root=root_path(base_url),
                            base_url=base_url, query=query)

    def check_csrf(self, request: IRequest, viewer: pages.Viewer) -> None:
        """Refuse a form post without the viewer's token, or one the browser says is cross-site."""
        sent = form_arg(request, "csrf")
        if not viewer.csrf or not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
            raise CsrfFailure()
        if cross_site(request, viewer.base_url):
            raise CsrfFailure()

    async def start_session(self, request: IRequest, user: str) -> bool:
        """Log the browser in as ``user``; False (and no cookie) when the session could not be stored."""
        session_id = secrets.token_urlsafe(32)
        record = {"user": user, "csrf": secrets.token_urlsafe(24)}
        if not await self._sessions.admit(SESSION_POOL, "web:" + session_id, record, SESSION_TTL, user,
                                          MAX_SESSIONS_PER_USER, MAX_SESSIONS):
            return False
        self.set_cookie(request, SESSION_COOKIE, session_id.encode(), b"lax", int(SESSION_TTL))
        log_user(request, user)
        return True

    async def end_session(self, request: IRequest, session_id: str | None) -> None:
        """Log the browser out: its session is gone, its cookie emptied."""
        if session_id:
            await self._sessions.take("web:" + session_id, SESSION_POOL)
        self.set_cookie(request, SESSION_COOKIE, b"", b"lax", 0)
        log_user(request, None)

    def visible(self, name: str, user: str | None) -> bool:
        """Whether ``user`` may see ``name`` (NOPARD_CONFIG's access rules)."""
        return self._policy.allows("access", name, user)

    def may_read(self, viewer: pages.Viewer) -> bool:
        """NOPARD_AUTH_READ: reads need a logged-in user."""
        return viewer.user is not None or not self._settings.current.auth_read

    async def login_required(self, request: IRequest, viewer: pages.Viewer) -> bytes:
        """The login form, answered 401 to a page that needs a login to be read."""
        page = pages.login_page(viewer, pages.link(viewer, "/-/web/login"),
                                note="Log in to see this registry's packages.")
        return await html(request, page, 401)
