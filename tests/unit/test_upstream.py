"""The upstream client against a small in-process server: 429, 5xx, 304, 404."""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from nopard.domain.errors import UpstreamUnavailable
from nopard.settings.config import LiveSettings, load_settings
from nopard.upstream import client as client_module
from nopard.upstream.client import Upstream
from nopard.upstream.pool import QuietConnectionPool
from tests.unit import mirror_harness


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
    # Quiet as nopard's own pool is: a plain pool's connections log "Stopping factory" when they
    # close, which may be during a later test that watches the global log (test_service.py).
    http = HTTPClient(Agent(reactor, pool=QuietConnectionPool(reactor, persistent=False)))
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


# The breaker's probe, in-process on a Clock ---------------------------------


def _tripped(tmp_path, probe_interval: float = 10.0):
    """A mirror whose fake upstream answers 5xx (three requests open the breaker)."""
    m = mirror_harness.build(tmp_path, mirror_harness.FakeRegistry(
        {"demo": mirror_harness.packument("demo", "1.0.0")}), probe_interval=str(probe_interval))
    upstream = m.parts.mirror.upstream_of("demo")
    m.upstream.fault = "5xx"
    return m, upstream


async def _fails(m, work) -> UpstreamUnavailable:
    with pytest.raises(UpstreamUnavailable) as caught:
        await m.settle(work)
    return caught.value


@pytest_twisted.ensureDeferred
async def test_a_probe_answered_429_ends_and_the_next_probe_closes_the_breaker(tmp_path) -> None:
    """A 429 to the breaker's probe ends the probe: a probe interval later the next request
    goes upstream again, and its success closes the breaker (it used to stay "probing" for good)."""
    m, upstream = _tripped(tmp_path)
    for _ in range(3):
        await _fails(m, upstream.document("demo"))
    assert upstream.breaker.state == "open"
    m.clock.advance(10)
    m.upstream.fault = "429"
    assert "slow down" in (await _fails(m, upstream.document("demo"))).message
    assert upstream.breaker.state == "open" and upstream.breaker.down
    m.upstream.fault = None
    m.clock.advance(10)
    assert (await m.settle(upstream.document("demo"))).status == 200
    assert upstream.breaker.state == "closed" and m.upstream.asked() == 5


@pytest_twisted.ensureDeferred
async def test_a_cancelled_probe_ends_without_counting_a_failure(tmp_path) -> None:
    """A probe its caller cancels (the upstream silent) ends the probe, counts no failure, and
    a probe interval later the next request is the probe."""
    m, upstream = _tripped(tmp_path)
    for _ in range(3):
        await _fails(m, upstream.document("demo"))
    m.clock.advance(10)
    m.upstream.fault = "silent"
    probe = m.started(upstream.document("demo"))
    m.http.flush()
    assert upstream.breaker.state == "probing"
    probe.cancel()
    with pytest.raises(CancelledError):
        await probe
    assert (upstream.breaker.state, upstream.breaker.failures) == ("open", 3)
    m.upstream.fault = None
    m.clock.advance(10)
    assert (await m.settle(upstream.document("demo"))).status == 200
    assert upstream.breaker.state == "closed"


@pytest_twisted.ensureDeferred
async def test_a_probe_whose_answer_cannot_be_read_ends(tmp_path, monkeypatch) -> None:
    """An error of nopard's own while handling the probe's answer ends the probe too."""
    m, upstream = _tripped(tmp_path)
    for _ in range(3):
        await _fails(m, upstream.document("demo"))
    m.clock.advance(10)

    def broken(*_args, **_kwargs):
        raise RuntimeError("broken while reading")

    monkeypatch.setattr(client_module, "retry_after_seconds", broken)
    m.upstream.fault = "429"
    with pytest.raises(RuntimeError):
        await m.settle(upstream.document("demo"))
    assert upstream.breaker.state == "open"
    monkeypatch.undo()
    m.upstream.fault = None
    m.clock.advance(10)
    assert (await m.settle(upstream.document("demo"))).status == 200


@pytest_twisted.ensureDeferred
async def test_credentials_in_the_upstream_url_are_sent_as_basic_auth_and_never_shown() -> None:
    """An upstream URL may carry ``user:password@``: they go to that upstream as Basic auth, and
    the error a client gets (and the log) when it fails names the upstream without them. Before,
    Twisted took them for part of the host name: every request failed, the message showing them."""
    upstream, resource = await upstream_for([(200, {}, b'{"name":"pkg","versions":{}}'), (503, {}, b"")])
    port = upstream.base_url.rsplit(":", 1)[1]
    with_credentials = Upstream(f"http://mirror-user:s3%40cret@127.0.0.1:{port}/", upstream._http,
                                upstream._settings, reactor)
    assert with_credentials.base_url == f"http://127.0.0.1:{port}"
    assert (await with_credentials.document("pkg")).status == 200
    assert resource.seen[0]["authorization"] == "Basic " + base64.b64encode(b"mirror-user:s3@cret").decode()
    with pytest.raises(UpstreamUnavailable) as failed:
        await with_credentials.document("pkg")
    assert "cret" not in failed.value.message and "mirror-user" not in failed.value.message
