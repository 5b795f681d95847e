"""The HTTP site: a request that enforces its route's body limit while the body arrives,
a count of the body bytes in flight per client address and in all, and one access-log line
(and the request metrics) per request.
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from nopard.auth.limits import address_group
from nopard.ops.access_log import AccessLog
from nopard.ops.logs import LogService
from nopard.ops.metrics import Metrics, UpstreamWait, request_upstream_wait, route_of
from nopard.settings.config import LiveSettings
from nopard.web.bodies import BodyBudget, BodyLimit, BudgetRefusal, body_limit

_SECRET_IN_PATH = re.compile(r"(/-/user/token/|/-/npm/v1/tokens/token/|/-/v1/login/|/-/v1/done/)[^/?#]+")


# The reason phrases of the refusals written before a body is in (Twisted's table lacks 429).
_REASONS = {413: b"Payload Too Large", 429: b"Too Many Requests", 503: b"Service Unavailable"}


def redact_path(path: str) -> str:
    """The path with any token in it replaced, so logs never carry one."""
    if "/-/user/" not in path and "/-/npm/" not in path and "/-/v1/" not in path:
        return path  # no token path: most logged paths (a package's documents and tarballs)
    return _SECRET_IN_PATH.sub(r"\1<redacted>", path)


def log_user(request: IRequest, user: str | None) -> None:
    """Name the account on the request's access line."""
    # A NopardRequest attribute, which IRequest does not declare (any request object takes it).
    request.user = user  # type: ignore[attr-defined]


def log_route(request: IRequest, route: str) -> None:
    """Name the metrics route of a request whose handler parsed its path (see ``route_of``)."""
    request.route = route  # type: ignore[attr-defined]  # a NopardRequest attribute, as for log_user


class NopardChannel(http.HTTPChannel):
    """An HTTP channel that keeps the line it is handling, so a request knows its own request line.

    Twisted gives a request its method and path only once its body is in;
    a body refused while it arrives is logged with them all the same.
    """

    line = b""
    _host: Any = None

    def lineReceived(self, line: bytes) -> None:
        """Keep ``line`` for the request it may create, then parse it as Twisted does."""
        self.line = line
        super().lineReceived(line)

    def getHost(self) -> Any:
        """The connection's local address, asked of the socket once (Twisted asks for every request)."""
        if self._host is None:
            self._host = super().getHost()
        return self._host


class NopardRequest(server.Request):
    """A request that refuses an oversized body before buffering it, and a body that does
    not fit the bytes in flight.

    The limit is its route's (``bodies.body_limit``, from the request line), checked
    against Content-Length as soon as the headers are in, and against the bytes
    received as they arrive; an oversized request gets a 413 JSON answer at once and
    its connection is closed, so at most the limit (and one read) is ever buffered.
    Each piece of the body is also counted in the site's ``BodyBudget`` under the peer's
    address group before it is kept (past the budget: 429 for the address, 503 in all,
    with Retry-After, connection closed); the count is released when the request is
    answered, refused or its connection lost.
    """

    def __init__(self, channel: http.HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # Made by the channel from its request line: the method and path, for the access log.
        words = getattr(channel, "line", b"").split(b" ")
        self.request_line = (words[0] or b"-", words[1]) if len(words) == 3 else (b"-", b"-")
        self.started = self._site().clock.seconds()
        self.body_received = 0
        self.body_limit: BodyLimit | None = None
        self.body_held = 0  # bytes of the body counted in ``budget``
        # The site's; kept here, as the request loses its channel before it is told it finished.
        self.budget: BodyBudget = self._site().body_budget
        self.client_group = ""  # the peer's address_group, set as the headers arrive
        self.rejected = False
        # The account, for the access log; Twisted's own bytes ``user`` (filled by getUser) goes unused.
        self.user: str | None = None  # type: ignore[assignment]
        self.cache_status: str | None = None
        #: The metrics route, when the handler knows it (``route_of`` parses the path again otherwise).
        self.route: str | None = None
        self.upstream_wait = UpstreamWait()
        worker = self._site().worker
        if worker is not None:
            self.responseHeaders.setRawHeaders(b"x-nopard-worker", [worker])

    def __repr__(self) -> str:
        # Twisted's repr shows the URI, which may carry a token (logout).
        uri = getattr(self, "uri", None)
        shown = redact_path(uri.decode("latin-1")) if isinstance(uri, bytes) else "-"
        return f"<{type(self).__name__} at 0x{id(self):x} method={getattr(self, 'method', None)!r} uri={shown}>"

    def _site(self) -> NopardSite:
        channel: Any = self.channel  # Site.buildProtocol sets .site, which HTTPChannel does not declare
        return channel.site

    def _limit(self) -> BodyLimit:
        if self.body_limit is None:
            method, path = self.request_line
            self.body_limit = body_limit(method, path, self._site().settings.current.max_body_size)
        return self.body_limit

    def gotLength(self, length: int | None) -> None:
        """Decide the route's limit (the headers are in); refuse at once a declared length above it."""
        # Twisted parses a POSTed form body into ``args`` (its flag, read in requestReceived).
        self._parsePOSTFormSubmission = self._limit().forms
        # The connection's peer, never X-Forwarded-For (which any client may write).
        self.client_group = address_group(getattr(self.getClientAddress(), "host", None))
        if length is not None and length > self._limit().size:
            self._refuse_oversized()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Count what arrives; refuse once it passes the limit, or does not fit the bytes in flight."""
        if self.rejected:
            return
        self.body_received += len(data)
        if self.body_received > self._limit().size:
            self._refuse_oversized()
            return
        refusal = self.budget.take(
            self.client_group, len(data), self._site().settings.current.max_body_size, self._limit().lists)
        if refusal is not None:
            self._refuse_busy(refusal)
            return
        if not self.body_held:
            # Answered (finish) or connection lost (errback): either way its body's bytes go.
            self.notifyFinish().addBoth(lambda _: self._release_body())
        self.body_held += len(data)
        super().handleContentChunk(data)

    def _release_body(self) -> None:
        if self.body_held:
            self.budget.release(self.client_group, self.body_held, self._limit().lists)
            self.body_held = 0

    def process(self) -> None:
        """Route the request, unless it was already refused.

        Upstream calls made for it (in coroutines started from here, which copy
        this context) add their time to ``upstream_wait``.
        """
        if self.rejected:
            return
        token = request_upstream_wait.set(self.upstream_wait)
        try:
            super().process()
        finally:
            request_upstream_wait.reset(token)

    def _refuse_oversized(self) -> None:
        limit = self._limit()
        self._refuse(413, f"request body is larger than {limit.size} bytes ({limit.name})")

    def _refuse_busy(self, refusal: BudgetRefusal) -> None:
        self._refuse(refusal.status, refusal.message, b"Retry-After: %d\r\n" % refusal.retry_after)

    def _refuse(self, status: int, message: str, headers: bytes = b"") -> None:
        """Answer ``status`` with ``message`` as JSON now, while the body is still arriving, and close."""
        self.rejected = True
        self.content = BytesIO()
        self._release_body()
        # No "100 Continue" after the refusal: the client must not send the body.
        self.requestHeaders.removeHeader(b"expect")
        body = orjson.dumps({"error": message})
        head = (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            + b"Content-Type: application/json\r\n" + headers
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        transport = self.channel.transport
        assert transport is not None  # the body is still arriving on it
        transport.write(head + body)
        self._site().log_refusal(self, status, len(body))
        transport.loseConnection()


class NopardSite(server.Site):
    """A Site that logs through twisted.logger, one line per request."""

    requestFactory = NopardRequest
    # Twisted's stubs type this as its HTTP/1-or-2 wrapper; a plain HTTPChannel subclass serves HTTP/1.1.
    protocol = NopardChannel  # type: ignore[assignment]

    def __init__(
        self, resource: IResource, settings: LiveSettings, clock: IReactorTime, log: Logger,
        metrics: Metrics | None = None, worker: str | None = None, lines: LogService | None = None,
    ) -> None:
        """``log`` takes the access events, unless ``lines`` (the LogService) takes them as lines (AccessLog)."""
        super().__init__(resource)
        #: Which worker of a supervisor this is (NOPARD_WORKERS), answered in X-Nopard-Worker; None: no supervisor.
        self.worker = worker.encode() if worker else None
        self.settings = settings
        self.clock = clock
        self._access = AccessLog(log, lines)
        self._metrics = metrics
        self.displayTracebacks = False
        # The body bytes its requests hold, per client address and in all (see NopardRequest).
        self.body_budget = BodyBudget()

    def log(self, request: NopardRequest) -> None:  # type: ignore[override]  # requestFactory's only
        """Emit the access line of a finished request."""
        self._emit(
            request,
            request.method.decode("latin-1"),
            request.uri.decode("latin-1"),
            request.code,
            request.sentLength,
        )

    def log_refusal(self, request: NopardRequest, status: int, length: int) -> None:
        """Emit the access line of a request refused before it was read whole."""
        method, path = request.request_line
        self._emit(request, method.decode("latin-1"), path.decode("latin-1"), status, length)

    def _emit(self, request: NopardRequest, method: str, path: str, status: int, length: int) -> None:
        address = request.getClientAddress()
        seconds = self.clock.seconds() - request.started
        fields = [
            ("client", getattr(address, "host", "-")),
            ("user", request.user or "-"),
            ("method", method),
            ("path", redact_path(path)),
            ("status", status),
            ("bytes", length),
            ("ms", round(seconds * 1000, 1)),
            ("cache", request.cache_status or "-"),
            ("upstream_ms", request.upstream_wait.ms),
        ]
        if self.worker is not None:
            fields.append(("worker", self.worker.decode()))
        self._access.write(fields)
        if self._metrics is not None:
            route = request.route or route_of(method, path, request.getHeader("accept"))
            self._metrics.request_finished(route, method, status, seconds, request.cache_status)
