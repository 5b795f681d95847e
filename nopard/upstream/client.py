"""Clients of upstream registries: conditional document GETs, streamed tarballs,
forwarded audits; each upstream has its own breaker and shares one HTTP client.

The HTTP client (a treq HTTPClient) is given, so tests hand in one bound to a
fake upstream and the service builds the real one (proxy, TLS policy, pool).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as TwistedTimeout
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from nopard.domain.errors import UpstreamUnavailable
from nopard.domain.urls import without_credentials
from nopard.ops.metrics import Metrics, add_upstream_wait
from nopard.settings.config import LiveSettings
from nopard.upstream.breaker import Admission, Breaker

DOCUMENT_ACCEPT = "application/json"


@dataclass(frozen=True)
class Fetched:
    """An upstream answer to a document request: 200 (body), 304 or 404."""

    status: int
    body: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None


class _Call:
    """One call to the upstream: the breaker's admission of its request, once it was sent."""

    __slots__ = ("admission",)

    def __init__(self) -> None:
        self.admission: Admission | None = None


def document_url(base_url: str, name: str) -> str:
    """The upstream URL of a package document (``@scope%2fname`` for scoped names)."""
    return f"{base_url.rstrip('/')}/{quote(name, safe='@')}"


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@``, and those as a Basic Authorization header (or None).

    An upstream URL may carry them (``https://user:pass@host/``, as npm's config allows);
    Twisted's agent would take them for part of the host name, and they must never be shown.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return urlunsplit(parts._replace(netloc=host)), "Basic " + base64.b64encode(pair).decode("ascii")


class Upstream:
    """One upstream registry, reached through the shared HTTP client."""

    def __init__(
        self,
        base_url: str,
        http: HTTPClient,
        settings: LiveSettings,
        clock: IReactorTime,
        token: str | None = None,
        log: Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.base_url, self._basic = split_credentials(base_url.rstrip("/"))
        # What operators are shown: the URL, with "<redacted>@" where it carries credentials.
        self.shown_url = without_credentials(base_url.rstrip("/"))
        self._host = urlsplit(self.base_url).netloc
        self._http = http
        self._settings = settings
        self._clock = clock
        self._token = token
        self.breaker = Breaker(clock.seconds, probe_interval=settings.current.probe_interval)
        self.requests_made = 0
        self.paused_until = 0.0  # set by a 429 with Retry-After
        self._awaiting: dict[object, float] = {}  # requests sent, no answer yet -> when sent
        self.last_answer_at: float | None = None
        # Requests and answers in the order they happened (a clock may not move between them):
        # each request waiting -> its number when sent; the number of the last answer.
        self._sequence = 0
        self._sent_as: dict[object, int] = {}
        self._answered_as = 0
        self.answers = 0  # answers received so far (of any status)
        self._log = log or Logger()
        self._metrics = metrics

    @contextmanager
    def _call(self, kind: str) -> Iterator[_Call]:
        """One upstream call: its time recorded (metrics, the request waiting on it), its probe ended.

        Whatever ends the call (an answer, a failure, a 429, a cancel, an
        error of nopard's own), a probe it was is over afterwards.
        """
        call = _Call()
        started = self._clock.seconds()
        try:
            yield call
        except CancelledError:
            raise  # the caller gave up: not the upstream's failure, nothing to count
        except Exception as error:
            reason = getattr(error, "reason", "error")
            if reason != "breaker_open":  # nothing was sent
                self._observe(kind, started, reason)
            raise
        else:
            self._observe(kind, started, None)
        finally:
            self.breaker.end(call.admission)

    def _observe(self, kind: str, started: float, error: str | None) -> None:
        seconds = self._clock.seconds() - started
        add_upstream_wait(seconds)
        if self._metrics is not None:
            self._metrics.upstream_call(self.base_url, kind, seconds, error)

    def silent_for(self) -> float:
        """How long the upstream has left a request unanswered (0 if it answered since)."""
        if not self._awaiting:
            return 0.0
        oldest = min(self._awaiting.values())
        if self.last_answer_at is not None and self.last_answer_at >= oldest:
            return 0.0
        return self._clock.seconds() - oldest

    def unanswered(self) -> bool:
        """Whether the upstream's health is unknown: a request waits on it, and nothing was answered
        since that request was sent (it may be answering as usual, or have gone dark)."""
        return bool(self._sent_as) and min(self._sent_as.values()) > self._answered_as

    def _sent(self, request: object) -> None:
        self._awaiting[request] = self._clock.seconds()
        self._sequence += 1
        self._sent_as[request] = self._sequence

    def _over(self, request: object, answered: bool) -> None:
        del self._awaiting[request]
        del self._sent_as[request]
        if answered:
            self.answers += 1
            self._sequence += 1
            self._answered_as = self._sequence
            self.last_answer_at = self._clock.seconds()

    def _failed(self) -> None:
        was_open = self.breaker.is_open
        self.breaker.failed()
        if self.breaker.is_open and not was_open:
            self._log.warn(
                "upstream {url} is down after {failures} failures: serving from nopard's copies",
                url=self.base_url, failures=self.breaker.failures, event="upstream-down",
            )

    def _succeeded(self) -> None:
        was_open = self.breaker.is_open
        self.breaker.succeeded()
        if was_open:
            self._log.warn("upstream {url} is back", url=self.base_url, event="upstream-up")

    def _headers(self, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": self._settings.current.user_agent, **(extra or {})}
        if urlsplit(url).netloc == self._host:
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            elif self._basic:
                headers["Authorization"] = self._basic
        return headers

    async def _request(
        self, call: _Call, method: str, url: str, timeout: float, urgent: bool = False, **kwargs: Any,
    ) -> Any:
        """One request through the breaker; raises UpstreamUnavailable on failure.

        ``urgent``: nothing can be served without it (a name never stored), so
        while the breaker is open it is the probe whenever none is in flight,
        without waiting for the probe timer. A request its caller cancels
        raises CancelledError and counts as no failure: the upstream did
        nothing wrong (a timeout is a failure).
        """
        call.admission = self.breaker.admit(urgent=urgent)
        if call.admission is None:
            raise _unavailable(f"the upstream {self.base_url} is unreachable (breaker open)", "breaker_open")
        self.requests_made += 1
        waiting = object()
        self._sent(waiting)
        # The timeout on the injected clock, like every other wait of nopard's (treq only calls
        # callLater on it: the agent it would otherwise build is given).
        sent = self._http.request(method, url, timeout=timeout, reactor=cast(Any, self._clock), **kwargs)
        caller_cancelled: list[bool] = []

        def cancel(_: Deferred) -> None:
            caller_cancelled.append(True)
            sent.cancel()

        answer: Deferred = Deferred(cancel)
        sent.chainDeferred(answer)
        try:
            response = await answer
        except Exception as error:  # timeouts, refused, reset, DNS, TLS: all mean "down" here
            self._over(waiting, answered=False)
            if caller_cancelled:
                raise CancelledError() from error
            self._failed()
            words = _describe(error)
            reason = "timeout" if words == _NO_ANSWER else "unreachable"
            raise _unavailable(f"the upstream {self.base_url} {words}", reason) from error
        self._over(waiting, answered=True)
        if response.code == 429:
            delay = retry_after_seconds(_header(response.headers, "retry-after"), self._clock.seconds())
            self.paused_until = max(self.paused_until, self._clock.seconds() + delay)
            await response.text()
            raise _unavailable(f"the upstream {self.base_url} asks to slow down for {delay:.0f} s", "rate_limited")
        if response.code >= 500:
            self._failed()
            await response.text()  # drain, so the connection can be reused
            raise _unavailable(f"the upstream {self.base_url} answered {response.code}", "http_5xx")
        return response

    async def document(
        self, name: str, etag: str | None = None, timeout: float | None = None, urgent: bool = False,
    ) -> Fetched:
        """GET the full document of ``name``, conditionally on ``etag``.

        ``timeout`` bounds the wait for the answer to begin (default
        NOPARD_UPSTREAM_TIMEOUT); the body, once started, may take that long.
        ``urgent``: nopard has no copy to serve instead (see ``_request``).
        """
        url = document_url(self.base_url, name)
        extra = {"Accept": DOCUMENT_ACCEPT}
        if etag:
            extra["If-None-Match"] = etag
        full = self._settings.current.upstream_timeout
        with self._call("document") as call:
            response = await self._request(call, "GET", url, timeout or full, urgent,
                                           headers=self._headers(url, extra))
            try:
                body = await _with_deadline(treq.content(response), full, self._clock)
            except Exception as error:
                self._failed()
                raise _unavailable(f"the upstream {self.base_url} broke off: {error}", "broken") from error
        self._succeeded()
        if response.code == 304:
            return Fetched(304, etag=etag)
        if response.code in (404, 410) or response.code != 200:
            return Fetched(404)
        return Fetched(
            200,
            body,
            _header(response.headers, "etag"),
            _header(response.headers, "last-modified"),
        )

    async def stream(
        self, url: str, write: Callable[[bytes], None], began: Callable[[int | None], None] | None = None,
    ) -> int:
        """GET ``url`` and pass the body to ``write`` as it arrives; returns the HTTP status.

        ``began`` is told the declared length (None: unknown) of a 200 answer
        before its body. A body that stalls for NOPARD_UPSTREAM_TIMEOUT seconds is aborted.
        """
        timeout = self._settings.current.upstream_timeout
        with self._call("tarball") as call:
            # unbuffered: treq would otherwise keep the whole body in memory.
            response = await self._request(call, "GET", url, timeout, headers=self._headers(url), unbuffered=True)
            if response.code != 200:
                await response.text()
                self._succeeded()
                return response.code
            if began is not None:
                began(response.length if isinstance(response.length, int) else None)
            receiver = _StreamingBody(write, timeout, self._clock)
            response.deliverBody(receiver)
            try:
                await receiver.done
            except Exception as error:
                self._failed()
                raise _unavailable(f"the upstream {self.base_url} broke off a tarball: {error}", "broken") from error
        self._succeeded()
        return 200

    async def search(self, params: dict[str, str], deadline: float, limit: int) -> tuple[int, bytes | None]:
        """GET ``/-/v1/search?<params>``, the whole answer within ``deadline`` seconds; (status, body).

        The body is None past ``limit`` bytes (no search answer is that big).
        """
        return await self.get_bounded("search", f"{self.base_url}/-/v1/search?{urlencode(params)}", deadline, limit)

    async def get_bounded(self, kind: str, url: str, deadline: float, limit: int) -> tuple[int, bytes | None]:
        """GET ``url`` (a JSON answer: a search, a changes feed's page), the whole answer within ``deadline``
        seconds; (status, body), the body None past ``limit`` bytes (read no further)."""
        started = self._clock.seconds()
        with self._call(kind) as call:
            headers = self._headers(url, {"Accept": "application/json"})
            response = await self._request(call, "GET", url, deadline, headers=headers)
            chunks: list[bytes] = []
            held = [0]

            def keep(data: bytes) -> None:
                chunks.append(data)
                held[0] += len(data)
                if held[0] > limit:
                    raise _TooBig()

            receiver = _StreamingBody(keep, deadline, self._clock)
            # The whole answer within the deadline, however it trickles in.
            timer = self._clock.callLater(max(deadline - (self._clock.seconds() - started), 0.001), receiver._stalled)
            response.deliverBody(receiver)
            try:
                await receiver.done
            except _TooBig:
                chunks = []
            except Exception as error:
                self._failed()
                raise _unavailable(f"the upstream {self.base_url} broke off a {kind}: {error}", "broken") from error
            finally:
                if timer.active():
                    timer.cancel()
        self._succeeded()
        return response.code, (b"".join(chunks) if chunks else None)

    async def forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """Pass a request (an audit) through; returns status, body and content type."""
        url = self.base_url + path
        timeout = self._settings.current.upstream_timeout
        with self._call("forward") as call:
            response = await self._request(call, method, url, timeout, data=body, headers=self._headers(url, headers))
            content = await _with_deadline(treq.content(response), timeout, self._clock)
        self._succeeded()
        return response.code, content, _header(response.headers, "content-type") or "application/json"


def retry_after_seconds(value: str | None, now: float, default: float = 60.0) -> float:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return min(float(value), 3600.0)
    try:
        moment = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return default
    return min(max(moment - now, 0.0), 3600.0)


_NO_ANSWER = "did not answer in time"


def _unavailable(message: str, reason: str) -> UpstreamUnavailable:
    """An UpstreamUnavailable carrying ``reason``, the metrics' word for the failure.

    Its message reaches clients and the log: an upstream URL's ``user:password@`` is left out.
    """
    error = UpstreamUnavailable(without_credentials(message))
    error.reason = reason  # type: ignore[attr-defined]
    return error


def _describe(error: Exception) -> str:
    """Words for why a request failed, without Twisted's failure reprs."""
    reasons = [f.value for f in getattr(error, "reasons", [])] or [error]
    if any(isinstance(r, (CancelledError, ConnectingCancelledError, TwistedTimeout)) for r in reasons):
        return _NO_ANSWER
    return "is unreachable: " + "; ".join(str(r) or type(r).__name__ for r in reasons)


def _header(headers: Headers, name: str) -> str | None:
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values and isinstance(values[0], bytes) else (values[0] if values else None)


async def _with_deadline(deferred: Deferred, seconds: float, clock: IReactorTime) -> Any:
    """Await ``deferred``, cancelling it after ``seconds``."""
    timer = clock.callLater(seconds, deferred.cancel)
    try:
        return await deferred
    finally:
        if timer.active():
            timer.cancel()


class _TooBig(Exception):
    """A body past the size its caller accepts."""


class _StreamingBody(Protocol):
    """Receives a response body chunk by chunk, aborting when it stalls."""

    def __init__(self, write: Callable[[bytes], None], idle_timeout: float, clock: IReactorTime) -> None:
        self._write = write
        self.done: Deferred = Deferred()
        self._timer = clock.callLater(idle_timeout, self._stalled)
        self._idle_timeout = idle_timeout
        self._failure: Exception | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        if self._timer.active():
            self._timer.reset(self._idle_timeout)
        try:
            self._write(data)
        except Exception as error:  # e.g. disk full: stop receiving
            self._failure = error
            self._stop()

    def _stalled(self) -> None:
        self._failure = TimeoutError("the body stalled")
        self._stop()

    def _stop(self) -> None:
        # A response body's transport is a producer, which ITransport does not say.
        cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self._failure is not None:
            self.done.errback(self._failure)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)
