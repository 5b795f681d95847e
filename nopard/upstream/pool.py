"""The upstream HTTP client's plumbing: a quiet persistent pool, its closing at stop, proxy and TLS policy."""

from __future__ import annotations

from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    ContentDecoderAgent,
    GzipDecoder,
    HTTPConnectionPool,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from nopard.settings.config import Settings
from nopard.upstream.proxy import ProxyingAgent


@implementer(IStreamClientEndpoint)
class QuietEndpoint:
    """An endpoint whose connections' factories do not log each start and stop."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred:
        """Connect ``protocolFactory``, made quiet first (``noisy`` is a Factory's public switch)."""
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self._endpoint.connect(protocolFactory)

    def __repr__(self) -> str:
        # The pool names each connection after its endpoint.
        return repr(self._endpoint)


class QuietConnectionPool(HTTPConnectionPool):
    """A connection pool whose connections do not log each start and stop (tests/unit/test_service.py)."""

    def getConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Deferred:
        """A cached connection, or a new one made through a QuietEndpoint."""
        return super().getConnection(key, QuietEndpoint(endpoint))


class ClosesConnections(Protocol):
    """A pool, or an agent over pools, whose kept connections can be closed at stop."""

    def closeCachedConnections(self) -> Deferred:
        """Close every kept connection; fires when they are closed."""
        ...


class UpstreamPoolService(Service):
    """Closes the upstream connections at shutdown, so SIGTERM leaves nothing open.

    ``pool``: anything with closeCachedConnections (a pool, or agents.LiveAgent and its pools).
    """

    def __init__(self, pool: ClosesConnections) -> None:
        self.pool = pool

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


@implementer(IPolicyForHTTPS)
class InsecureTLS:
    """NOPARD_IGNORE_CERT: TLS without certificate checks, for upstreams with private CAs."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return CertificateOptions(verify=False)


def upstream_pool(reactor: Any) -> HTTPConnectionPool:
    """A pool of persistent upstream connections (agents.LiveAgent makes one per agent it builds)."""
    pool = QuietConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    return pool


def upstream_agent(settings: Settings, reactor: Any, pool: HTTPConnectionPool) -> Any:
    """The agent upstream requests go through: proxy, TLS policy, gzip decoding."""
    policy = InsecureTLS() if settings.ignore_cert else BrowserLikePolicyForHTTPS()
    if settings.proxy_url:
        proxy = urlsplit(settings.proxy_url)
        # hostname is None only for a URL naming no host ("http://:8080"), which NOPARD_PROXY_URL's check lets
        # through; HostnameEndpoint refuses None (TypeError) as it always did.
        agent: Any = ProxyingAgent(reactor, cast(str, proxy.hostname), proxy.port or 80, policy, pool)
    else:
        agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=settings.upstream_timeout)
    return ContentDecoderAgent(agent, [(b"gzip", GzipDecoder)])
