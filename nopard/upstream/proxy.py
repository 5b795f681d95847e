"""Upstream traffic through an HTTP proxy (NOPARD_PROXY_URL).

http:// URLs go to the proxy as absolute-URI requests (Twisted's ProxyAgent);
https:// URLs go through a CONNECT tunnel, with TLS to the upstream inside it,
so the proxy never sees the traffic and the upstream's certificate is checked
as usual.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTCP, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ProxyAgent
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

MAX_PROXY_HEADER = 16 * 1024


class TunnelError(ConnectionError):
    """The proxy refused or broke the CONNECT."""


@implementer(IStreamClientEndpoint)
class ConnectTunnelEndpoint:
    """Connects to ``host:port`` through an HTTP proxy's CONNECT method."""

    def __init__(self, proxy: IStreamClientEndpoint, host: str, port: int) -> None:
        self._proxy = proxy
        self._target = f"{host}:{port}".encode("idna")

    def connect(self, factory: IProtocolFactory) -> Deferred:
        """Connect, tunnel, then hand the tunnel to a protocol from ``factory``."""
        ready: Deferred = Deferred()
        tunnel = Factory.forProtocol(lambda: _TunnelProtocol(self._target, factory, ready))
        self._proxy.connect(tunnel).addErrback(ready.errback)
        return ready


class _TunnelProtocol(Protocol):
    """Speaks CONNECT to the proxy, then relays everything to the inner protocol."""

    def __init__(self, target: bytes, factory: IProtocolFactory, ready: Deferred) -> None:
        self._target = target
        self._factory = factory
        self._ready = ready
        self._buffer = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection, before this
        self.transport.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (self._target, self._target))

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        head, separator, rest = self._buffer.partition(b"\r\n\r\n")
        if not separator:
            if len(self._buffer) > MAX_PROXY_HEADER:
                self._fail(TunnelError("the proxy's answer to CONNECT is too long"))
            return
        first_line = head.split(b"\r\n", 1)[0]
        words = first_line.split()
        if len(words) < 2 or words[1] != b"200":
            self._fail(TunnelError(f"the proxy refused CONNECT: {first_line!r}"))
            return
        assert self.transport is not None  # connected: data came in
        inner = self._factory.buildProtocol(self.transport.getPeer())
        assert inner is not None  # an HTTP client's factory builds a protocol for every connection
        self._inner = inner
        inner.makeConnection(self.transport)
        self._ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, error: Exception) -> None:
        assert self.transport is not None  # called only while connected
        self.transport.loseConnection()
        if not self._ready.called:
            self._ready.errback(error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(reason)


@implementer(IAgentEndpointFactory)
class _TunnelEndpointFactory:
    def __init__(self, reactor: IReactorTCP, proxy: IStreamClientEndpoint, policy: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._policy = policy

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        tunnel = ConnectTunnelEndpoint(self._proxy, uri.host.decode("ascii"), uri.port)
        return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tunnel)


@implementer(IAgent)
class ProxyingAgent:
    """Sends http:// requests to the proxy and tunnels https:// ones through it."""

    def __init__(
        self, reactor: IReactorTCP, proxy_host: str, proxy_port: int, policy: IPolicyForHTTPS,
        pool: HTTPConnectionPool,
    ) -> None:
        proxy = HostnameEndpoint(reactor, proxy_host, proxy_port)
        self._plain = ProxyAgent(proxy, reactor, pool=pool)
        self._tunnelled = Agent.usingEndpointFactory(
            reactor, _TunnelEndpointFactory(reactor, proxy, policy), pool=pool
        )

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred:
        """Route by scheme: https through CONNECT, http as a proxy request."""
        agent = self._tunnelled if uri.startswith(b"https://") else self._plain
        return agent.request(method, uri, headers, bodyProducer)
