"""GracefulService's stop, in process: the answer to a request in flight reaches its client."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from nopard.ops.daemon import GracefulService


class BufferedTransport(StringTransport):
    """A TCP transport as the reactor runs it: what is written goes out on a later turn
    (:meth:`flush`), and :meth:`drop` is twistd's shutdown cutting the connection."""

    def __init__(self, protocol: Any) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = protocol
        self.connected = True
        self.sent = b""

    def flush(self) -> None:
        self.sent += self.value()
        self.clear()
        if self.disconnecting:
            self._lost(ConnectionDone())

    def drop(self) -> None:
        self.clear()
        self._lost(ConnectionLost())

    def _lost(self, reason: Exception) -> None:
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(reason))


class Slow(Resource):
    """Answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET


class Port:
    def stopListening(self) -> None:
        return None


class Endpoint:
    def listen(self, factory: Any) -> Any:
        return succeed(Port())


class Rest(Service):
    """The services the requests use (thread pools, storage)."""


def started() -> tuple[GracefulService, Clock, Slow, BufferedTransport, Rest]:
    clock, resource, rest = Clock(), Slow(), Rest()
    site = Site(resource, reactor=clock)
    app = MultiService()
    StreamServerEndpointService(Endpoint(), site).setServiceParent(app)
    rest.setServiceParent(app)
    service = GracefulService(app, clock, grace=30.0)
    service.startService()
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5984))
    transport = BufferedTransport(channel)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(resource.waiting) == 1
    return service, clock, resource, transport, rest


def test_the_answer_finished_in_the_same_turn_as_the_check_still_reaches_the_client() -> None:
    """The request is finished (its bytes handed to the transport) in the reactor turn in which
    the drain checks again: the stop waits until those bytes are sent before twistd cuts the
    connections (it once cut them at once, and the client got an empty answer)."""
    service, clock, resource, transport, rest = started()
    stopped: list[Any] = []
    service.stopService().addCallback(lambda _: (transport.drop(), stopped.append(True)))  # then twistd
    clock.advance(0.05)
    assert rest.running and not stopped
    request = resource.waiting[0]
    request.write(b"published")
    request.finish()
    clock.advance(0.05)  # the drain's check, before the reactor has sent the answer
    transport.flush()  # the reactor's next turn sends it
    clock.advance(0.05)
    assert stopped and not rest.running
    assert transport.sent.startswith(b"HTTP/1.1 200 ") and b"published" in transport.sent


def test_a_client_that_does_not_read_its_answer_does_not_hold_the_stop_beyond_the_grace() -> None:
    """The answer never leaves (the client reads nothing): the stop goes on after the grace."""
    service, clock, resource, transport, rest = started()
    stopped: list[Any] = []
    service.stopService().addCallback(stopped.append)
    resource.waiting[0].finish()
    clock.advance(29.0)
    assert rest.running and not stopped
    clock.advance(1.05)
    assert stopped and not rest.running


def test_services_that_write_as_they_stop_finish_before_the_rest_stops() -> None:
    """The record of use's last flush (a ``stops_first`` service) needs the thread pools the store
    runs on: they stop only once its stop is done (stopped together, the flush's writes were
    queued behind the pools' stop and lost)."""
    clock, order = Clock(), []
    flushed: Deferred[None] = Deferred()

    class Flushing(Service):
        stops_first = True

        def stopService(self) -> Deferred[None] | None:
            if not self.running:  # stopped again with the rest: done already (as UsageFlusher)
                return None
            super().stopService()
            order.append("flush started")
            return flushed

    class Pool(Service):
        def stopService(self) -> None:
            super().stopService()
            order.append("pool stopped")

    app = MultiService()
    Pool().setServiceParent(app)
    Flushing().setServiceParent(app)
    service = GracefulService(app, clock, grace=30.0)
    service.startService()
    service.stopService()
    clock.advance(0.05)
    assert order == ["flush started"]
    clock.callLater(1, flushed.callback, None)
    clock.advance(1)
    assert order == ["flush started", "pool stopped"]
