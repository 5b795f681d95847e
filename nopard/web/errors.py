"""The one table from domain errors to HTTP statuses, and the JSON error answers.

Every route answers a domain error through ``STATUS_OF``: the JSON API via the
handlers ``install_error_handlers`` adds, the HTML forms via ``status_of``.
"""

from __future__ import annotations

from typing import Any, NoReturn, cast
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from nopard.domain.errors import (
    AuthenticationRequired,
    BadCredentials,
    Conflict,
    HistoryGone,
    IntegrityMismatch,
    InvalidInput,
    NopardError,
    NotFound,
    OneTimePasswordRequired,
    PayloadTooLarge,
    PermissionDenied,
    TooManyAttempts,
    UpstreamBadContent,
    UpstreamUnavailable,
    VersionBlocked,
    VersionExists,
    VersionQuarantined,
    VersionWithheld,
)
from nopard.storage import InvalidKey
from nopard.web.responses import json_response
from nopard.web.site import redact_path

STATUS_OF: dict[type[NopardError], int] = {
    InvalidInput: 400,
    AuthenticationRequired: 401,
    BadCredentials: 401,
    OneTimePasswordRequired: 401,
    PermissionDenied: 403,
    VersionExists: 403,
    NotFound: 404,
    VersionQuarantined: 404,  # not yet: as npm answers a version it does not have, with when it comes
    VersionBlocked: 451,  # withheld for a reason the registry gives
    Conflict: 409,
    HistoryGone: 410,
    PayloadTooLarge: 413,
    TooManyAttempts: 429,
    IntegrityMismatch: 400,
    UpstreamBadContent: 502,
    UpstreamUnavailable: 503,
}


def status_of(error: NopardError) -> int:
    """The HTTP status of a domain error (the first class of the table it is an instance of)."""
    return next(status for cls, status in STATUS_OF.items() if isinstance(error, cls))


def set_retry_after(request: IRequest, error: Exception) -> None:
    """Tell a client held back by the login limits when to try again."""
    if isinstance(error, TooManyAttempts):
        request.setHeader(b"Retry-After", b"%d" % error.retry_after)


def error_response(request: IRequest, error: NopardError) -> bytes:
    """The JSON answer to a domain error: its status, its message, and the headers it calls for."""
    status = status_of(error)
    if isinstance(error, OneTimePasswordRequired):
        request.setHeader(b"WWW-Authenticate", b"OTP")  # npm matches the whole challenge: no realm
    elif status == 401:
        scheme = getattr(error, "scheme", "Basic")
        request.setHeader(b"WWW-Authenticate", f'{scheme} realm="nopard"')
    set_retry_after(request, error)
    details = error.details if isinstance(error, VersionWithheld) else {}
    body = json_response(request, status, {**details, "error": error.message})
    if isinstance(error, VersionWithheld):
        # pnpm and yarn print the status line, not the body: the reason goes there too.
        request.setResponseCode(status, reason_phrase(error.message))
    return body


def reason_phrase(text: str) -> bytes:
    """``text`` as an HTTP reason phrase: printable ASCII only, at most 200 characters."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable[:200].encode("ascii")


def cut_short(request: IRequest) -> Deferred[bytes] | None:
    """Close the connection of an answer that already began; None when nothing was sent yet.

    An error found once the body is under way (a streamed tarball that failed
    its checksums, say) cannot be told with a status any more, and appending an
    error body or finishing would let the client take a cut body for a whole
    one: the connection is closed before the declared length (or dropped before
    the chunked terminator), so the client reports an error and keeps nothing.
    The Deferred fires once the connection is gone, so the request is never
    finished (its access line is the one it would get for a client hanging up).
    """
    if not getattr(request, "startedWriting", False):
        return None
    # A twisted.web Request: its notifyFinish fails once the connection is gone (IRequest omits it).
    gone: Deferred[bytes] = cast(Any, request).notifyFinish().addBoth(lambda _: b"")
    transport = getattr(request, "transport", None)
    # A declared length: closing after what was sent tells the client the body is short. Chunked:
    # the terminator must never go out, so the connection is dropped at once.
    chunked = getattr(request, "chunked", False)
    close = getattr(transport, "abortConnection" if chunked else "loseConnection", None)
    if close is not None:
        close()
    return gone


def error_answer(request: IRequest, failure: Failure, log: Logger) -> bytes | Deferred[bytes]:
    """The JSON answer to whatever a route raised: the one mapping Klein's handlers and the hot
    routes (nopard.web.hot) share. Domain errors by STATUS_OF, unknown routes and werkzeug's
    merge-slashes redirects 404, methods 405, bad names 400, anything else 500 and logged.
    An answer already under way is cut short instead (``cut_short``: a Deferred, never finished)."""
    error = failure.value
    if isinstance(error, NopardError):
        cut = cut_short(request)
        return cut if cut is not None else error_response(request, error)
    if isinstance(error, (RouteNotFound, RequestRedirect)):
        # werkzeug answers "//" in a path, or a missing trailing slash, by raising a redirect to the
        # merged path (built from the Host header): no client of nopard needs one, so not found.
        return json_response(request, 404, {"error": "not found"})
    if isinstance(error, MethodNotAllowed):
        return json_response(request, 405, {"error": "method not allowed here"})
    if isinstance(error, InvalidKey):
        return json_response(request, 400, {"error": "invalid name"})
    path = redact_path(request.uri.decode("latin-1"))
    log.failure("unexpected error on {path}", failure, path=path, event="error")
    cut = cut_short(request)
    if cut is not None:
        return cut
    return json_response(request, 500, {"error": "internal error; see the registry's log"})


def install_error_handlers(app: Klein, log: Logger) -> None:
    """JSON answers for domain errors, unknown routes and methods, bad names, and anything else."""

    @app.handle_errors(Exception)
    def any_error(request: IRequest, failure: Failure) -> bytes | Deferred[bytes]:
        return error_answer(request, failure, log)


def raise_unsupported(method: str, kind: str) -> NoReturn:
    """Refuse a package route nopard does not serve (yet) with a clear error."""
    raise MethodNotAllowed(description=f"{method} on a package {kind} is not supported")


class Utf8PathGuard(Resource):
    """Answers a path that is not UTF-8 once decoded with a JSON 400 (Klein's is HTML)."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        """Refuse a path that is not UTF-8, else let the routes answer."""
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return json_response(request, 400, {"error": "the path is not valid UTF-8"})
        return self._inner.render(request)
