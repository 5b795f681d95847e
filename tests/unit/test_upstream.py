"""The upstream client against a small in-process server: 429, 5xx, 304, 404."""

from __future__ import annotations

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from nopard.domain.errors import UpstreamUnavailable
from nopard.settings.config import LiveSettings, load_settings
from nopard.upstream.client import Upstream


class Scripted(Resource):
    """Answers each request with the next (status, headers, body) of a script."""

    isLeaf = True

    def __init__(self, answers: list[tuple[int, dict, bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.seen: list[dict] = []

    def render_GET(self, request) -> bytes:
        self.seen.append({k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()})
        status, headers, body = self.answers.pop(0)
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


async def upstream_for(answers) -> tuple[Upstream, Scripted]:
    resource = Scripted(answers)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(resource))
    settings = LiveSettings(load_settings({}, {"NOPARD_USER_AGENT": "nopard-test"}))
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    return Upstream(f"http://127.0.0.1:{port.getHost().port}", http, settings, reactor, token="t0k"), resource


@pytest_twisted.ensureDeferred
async def test_429_pauses_without_tripping_the_breaker() -> None:
    """A 429 with Retry-After sets when to try again and does not count as the upstream being down."""
    upstream, _ = await upstream_for([(429, {"Retry-After": "30"}, b"slow down")] * 3)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable, match="slow down for 30 s"):
            await upstream.document("pkg")
    assert upstream.paused_until >= reactor.seconds() + 29
    assert upstream.breaker.state == "closed"


@pytest_twisted.ensureDeferred
async def test_5xx_trips_the_breaker() -> None:
    """Three 503s in a row open the breaker; a fourth request is not even sent."""
    upstream, resource = await upstream_for([(503, {}, b"")] * 3)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable, match="answered 503"):
            await upstream.document("pkg")
    with pytest.raises(UpstreamUnavailable, match="breaker open"):
        await upstream.document("pkg")
    assert len(resource.seen) == 3


@pytest_twisted.ensureDeferred
async def test_conditional_request_and_headers() -> None:
    """Revalidation sends If-None-Match, the user agent and the scope token; 304 and 404 are told apart."""
    upstream, resource = await upstream_for([(304, {}, b""), (404, {}, b"{}")])
    assert (await upstream.document("@s/pkg", etag='"e1"')).status == 304
    assert (await upstream.document("@s/pkg")).status == 404
    first = resource.seen[0]
    assert first["if-none-match"] == '"e1"' and first["user-agent"] == "nopard-test"
    assert first["authorization"] == "Bearer t0k" and first["accept"] == "application/json"
