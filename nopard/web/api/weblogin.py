"""npm's web login (npm login / npm adduser): open a session, the browser's form, npm's polling.

The form is the browser pages' own login; the logic is nopard.auth.weblogin's.
"""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.template import Tag

from nopard.auth import weblogin
from nopard.auth.weblogin import Session, WebLogins
from nopard.domain.errors import (
    BadCredentials,
    InvalidInput,
    NotFound,
    OneTimePasswordRequired,
    PermissionDenied,
    TooManyAttempts,
)
from nopard.web import pages
from nopard.web.api.common import add_route
from nopard.web.browser import BrowserSessions, CsrfFailure, csrf_refused, html
from nopard.web.errors import set_retry_after, status_of
from nopard.web.responses import Requests, client_address, json_response
from nopard.web.site import log_user


class WebLoginRoutes:
    """``/-/v1/login`` (start), ``/-/v1/login/<id>`` (the form) and ``/-/v1/done/<id>`` (npm polls)."""

    def __init__(self, requests: Requests, weblogins: WebLogins, browser: BrowserSessions) -> None:
        self._requests = requests
        self._weblogins = weblogins
        self._browser = browser

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "weblogin", "/-/v1/login", ["POST"], self.start)
        add_route(app, "weblogin", "/-/v1/login/<session_id>", ["GET"], self.form)
        add_route(app, "weblogin", "/-/v1/login/<session_id>", ["POST"], self.submit)
        add_route(app, "weblogin", "/-/v1/done/<session_id>", ["GET"], self.done)

    async def start(self, request: IRequest) -> bytes:
        """Open a web login session: the page's URL and the URL to poll."""
        body = await self._requests.optional_json_body(request)
        create = isinstance(body, dict) and body.get("create") is True
        session_id = await self._weblogins.start(create, client_address(request))
        base = self._requests.base_url(request).rstrip("/")
        return json_response(
            request, 200, {"loginUrl": f"{base}/-/v1/login/{session_id}", "doneUrl": f"{base}/-/v1/done/{session_id}"}
        )

    async def form(self, request: IRequest, session_id: str) -> bytes:
        """The login (or sign-up) form of an `npm login` session."""
        viewer = await self._browser.viewer(request)
        try:
            session = await self._weblogins.session(session_id)
        except NotFound as error:
            return await html(request, pages.message_page(viewer, "Login expired", error.message), 404)
        return await html(request, login_page(viewer, session, session_id))

    async def submit(self, request: IRequest, session_id: str) -> bytes:
        """The form posted back: log in or register; the polling npm then gets the token.

        Anyone can open a session, so its id proves nothing about who posts the form: the
        browser pages' CSRF check refuses a form sent from elsewhere (which would log the
        victim's browser in as the attacker) before anything is looked at or changed.
        """
        viewer = await self._browser.viewer(request)
        try:
            self._browser.check_csrf(request, viewer)
        except CsrfFailure:
            return await csrf_refused(request, viewer)
        try:
            session = await self._weblogins.session(session_id)
        except NotFound as error:
            return await html(request, pages.message_page(viewer, "Login expired", error.message), 404)
        form = {
            key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
            if values
        }
        try:
            user = await self._weblogins.submit(session_id, form, client_address(request))
        except NotFound as error:
            return await html(request, pages.message_page(viewer, "Login expired", error.message), 404)
        except (InvalidInput, BadCredentials, OneTimePasswordRequired, PermissionDenied, TooManyAttempts) as error:
            set_retry_after(request, error)
            page = login_page(viewer, session, session_id, error.message, form.get("username", ""))
            return await html(request, page, status_of(error))
        if user and not await self._browser.start_session(request, user):  # the browser is logged in too
            text = "npm is logged in, but this browser could not be: log in on the registry's own page."
            return await html(request, pages.message_page(viewer, "Logged in (npm only)", text), 503)
        log_user(request, user or None)
        who = f" as {user}" if user else ""
        text = f"You are logged in{who}. Go back to your terminal; you can close this page."
        return await html(request, pages.message_page(viewer, "Logged in", text))

    async def done(self, request: IRequest, session_id: str) -> bytes:
        """Polled by npm: 202 while the person has not logged in yet, then the token, once."""
        token = await self._weblogins.poll(session_id)
        if token is None:
            request.setHeader(b"Retry-After", b"%d" % weblogin.POLL_SECONDS)
            return json_response(request, 202, {})
        return json_response(request, 200, {"token": token})


def login_page(viewer: pages.Viewer, session: Session, session_id: str, error: str | None = None,
               username: str = "") -> Tag:
    """The form of one `npm login` session (a sign-up form for `npm adduser`)."""
    heading = "Sign up to nopard" if session.create else "Log in to nopard"
    return pages.login_page(
        viewer, pages.link(viewer, f"/-/v1/login/{session_id}"), error, username, heading=heading,
        email=session.create, note="npm is waiting in your terminal for this login.",
    )
