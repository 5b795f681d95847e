"""The npm registry API as Klein routes: parse the request, call the domain, render.

Domain errors become JSON answers through one table (STATUS_OF).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Awaitable, Callable
from urllib.parse import unquote, unquote_to_bytes

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from nopard import __version__
from nopard.domain import names
from nopard.domain import packument
from nopard.catalog import search as searching
from nopard.settings.acl import ALLOW_ALL
from nopard.auth import Accounts, Identity
from nopard.auth import weblogin
from nopard.settings.config import ConfigError, LiveSettings
from nopard.domain.errors import (
    AuthenticationRequired,
    BadCredentials,
    Conflict,
    IntegrityMismatch,
    InvalidInput,
    NopardError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    TooManyAttempts,
    UpstreamBadContent,
    UpstreamUnavailable,
    VersionExists,
)
from nopard.domain.publication import parse_publication
from nopard.mirror.service import Mirror
from nopard.local.packages import Registry
from nopard.jobs.schedule import JOBS, SyncService
from nopard.storage import InvalidKey
from nopard.cluster.coordination import MemorySessions
from nopard.web import pages
from nopard.web.site import redact_path
from nopard.web.ui import WebUI, package_location, wants_html
from nopard.web.ui import is_admin
from nopard.web.responses import client_address, header, json_response, public_base_url, read_json_body, send_prepared

STATUS_OF: dict[type[NopardError], int] = {
    InvalidInput: 400,
    AuthenticationRequired: 401,
    BadCredentials: 401,
    PermissionDenied: 403,
    VersionExists: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    TooManyAttempts: 429,
    IntegrityMismatch: 400,
    UpstreamBadContent: 502,
    UpstreamUnavailable: 503,
}
PRIVATE_DOCUMENT_CACHE = "private, no-cache"
TARBALL_CACHE = "private, max-age=31536000, immutable"
USER_PREFIX = "org.couchdb.user:"

RunInThread = Callable[..., Awaitable[Any]]


class RegistryApp:
    """The web face of the registry; dependencies are attributes, no global state."""

    app = Klein()

    def __init__(
        self,
        settings: LiveSettings,
        registry: Registry,
        mirror: Mirror,
        sync: SyncService,
        accounts: Accounts,
        run_in_thread: RunInThread,
        log: Logger,
        metrics: Any = None,
        health: Any = None,
        policy: Any = None,
        search: Any = None,
        weblogins: weblogin.WebLogins | None = None,
        sessions: Any = None,
        overrides: Any = None,
        store_size: Any = None,
        clock: Any = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics  # nopard.ops.metrics.Metrics: GET /-/metrics
        self.health = health  # nopard.ops.metrics.StoreProbe: GET /-/nopard/health
        self.policy = policy or ALLOW_ALL  # nopard.settings.acl.Policy: NOPARD_CONFIG's package rules
        self.search = search  # nopard.catalog.search.SearchIndex: GET /-/v1/search
        self.registry = registry
        self.mirror = mirror
        self.sync = sync
        self.accounts = accounts
        self._run = run_in_thread
        self.log = log
        if weblogins is None:
            from twisted.internet import reactor

            weblogins = weblogin.WebLogins(accounts, reactor)
        self.weblogins = weblogins
        if clock is None or sessions is None:
            from twisted.internet import reactor

            clock = clock or reactor
            sessions = sessions or MemorySessions(reactor)
        self.clock = clock
        self.run_cpu = run_in_thread
        self.overrides = overrides
        self.ui = WebUI(self, sessions, overrides, store_size)  # the browser pages under /-/web/

    def resource(self) -> Any:
        """The Twisted resource serving this app."""
        return Utf8PathGuard(self.app.resource())

    # Errors ---------------------------------------------------------------

    @app.handle_errors(NopardError)
    def domain_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        status = next(s for cls, s in STATUS_OF.items() if isinstance(error, cls))
        if status == 401:
            scheme = getattr(error, "scheme", "Basic")
            request.setHeader(b"WWW-Authenticate", f'{scheme} realm="nopard"')
        if isinstance(error, TooManyAttempts):
            request.setHeader(b"Retry-After", b"%d" % error.retry_after)
        return json_response(request, status, {"error": error.message})

    @app.handle_errors(RouteNotFound)
    def route_not_found(self, request: IRequest, failure: Failure) -> bytes:
        return json_response(request, 404, {"error": "not found"})

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return json_response(request, 405, {"error": "method not allowed here"})

    @app.handle_errors(InvalidKey)
    def invalid_key(self, request: IRequest, failure: Failure) -> bytes:
        return json_response(request, 400, {"error": "invalid name"})

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        path = redact_path(request.uri.decode("latin-1"))
        self.log.failure("unexpected error on {path}", failure, path=path, event="error")
        return json_response(request, 500, {"error": "internal error; see the registry's log"})

    # Helpers --------------------------------------------------------------

    async def identify(self, request: IRequest) -> Identity:
        """Who is asking; the access log learns it too."""
        identity = await self.accounts.identify(header(request, "authorization"), client_address(request))
        request.user = identity.user
        return identity

    def base_url(self, request: IRequest) -> str:
        """The URL this request reached the registry at."""
        current = self.settings.current
        return public_base_url(
            configured=current.base_url,
            always_https=current.always_https,
            secure=request.isSecure(),
            host=header(request, "host"),
            forwarded_proto=header(request, "x-forwarded-proto"),
            forwarded_host=header(request, "x-forwarded-host"),
            fallback_host=f"{current.hostname}:{current.port}",
        )

    def hide_unreadable(self, name: str, identity: Identity, missing: str, tarball: str | None = None) -> None:
        """A package the caller may not read answers exactly as one that does not exist."""
        if not self.policy.allows("access", name, identity.user):
            raise NotFound(self.mirror.missing_answer(name, tarball) or missing)

    def require_rule(self, action: str, name: str, user: str | None) -> None:
        """NOPARD_CONFIG's rule for a write: unreadable names are missing, else 403."""
        if not self.policy.allows("access", name, user):
            raise NotFound(f"{name} is not published on this registry (mirrored packages cannot be changed)")
        if not self.policy.allows(action, name, user):
            raise PermissionDenied(f"{user or 'anonymous'} may not {action} {name} on this registry")

    def touched(self, name: str) -> None:
        """A write changed ``name``'s document: search re-reads it."""
        if self.search is not None:
            self.search.changed(name)

    async def json_body(self, request: IRequest) -> Any:
        """The request body parsed as JSON, in a thread (it can be large)."""
        return await self._run(
            read_json_body,
            request.content,
            header(request, "content-encoding"),
            self.settings.current.max_body_size,
        )

    # Misc routes ----------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def root(self, request: IRequest) -> bytes:
        """A browser sees the registry's home page; a client a small JSON document."""
        if wants_html(request):
            return await self.ui.home(request)
        return json_response(request, 200, {"registry": "nopard", "version": __version__})

    @app.route("/-/web/", branch=True)
    def web(self, request: IRequest) -> Any:
        """The browser pages (nopard.web.ui)."""
        return self.ui.resource()

    @app.route("/-/ping", methods=["GET"])
    def ping(self, request: IRequest) -> bytes:
        return json_response(request, 200, {})

    @app.route("/-/nopard/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        """Upstream health and cache use, for operators and monitoring."""
        self.accounts.require_read(await self.identify(request))
        return json_response(request, 200, {"nopard": __version__, **self.mirror.status()})

    @app.route("/-/nopard/health", methods=["GET"])
    async def health_check(self, request: IRequest) -> bytes:
        """200 while nopard can serve (its store works), 503 otherwise: for load balancers and watchdogs."""
        error = await self.health.check() if self.health is not None else None
        status = self.mirror.status()
        upstreams = [{"url": u["url"], "state": u["state"]} for u in status["upstreams"]]
        redis = status["redis"]
        if error is not None:
            return json_response(request, 503, {"status": "unavailable", "error": error, "upstreams": upstreams,
                                                "redis": redis})
        # Without Redis nopard still serves everything from storage: degraded, not down.
        overall = "degraded" if redis["state"] == "down" else "ok"
        return json_response(request, 200, {"status": overall, "nopard": __version__, "upstreams": upstreams,
                                            "redis": redis})

    @app.route("/-/metrics", methods=["GET"])
    async def metrics_exposition(self, request: IRequest) -> bytes:
        """The metrics in Prometheus' text format (OpenMetrics when asked for)."""
        self.accounts.require_read(await self.identify(request))
        if self.metrics is None:
            raise NotFound("metrics are not enabled")
        body, content_type = await self.metrics.exposition(header(request, "accept"))
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    @app.route("/-/nopard/sync", methods=["GET"])
    async def sync_status(self, request: IRequest) -> bytes:
        """Each sync job's last run and the next one."""
        self.accounts.require_read(await self.identify(request))
        return json_response(request, 200, self.sync.status())

    async def require_operator(self, request: IRequest) -> None:
        """Admin actions: from this machine (nopard-admin), or by a logged-in user."""
        address = getattr(request.getClientAddress(), "host", "")
        local = address in ("127.0.0.1", "::1") and not header(request, "x-forwarded-for")
        identity = await self.identify(request)
        if not local and identity.user is None:
            raise AuthenticationRequired("log in, or run nopard-admin on the registry's machine")

    @app.route("/-/nopard/sync", methods=["POST"])
    async def sync_now(self, request: IRequest) -> bytes:
        """Run the sync jobs now and answer their reports (nopard-admin sync --now)."""
        await self.require_operator(request)
        has_body = request.content.seek(0, 2) > 0
        body = await self.json_body(request) if has_body else {}
        job = body.get("job") if isinstance(body, dict) else None
        if job not in (None, *JOBS):
            raise InvalidInput(f"unknown job {job!r}: use one of {', '.join(JOBS)}")
        reports = await self.sync.run_now(job)
        return json_response(request, 200, {"reports": [r.__dict__ for r in reports]})

    @app.route("/-/nopard/prefetch", methods=["POST"])
    async def prefetch(self, request: IRequest) -> bytes:
        """Fetch the documents and tarballs of the given name/version pairs (nopard-admin prefetch)."""
        await self.require_operator(request)
        body = await self.json_body(request)
        packages = body.get("packages") if isinstance(body, dict) else None
        if not isinstance(packages, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in packages
        ):
            raise InvalidInput('the body must be {"packages": [["name", "version"], ...]}')
        identity = await self.identify(request)
        report = await self.sync.jobs.prefetch(
            [(name, version) for name, version in packages],
            may_read=lambda name: self.policy.allows("access", name, identity.user),
        )
        return json_response(request, 200, report.__dict__)

    @app.route("/-/whoami", methods=["GET"])
    async def whoami(self, request: IRequest) -> bytes:
        identity = await self.identify(request)
        if identity.user is None:
            raise AuthenticationRequired("not logged in")
        return json_response(request, 200, {"username": identity.user})

    @app.route("/-/user/<userid>", methods=["PUT"])
    async def login(self, request: IRequest, userid: str) -> bytes:
        """Legacy (CouchDB-style) login, which also registers while registration is open."""
        if not userid.startswith(USER_PREFIX):
            raise NotFound("not found")
        name = userid[len(USER_PREFIX) :]
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        if body.get("name", name) != name:
            raise InvalidInput("the body's name does not match the URL's user")
        token = await self.accounts.login(name, body.get("password"), body.get("email"), client_address(request))
        request.user = name
        return json_response(
            request, 201, {"ok": True, "id": userid, "rev": "1-0", "token": token}
        )

    @app.route("/-/user/token/<token>", methods=["DELETE"])
    async def logout(self, request: IRequest, token: str) -> bytes:
        """Revoke a token (npm logout). Idempotent: a gone token is logged out too."""
        await self.accounts.logout(unquote(token))
        return json_response(request, 200, {"ok": True})

    # Web login and the tokens API (logic in nopard.auth) ------------------

    @app.route("/-/v1/login", methods=["POST"])
    async def web_login_start(self, request: IRequest) -> bytes:
        """Open a web login session (npm login / npm adduser): the page's URL and the URL to poll."""
        has_body = request.content.seek(0, 2) > 0
        body = await self.json_body(request) if has_body else {}
        create = isinstance(body, dict) and body.get("create") is True
        session_id = await self.weblogins.start(create)
        base = self.base_url(request).rstrip("/")
        return json_response(
            request, 200, {"loginUrl": f"{base}/-/v1/login/{session_id}", "doneUrl": f"{base}/-/v1/done/{session_id}"}
        )

    @app.route("/-/v1/login/<session_id>", methods=["GET"])
    async def web_login_page(self, request: IRequest, session_id: str) -> bytes:
        """The login (or sign-up) form of an `npm login` session: the browser pages' own login."""
        viewer = await self.ui.viewer(request)
        try:
            session = await self.weblogins.session(session_id)
        except NotFound as error:
            return await self.ui.html(request, pages.message_page(viewer, "Login expired", error.message), 404)
        return await self.ui.html(request, self.npm_login_page(viewer, session, session_id))

    def npm_login_page(self, viewer: Any, session: Any, session_id: str, error: str | None = None,
                       username: str = "") -> Any:
        heading = "Sign up to nopard" if session.create else "Log in to nopard"
        return pages.login_page(
            viewer, pages.link(viewer, f"/-/v1/login/{session_id}"), error, username, heading=heading,
            email=session.create, note="npm is waiting in your terminal for this login.",
        )

    @app.route("/-/v1/login/<session_id>", methods=["POST"])
    async def web_login_submit(self, request: IRequest, session_id: str) -> bytes:
        """The form posted back: log in or register; the polling npm then gets the token.

        The session id in the URL is a 256-bit secret only npm and this browser
        know, so it is what protects this form (no CSRF token needed).
        """
        viewer = await self.ui.viewer(request)
        try:
            session = await self.weblogins.session(session_id)
        except NotFound as error:
            return await self.ui.html(request, pages.message_page(viewer, "Login expired", error.message), 404)
        form = {
            key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
            if values
        }
        try:
            user = await self.weblogins.submit(session_id, form, client_address(request))
        except (InvalidInput, BadCredentials, PermissionDenied, TooManyAttempts) as error:
            status = next(s for cls, s in STATUS_OF.items() if isinstance(error, cls))
            if isinstance(error, TooManyAttempts):
                request.setHeader(b"Retry-After", b"%d" % error.retry_after)
            page = self.npm_login_page(viewer, session, session_id, error.message, form.get("username", ""))
            return await self.ui.html(request, page, status)
        if user:
            await self.ui.start_session(request, user)  # the browser is logged in too
        request.user = user or None
        who = f" as {user}" if user else ""
        text = f"You are logged in{who}. Go back to your terminal; you can close this page."
        return await self.ui.html(request, pages.message_page(viewer, "Logged in", text))

    @app.route("/-/v1/done/<session_id>", methods=["GET"])
    async def web_login_done(self, request: IRequest, session_id: str) -> bytes:
        """Polled by npm: 202 while the person has not logged in yet, then the token, once."""
        token = await self.weblogins.poll(session_id)
        if token is None:
            request.setHeader(b"Retry-After", b"%d" % weblogin.POLL_SECONDS)
            return json_response(request, 202, {})
        return json_response(request, 200, {"token": token})

    async def token_owner(self, request: IRequest) -> Identity:
        identity = await self.identify(request)
        if identity.user is None:
            raise AuthenticationRequired("log in to manage tokens (npm login)")
        return identity

    @app.route("/-/npm/v1/tokens", methods=["GET"])
    async def list_tokens(self, request: IRequest) -> bytes:
        """The caller's tokens (npm token list): only their first characters."""
        identity = await self.token_owner(request)
        objects = [record.public() for record in await self.accounts.tokens.records(identity.user)]
        return json_response(request, 200, {"objects": objects, "total": len(objects), "urls": {}})

    @app.route("/-/npm/v1/tokens", methods=["POST"])
    async def create_token(self, request: IRequest) -> bytes:
        """A new token for the caller, once their password is checked (npm token create)."""
        identity = await self.token_owner(request)
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        readonly = body.get("readonly") is True or body.get("packages_and_scopes_permission") in (
            "read-only",
            "no-access",
        )
        created = await self.accounts.create_token(
            identity.user, body.get("password"), readonly, body.get("name"), client_address(request)
        )
        return json_response(request, 200, created)

    @app.route("/-/npm/v1/tokens/token/<path:key>", methods=["DELETE"])
    async def revoke_token(self, request: IRequest, key: str) -> bytes:
        """Revoke one of the caller's tokens, by key or by the token itself (npm token revoke)."""
        identity = await self.token_owner(request)
        if identity.readonly:
            raise PermissionDenied("a read-only token cannot revoke tokens")
        if not await self.accounts.tokens.revoke_owned(identity.user, unquote(key)):
            raise NotFound("no such token of yours")
        request.setResponseCode(204)
        return b""

    @app.route("/-/npm/v1/security/advisories/bulk", methods=["POST"])
    @app.route("/-/npm/v1/security/audits/quick", methods=["POST"])
    @app.route("/-/npm/v1/security/audits", methods=["POST"])
    async def audit(self, request: IRequest) -> bytes:
        """Audits go to the upstream; with it down they fail at once (npm install goes on)."""
        self.accounts.require_read(await self.identify(request))
        request.content.seek(0)
        body = request.content.read()
        headers = {"Content-Type": header(request, "content-type") or "application/json"}
        if header(request, "content-encoding"):
            headers["Content-Encoding"] = header(request, "content-encoding")
        status, content, content_type = await self.mirror.forward(request.path.decode("ascii"), body, headers)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % len(content))
        return content

    @app.route("/-/user/<userid>", methods=["GET"])
    async def user_profile(self, request: IRequest, userid: str) -> bytes:
        """``{name, email}`` of a registered user (npm owner add checks the user exists)."""
        identity = await self.identify(request)
        if identity.user is None:
            raise AuthenticationRequired("log in to look up users")
        name = userid[len(USER_PREFIX) :] if userid.startswith(USER_PREFIX) else None
        if name is None or name not in self.accounts.users:
            raise NotFound("no such user")
        return json_response(request, 200, await self.accounts.profile(name))

    @app.route("/-/v1/search", methods=["GET"])
    async def search_packages(self, request: IRequest) -> bytes:
        """npm search: local and mirrored packages the caller may read."""
        identity = await self.identify(request)
        self.accounts.require_read(identity)
        query = searching.parse_query(request.args)
        entries = await self.search.entries() if self.search is not None else []
        answer = searching.search(
            entries, query, lambda name: self.policy.allows("access", name, identity.user),
            self.base_url(request), time.time(),
        )
        request.setHeader(b"Cache-Control", b"private, no-cache")
        return json_response(request, 200, answer)

    @app.route("/-/_view/starredByUser", methods=["GET"])
    async def starred_by_user(self, request: IRequest) -> bytes:
        """The packages a user starred (npm stars): ``?key="<user>"``."""
        identity = await self.identify(request)
        self.accounts.require_read(identity)
        key = (request.args.get(b"key") or [b""])[0].decode("utf-8", "replace")
        user = key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key
        rows = []
        for name in await self.registry.local_names():
            if not self.policy.allows("access", name, identity.user):
                continue
            document = await self.registry.document(name)
            if document is not None and packument.starred_by(document, user):
                rows.append({"value": name})
        return json_response(request, 200, {"rows": rows})

    @app.route("/-/package/<path:ignored>", methods=["GET", "PUT", "DELETE"])
    async def package_action(self, request: IRequest, ignored: str) -> bytes:
        """dist-tags, collaborators and visibility of a package."""
        target = names.parse_package_action(request.path)
        method = request.method.decode("ascii")
        if method != "GET" and target.kind != "dist-tags":
            raise_unsupported(method, target.kind)
        if method == "GET":
            return await self.package_facts(request, target)
        if target.argument is None:
            raise_unsupported(method, "dist-tags list")
        user = self.accounts.require_write(await self.identify(request))
        self.require_rule("publish", target.name, user)
        tag = target.argument
        if method == "PUT":
            version = await self.json_body(request)  # a JSON string: "1.2.3"
            change = partial(packument.set_dist_tag, tag=tag, version=version)
        else:
            change = partial(packument.remove_dist_tag, tag=tag)
        await self.registry.change(target.name, user, None, change)
        self.touched(target.name)
        return json_response(request, 200, {"ok": True})

    async def package_facts(self, request: IRequest, target: names.PackagePath) -> bytes:
        """GET dist-tags (any package served), collaborators and visibility (local ones)."""
        identity = await self.identify(request)
        self.accounts.require_read(identity)
        if target.kind == "dist-tags":
            if target.argument is not None:
                raise_unsupported("GET", "dist-tag")
            self.hide_unreadable(target.name, identity, f"package not found: {target.name}")
            document = await self.mirror.document(target.name, self.base_url(request))
            return json_response(request, 200, document.get("dist-tags", {}))
        self.hide_unreadable(target.name, identity, f"{target.name} is not published on this registry")
        document = await self.registry.document(target.name)
        if document is None:
            raise NotFound(f"{target.name} is not published on this registry")
        if target.kind == "visibility":
            return json_response(request, 200, {"public": False})
        names_ = [m["name"] for m in document.get("maintainers", []) if isinstance(m, dict) and "name" in m]
        return json_response(request, 200, {n: "read-write" for n in names_})

    # Runtime settings (nopard.settings.overrides) ------------------------------------
    # The JSON API of the settings page: GET and PUT /-/nopard/settings, admins only.

    async def require_admin(self, request: IRequest) -> Identity:
        """An admin as the web pages count them (ui.is_admin): 401 when anonymous, 403 for others."""
        identity = await self.identify(request)
        if identity.user is None:
            raise AuthenticationRequired("log in as an admin to see or change settings")
        if not is_admin(self.policy, identity.user):
            raise PermissionDenied(f"{identity.user} is not an admin (see admins in NOPARD_CONFIG)")
        return identity

    def runtime_settings(self) -> Any:
        """The Overrides service; 404 when nopard was built without one."""
        if self.overrides is None:
            raise NotFound("runtime settings are not enabled")
        return self.overrides

    @app.route("/-/nopard/settings", methods=["GET"])
    async def get_settings(self, request: IRequest) -> bytes:
        """The settings an admin may change at runtime: effective value, default, source, help."""
        overrides = self.runtime_settings()
        await self.require_admin(request)
        return json_response(request, 200, {"settings": overrides.entries()})

    @app.route("/-/nopard/settings", methods=["PUT"])
    async def put_settings(self, request: IRequest) -> bytes:
        """Change settings at once, on every instance: ``{"values": {name: text}}``; "" removes one.

        A bad value or name answers 400 naming the setting, and nothing changes.
        """
        overrides = self.runtime_settings()
        identity = await self.require_admin(request)
        if identity.readonly:
            raise PermissionDenied("a read-only token cannot change settings")
        body = await self.json_body(request)
        values = body.get("values") if isinstance(body, dict) else None
        if not isinstance(values, dict):
            raise InvalidInput('the body must be {"values": {"name": "text", ...}}')
        try:
            entries = await overrides.change(values, identity.user)
        except ConfigError as error:
            return json_response(request, 400, {"error": str(error), "setting": getattr(error, "setting", None)})
        return json_response(request, 200, {"settings": entries})

    # End of runtime settings -------------------------------------------------

    # Packages -------------------------------------------------------------

    @app.route("/<path:ignored>", methods=["GET", "PUT", "DELETE"])
    async def package(self, request: IRequest, ignored: str) -> bytes | None:
        """Every package path; which one is parsed from the raw path."""
        if request.path.startswith(b"/-/"):
            raise RouteNotFound()
        target = names.parse_package_path(request.path)
        method = request.method.decode("ascii")
        if method == "HEAD":
            method = "GET"
        handler = self._package_handlers.get((method, target.kind))
        if handler is None:
            raise_unsupported(method, target.kind)
        return await handler(self, request, target)

    def served_as(self, request: IRequest, status: str) -> None:
        """Tell the client and the access log how the answer was served."""
        request.cache_status = status
        request.setHeader(b"X-Nopard-Cache", status)

    def document_cache_control(self, status: str) -> str:
        """Private documents are revalidated each time; mirrored ones kept for META_TTL."""
        if status == "LOCAL":
            return PRIVATE_DOCUMENT_CACHE
        current = self.settings.current
        visibility = "private" if current.auth_read else "public"
        return f"{visibility}, max-age={int(current.meta_ttl)}"

    async def get_document(self, request: IRequest, target: names.PackagePath) -> bytes:
        if wants_html(request):  # a browser: the package's page
            request.setResponseCode(302)
            request.setHeader(b"Location", package_location(self.ui.root(request), target.name).encode())
            return b""
        identity = await self.identify(request)
        self.accounts.require_read(identity)
        self.hide_unreadable(target.name, identity, f"package not found: {target.name}")
        prepared, status = await self.mirror.packument(target.name, self.base_url(request))
        self.served_as(request, status)
        return send_prepared(request, prepared, self.document_cache_control(status))

    async def get_version(self, request: IRequest, target: names.PackagePath) -> bytes:
        identity = await self.identify(request)
        self.accounts.require_read(identity)
        self.hide_unreadable(target.name, identity, f"package not found: {target.name}")
        document = await self.mirror.document(target.name, self.base_url(request))
        return json_response(request, 200, packument.resolve_version(document, target.argument))

    async def get_tarball(self, request: IRequest, target: names.PackagePath) -> bytes:
        identity = await self.identify(request)
        self.accounts.require_read(identity)
        self.hide_unreadable(
            target.name, identity, f"tarball not found: {target.name}/-/{target.argument}", target.argument
        )
        blob, status = await self.mirror.tarball(target.name, target.argument)
        self.served_as(request, status)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % blob.size)
        request.setHeader(b"Cache-Control", TARBALL_CACHE)
        if request.method == b"HEAD":
            blob.close()
            return b""
        await blob.send_to(request)
        return b""

    async def put_document(self, request: IRequest, target: names.PackagePath) -> bytes:
        """Publish (a body with _attachments), else star, owner change or a document sent back."""
        user = self.accounts.require_write(await self.identify(request))
        body = await self.json_body(request)
        if isinstance(body, dict) and "_attachments" in body:
            return await self.publish(request, target, user, body)
        kind = packument.change_kind(body)
        revision = target.argument if target.kind == "revision" else None
        if kind == "star":
            self.require_rule("access", target.name, user)
            document = await self.star(target.name, user, revision, body)
        elif kind == "owners":
            self.require_rule("publish", target.name, user)
            document = await self.change_owners(target.name, user, revision, body)
        else:
            self.require_rule(await self.removal_action(target.name, body), target.name, user)
            document = await self.registry.unpublish_versions(target.name, user, revision, body)
        self.touched(target.name)
        return json_response(
            request, 200, {"ok": True, "success": True, "id": target.name, "rev": document["_rev"]}
        )

    async def publish(
        self, request: IRequest, target: names.PackagePath, user: str | None, body: dict
    ) -> bytes:
        """Store a new version (npm publish)."""
        if not self.policy.allows("publish", target.name, user):
            raise PermissionDenied(f"{user or 'anonymous'} may not publish {target.name} on this registry")
        publication = await self._run(parse_publication, target.name, body)
        publisher = await self.accounts.profile(user) if user else {"name": "anonymous", "email": ""}
        document = await self.registry.publish(publication, publisher, check_owner=user is not None)
        self.touched(target.name)
        return json_response(
            request, 201, {"ok": True, "success": True, "id": target.name, "rev": document["_rev"]}
        )

    async def star(self, name: str, user: str | None, revision: str | None, body: dict) -> dict:
        """Star or unstar for the caller only; any reader who is logged in may."""
        if user is None:
            raise AuthenticationRequired("log in to star packages")
        return await self.registry.change(
            name, user, revision, lambda d: packument.set_star(d, user, body), maintainer=False
        )

    async def change_owners(self, name: str, user: str | None, revision: str | None, body: dict) -> dict:
        """Replace the maintainers (npm owner add/rm); each must be a registered user."""
        unknown = [n for n in packument.maintainer_names(body) if n not in self.accounts.users]
        if unknown:
            raise InvalidInput(f"no such user: {', '.join(unknown)}")
        profiles = [await self.accounts.profile(n) for n in packument.maintainer_names(body)]
        return await self.registry.change(
            name, user, revision, lambda d: packument.set_maintainers(d, profiles)
        )

    async def removal_action(self, name: str, body: Any) -> str:
        """``unpublish`` when a document sent back drops stored versions, else ``publish`` (deprecate)."""
        if not self.policy.enabled:
            return "publish"
        document = await self.registry.document(name)
        sent = body.get("versions") if isinstance(body, dict) else None
        stored = document.get("versions", {}) if isinstance(document, dict) else {}
        if isinstance(sent, dict) and any(version not in sent for version in stored):
            return "unpublish"
        return "publish"

    async def delete_revision(self, request: IRequest, target: names.PackagePath) -> bytes:
        """Unpublish a whole package (npm unpublish --force)."""
        user = self.accounts.require_write(await self.identify(request))
        self.require_rule("unpublish", target.name, user)
        await self.registry.unpublish(target.name, user, target.argument)
        self.touched(target.name)
        return json_response(request, 200, {"ok": True, "success": True})

    async def delete_tarball(self, request: IRequest, target: names.PackagePath) -> bytes:
        """The last step of a one-version unpublish: the removed version's tarball."""
        user = self.accounts.require_write(await self.identify(request))
        self.require_rule("unpublish", target.name, user)
        await self.registry.remove_tarball(target.name, user, target.argument)
        return json_response(request, 200, {"ok": True, "success": True})

    _package_handlers = {
        ("GET", "document"): get_document,
        ("GET", "version"): get_version,
        ("GET", "tarball"): get_tarball,
        ("PUT", "document"): put_document,
        ("PUT", "revision"): put_document,
        ("DELETE", "revision"): delete_revision,
        ("DELETE", "tarball-revision"): delete_tarball,
    }


class Utf8PathGuard(Resource):
    """Answers a path that is not UTF-8 once decoded with a JSON 400 (Klein's is HTML)."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return json_response(request, 400, {"error": "the path is not valid UTF-8"})
        return self._inner.render(request)


def raise_unsupported(method: str, kind: str) -> None:
    """Refuse a package route nopard does not serve (yet) with a clear error."""
    raise MethodNotAllowed(description=f"{method} on a package {kind} is not supported")
