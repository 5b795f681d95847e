"""Upstream requests through an HTTP proxy: absolute URIs for http, CONNECT tunnels for https."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
import treq
import twisted.test
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from nopard.upstream.pool import InsecureTLS
from nopard.upstream.proxy import ProxyingAgent
from tests.proxy_server import ForwardProxy


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello over " + (b"tls" if request.isSecure() else b"plain")


async def listen(endpoint, factory) -> int:
    port = await endpoint.listen(factory)
    return port.getHost().port


@pytest_twisted.ensureDeferred
async def test_http_upstream_goes_through_the_proxy() -> None:
    """An http:// upstream request is sent to the proxy as an absolute URI."""
    proxy = ForwardProxy()
    proxy_port = await listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), proxy)
    site_port = await listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Site(Hello()))
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(ProxyingAgent(reactor, "127.0.0.1", proxy_port, InsecureTLS(), pool))
    response = await client.get(f"http://127.0.0.1:{site_port}/pkg")
    assert await treq.content(response) == b"hello over plain"
    assert proxy.requests == [f"GET http://127.0.0.1:{site_port}/pkg"]


@pytest_twisted.ensureDeferred
async def test_https_upstream_is_tunnelled_with_connect() -> None:
    """An https:// upstream request goes through a CONNECT tunnel with TLS inside it."""
    pem = (Path(twisted.test.__file__).parent / "server.pem").read_bytes()
    certificate = PrivateCertificate.loadPEM(pem)
    proxy = ForwardProxy()
    proxy_port = await listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), proxy)
    tls_port = await listen(
        SSL4ServerEndpoint(reactor, 0, certificate.options(), interface="127.0.0.1"), Site(Hello())
    )
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(ProxyingAgent(reactor, "127.0.0.1", proxy_port, InsecureTLS(), pool))
    response = await client.get(f"https://127.0.0.1:{tls_port}/pkg")
    assert await treq.content(response) == b"hello over tls"
    assert proxy.requests == [f"CONNECT 127.0.0.1:{tls_port}"]


@pytest_twisted.ensureDeferred
async def test_certificates_are_checked_unless_ignore_cert() -> None:
    """The default TLS policy refuses a self-signed upstream; NOPARD_IGNORE_CERT's accepts it."""
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    pem = (Path(twisted.test.__file__).parent / "server.pem").read_bytes()
    certificate = PrivateCertificate.loadPEM(pem)
    tls_port = await listen(
        SSL4ServerEndpoint(reactor, 0, certificate.options(), interface="127.0.0.1"), Site(Hello())
    )
    url = f"https://127.0.0.1:{tls_port}/pkg"
    pool = HTTPConnectionPool(reactor, persistent=False)
    checking = HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=pool))
    try:
        await checking.get(url)
    except Exception as error:
        refused = error
    else:
        refused = None
    assert refused is not None
    trusting = HTTPClient(Agent(reactor, contextFactory=InsecureTLS(), pool=pool))
    assert await treq.content(await trusting.get(url)) == b"hello over tls"
