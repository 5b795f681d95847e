"""A small forward HTTP proxy for tests: absolute-URI requests and CONNECT tunnels.

Runs in-process (``ForwardProxy``, for unit tests on the pytest-twisted reactor)
or as a process: ``python -m tests.proxy_server --log FILE`` prints
``READY <port>`` and appends one line per proxied request to FILE.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol


class _Relay(protocol.Protocol):
    """The proxy's connection to the target: copies bytes back to the client."""

    def __init__(self, client: _ProxyConnection) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: object) -> None:
        self.client.transport.loseConnection()


class _ProxyConnection(protocol.Protocol):
    """One client connection: reads the first request head, then relays."""

    def __init__(self, record: Callable[[str], None]) -> None:
        self._record = record
        self._buffer = b""
        self._relay: _Relay | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.transport.write(data)
            return
        self._buffer += data
        if b"\r\n\r\n" not in self._buffer:
            return
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        self._record(f"{method.decode()} {target.decode()}")
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            self._open(host, int(port), b"HTTP/1.1 200 Connection established\r\n\r\n", rest)
        else:
            url = urlsplit(target.decode())
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            headers = [line for line in lines[1:] if not line.lower().startswith(b"proxy-")]
            request = b"\r\n".join([b"%s %s %s" % (method, path.encode(), version), *headers]) + b"\r\n\r\n" + rest
            self._open(url.hostname, url.port or 80, b"", request)

    def _open(self, host: str, port: int, greeting: bytes, first: bytes) -> None:
        relay = _Relay(self)
        self._buffer = b""
        self.transport.pauseProducing()

        def connected(_: object) -> None:
            self._relay = relay
            if greeting:
                self.transport.write(greeting)
            if first:
                relay.transport.write(first)
            self.transport.resumeProducing()

        def failed(_: object) -> None:
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

        connectProtocol(TCP4ClientEndpoint(reactor, host, port), relay).addCallbacks(connected, failed)

    def connectionLost(self, reason: object) -> None:
        if self._relay is not None and self._relay.transport is not None:
            self._relay.transport.loseConnection()


class ForwardProxy(protocol.Factory):
    """The proxy; ``requests`` lists what it was asked, e.g. ``CONNECT host:443``."""

    def __init__(self, record: Callable[[str], None] | None = None) -> None:
        self.requests: list[str] = []
        self._extra = record

    def _record(self, line: str) -> None:
        self.requests.append(line)
        if self._extra:
            self._extra(line)

    def buildProtocol(self, addr: object) -> _ProxyConnection:
        return _ProxyConnection(self._record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    options = parser.parse_args()

    def record(line: str) -> None:
        with open(options.log, "a") as log:
            log.write(line + "\n")

    def listening(port: object) -> None:
        print(f"READY {port.getHost().port}", flush=True)

    TCP4ServerEndpoint(reactor, options.port, interface="127.0.0.1").listen(ForwardProxy(record)).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
