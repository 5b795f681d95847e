"""What one body can cost nopard, per route that takes a body, counted through its own site:
bytes buffered for a refused body, files written, and parses started; and what many bodies in
flight at once can cost, per client address and in all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from nopard.web import responses
from nopard.web.bodies import (
    ADDRESS_BUDGET_BODIES,
    LIST_ADDRESS_BUDGET_BODIES,
    LIST_BODY_LIMIT,
    SMALL_BODY_LIMIT,
    TOTAL_BUDGET_BODIES,
)
from nopard.web.site import NopardRequest, NopardSite
from tests.support import files_under
from tests.unit.route_harness import InProcess, _whole, build

MAX = 1024 * 1024  # NOPARD_MAX_BODY_SIZE in these tests
PIECE = 4096  # bytes the network hands over at a time

ROUTES = [  # every route an anonymous client can send a body to, and its limit
    ("PUT", "/-/user/org.couchdb.user:x", SMALL_BODY_LIMIT), ("POST", "/-/npm/v1/tokens", SMALL_BODY_LIMIT),
    ("DELETE", "/-/user/token/npd_x", SMALL_BODY_LIMIT), ("POST", "/-/v1/login", SMALL_BODY_LIMIT),
    ("POST", "/-/v1/login/abc", SMALL_BODY_LIMIT), ("PUT", "/-/nopard/settings", SMALL_BODY_LIMIT),
    ("POST", "/-/nopard/sync", SMALL_BODY_LIMIT), ("PUT", "/-/package/pkg/dist-tags/next", SMALL_BODY_LIMIT),
    ("POST", "/-/web/login", SMALL_BODY_LIMIT), ("POST", "/-/web/settings", SMALL_BODY_LIMIT),
    ("POST", "/-/web/package/pkg", SMALL_BODY_LIMIT), ("GET", "/-/v1/search?text=x", SMALL_BODY_LIMIT),
    ("GET", "/pkg", SMALL_BODY_LIMIT),
    ("POST", "/-/nopard/prefetch", MAX), ("POST", "/-/npm/v1/security/advisories/bulk", MAX),
    ("PUT", "/pkg", MAX), ("PUT", "/@scope%2fpkg/-rev/1-abc", MAX),
]


class CountingOrjson:
    """orjson as nopard.web.responses sees it, counting the parses it starts."""

    def __init__(self) -> None:
        self.loads_calls = 0

    def loads(self, raw: Any) -> Any:
        self.loads_calls += 1
        return orjson.loads(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(orjson, name)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> CountingOrjson:
    counting = CountingOrjson()
    monkeypatch.setattr(responses, "orjson", counting)
    return counting


def app_with_store(tmp_path: Path) -> tuple[InProcess, list[str]]:
    app = build(tmp_path, max_body_size=str(MAX))
    return app, files_under(tmp_path / "registry")


def head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]).encode()


@pytest.mark.parametrize(("method", "path", "limit"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_a_declared_length_over_the_limit_is_refused_unread(
    tmp_path: Path, parses: CountingOrjson, method: str, path: str, limit: int
) -> None:
    """Content-Length one past the route's limit: 413 JSON naming it, before a byte is read."""
    app, before = app_with_store(tmp_path)
    exchange = await app.raw(head(method, path, f"Content-Length: {limit + 1}"), [b"[" * PIECE] * 4)
    assert exchange.status == 413 and exchange.closed
    assert f"larger than {limit} bytes" in exchange.json()["error"]
    assert exchange.request.body_received == 0 and exchange.request.content.tell() == 0
    assert parses.loads_calls == 0
    assert files_under(tmp_path / "registry") == before


@pytest.mark.parametrize(("method", "path", "limit"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_cut_off_at_the_limit(
    tmp_path: Path, parses: CountingOrjson, method: str, path: str, limit: int
) -> None:
    """A chunked body that never ends: refused once past the limit, having buffered at most the limit."""
    app, before = app_with_store(tmp_path)
    chunk = b"%x\r\n%s\r\n" % (PIECE, b"[" * PIECE)
    pieces = (chunk for _ in range(10 * limit // PIECE))
    exchange = await app.raw(head(method, path, "Transfer-Encoding: chunked"), pieces)
    assert exchange.status == 413 and exchange.closed
    assert f"larger than {limit} bytes" in exchange.json()["error"]
    assert exchange.request.content.tell() <= limit < exchange.request.body_received <= limit + PIECE
    assert parses.loads_calls == 0
    assert files_under(tmp_path / "registry") == before


@pytest_twisted.ensureDeferred
async def test_a_login_body_within_its_limit_is_served(tmp_path: Path) -> None:
    """The site's limits leave npm's own bodies alone: adduser through the site registers."""
    app, _ = app_with_store(tmp_path)
    body = orjson.dumps({"name": "alice", "password": "secret-pw", "email": "alice@example.test"})
    path = "/-/user/org.couchdb.user:alice"
    exchange = await app.raw(head("PUT", path, "Content-Type: application/json", f"Content-Length: {len(body)}")
                             + body)
    assert exchange.status == 201, exchange.reply


@pytest.mark.parametrize("anonymous", [True, False])
@pytest_twisted.ensureDeferred
async def test_an_amplifying_publish_body_is_refused_unparsed(
    tmp_path: Path, parses: CountingOrjson, anonymous: bool
) -> None:
    """[0,0,...] within the publish limit (it would cost 13 times its size parsed): refused
    without a parse: 401 anonymous (who is asking comes first), 413 for a user."""
    app, _ = app_with_store(tmp_path)
    token = await app.user("alice")
    before = files_under(tmp_path / "registry")
    parses.loads_calls = 0
    body = b"[" + b"0," * (MAX // 2 - 8) + b"0]"
    credentials = [] if anonymous else [f"Authorization: Bearer {token}"]
    exchange = await app.raw(head("PUT", "/pkg", f"Content-Length: {len(body)}", *credentials) + body)
    if anonymous:
        assert exchange.status == 401
    else:
        assert exchange.status == 413 and "too many JSON values" in exchange.json()["error"]
    assert parses.loads_calls == 0
    assert files_under(tmp_path / "registry") == before


@pytest.mark.parametrize("path", ["/-/npm/v1/security/advisories/bulk", "/-/nopard/prefetch"])
@pytest_twisted.ensureDeferred
async def test_a_form_body_on_a_large_route_is_not_parsed_as_a_form(tmp_path: Path, path: str) -> None:
    """A 1 MB urlencoded body of distinct keys (Twisted's form parser makes ~20 times that in
    objects) on a route that takes 16 MB: nothing parsed into the request's arguments."""
    app, before = app_with_store(tmp_path)
    body = b"&".join(b"%d=" % i for i in range(MAX // 8))
    exchange = await app.raw(head("POST", path, "Content-Type: application/x-www-form-urlencoded",
                                  f"Content-Length: {len(body)}") + body)
    assert exchange.request.args == {}
    assert files_under(tmp_path / "registry") == before


@pytest_twisted.ensureDeferred
async def test_the_browser_forms_are_still_parsed(tmp_path: Path) -> None:
    """The login page's form (small, on a small route) still reaches the page as arguments."""
    app, _ = app_with_store(tmp_path)
    body = b"name=alice&password=secret-pw"
    exchange = await app.raw(head("POST", "/-/web/login", "Content-Type: application/x-www-form-urlencoded",
                                  f"Content-Length: {len(body)}") + body)
    assert exchange.request.args[b"name"] == [b"alice"]


# The body bytes in flight: many connections from one address, each partway through its body.

PER_ADDRESS, IN_ALL = ADDRESS_BUDGET_BODIES * MAX, TOTAL_BUDGET_BODIES * MAX
AUDIT, PUBLISH = "/-/npm/v1/security/advisories/bulk", "/pkg"


class Connection:
    """One client connection to ``site``, from ``host``, fed by hand: what the reactor does."""

    def __init__(self, site: NopardSite, host: str, made: list[NopardRequest]) -> None:
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5984))
        peer = IPv6Address("TCP", host, 40000) if ":" in host else IPv4Address("TCP", host, 40000)
        self.transport = StringTransport(peerAddress=peer)
        self.channel.makeConnection(self.transport)
        self._made, self._first = made, len(made)

    @property
    def request(self) -> NopardRequest:
        return self._made[self._first]

    def start(self, path: str, method: str = "") -> Connection:
        """Send the headers of a chunked body."""
        method = method or ("POST" if path == AUDIT else "PUT")
        self.channel.dataReceived(head(method, path, "Content-Type: application/json", "Transfer-Encoding: chunked"))
        return self

    def send(self, size: int, pieces: int = PIECE) -> None:
        """Send ``size`` more bytes of the body, ``pieces`` at a time, until the server closes."""
        for offset in range(0, size, pieces):
            if self.transport.disconnecting:
                return
            piece = b" " * min(pieces, size - offset)
            self.channel.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))

    async def end(self) -> bytes:
        """Send the last chunk; the reply, once whole."""
        self.channel.dataReceived(b"0\r\n\r\n")
        for _ in range(10_000):
            if _whole(self.transport.value()):
                break
            await task.deferLater(reactor, 0, lambda: None)
        return self.transport.value()

    def hang_up(self) -> None:
        """The client goes away mid-body: the reactor tells the channel."""
        self.channel.connectionLost(Failure(ConnectionDone()))

    @property
    def status(self) -> int:
        reply = self.transport.value()
        return int(reply.split(b" ", 2)[1]) if reply else 0

    def answer(self) -> tuple[dict[bytes, bytes], Any]:
        head_, _, body = self.transport.value().partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head_.split(b"\r\n")[1:])
        return headers, orjson.loads(body)


class Clients:
    """nopard's own site (as twistd serves it) over the app, and the connections made to it."""

    def __init__(self, app: InProcess) -> None:
        self.made: list[NopardRequest] = []
        made = self.made

        class Recorded(NopardRequest):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        self.site = NopardSite(app.resource, app.settings, app.clock, Logger(namespace="nopard.test"))
        self.site.requestFactory = Recorded

    def connect(self, host: str) -> Connection:
        return Connection(self.site, host, self.made)

    def buffered(self) -> int:
        """The body bytes the requests still open hold in their buffers."""
        return sum(r.content.seek(0, 2) for r in self.made if not r.finished and not r._disconnected
                   and not r.rejected)


ALMOST = MAX - PIECE  # a body just under the largest: ADDRESS_BUDGET_BODIES of them fit one address


def assert_refused_busy(connection: Connection, status: int, words: str) -> None:
    assert connection.status == status and connection.transport.disconnecting
    headers, answer = connection.answer()
    assert headers[b"Content-Type"] == b"application/json" and int(headers[b"Retry-After"]) > 0
    assert words in answer["error"]


@pytest_twisted.ensureDeferred
async def test_bodies_in_flight_from_one_address_are_bounded(tmp_path: Path) -> None:
    """Audits and publishes from one address, each left partway: they are held up to the
    address's budget; the next is refused 429 JSON with Retry-After and closed; the bytes held
    never pass the budget; another address still publishes; once the first are answered or
    hung up, the address may send as much again."""
    app, _ = app_with_store(tmp_path)
    clients = Clients(app)
    held = [clients.connect("10.0.0.1").start(path) for path in [AUDIT, PUBLISH, AUDIT]]
    for connection in held:
        connection.send(ALMOST)
        assert connection.status == 0  # still reading: nothing answered
        assert clients.buffered() <= PER_ADDRESS
    refused = clients.connect("10.0.0.1").start(AUDIT)
    refused.send(ALMOST)
    assert_refused_busy(refused, 429, "too many request bodies in flight from your address")
    # refused with the first piece that did not fit
    assert refused.request.body_received == PER_ADDRESS - 3 * ALMOST + PIECE
    assert clients.site.body_budget.held("10.0.0.1") == clients.buffered() <= PER_ADDRESS

    other = clients.connect("10.0.0.2").start(PUBLISH)
    other.send(ALMOST)
    assert b" 401 " in (await other.end()).split(b"\r\n")[0]  # read whole, then asked who is publishing

    assert b" 401 " in (await held[1].end()).split(b"\r\n")[0]  # the publish is answered ...
    held[0].hang_up()  # ... and an audit's client goes away
    assert clients.site.body_budget.held("10.0.0.1") == ALMOST
    again = [clients.connect("10.0.0.1").start(AUDIT) for _ in range(2)]
    for connection in again:
        connection.send(ALMOST)
    assert [connection.status for connection in again] == [0, 0]
    assert clients.site.body_budget.held("10.0.0.1") == 3 * ALMOST


@pytest_twisted.ensureDeferred
async def test_the_count_is_released_whatever_ends_a_request(tmp_path: Path) -> None:
    """Many rounds of bodies answered, hung up, refused oversized and refused for the budget:
    afterwards nothing counts as in flight (the counter does not leak), and a full budget fits."""
    app, _ = app_with_store(tmp_path)
    clients = Clients(app)
    for _ in range(3):
        oversized = clients.connect("10.0.0.1").start(PUBLISH)
        oversized.send(MAX + PIECE)
        assert oversized.status == 413
        answered, hung, third = (clients.connect("10.0.0.1").start(PUBLISH) for _ in range(3))
        for connection in (answered, hung, third):
            connection.send(ALMOST)
        declared = clients.connect("10.0.0.1")
        declared.channel.dataReceived(head("PUT", "/-/user/org.couchdb.user:x", "Content-Length: 100") + b"{" * 50)
        busy = clients.connect("10.0.0.1").start(AUDIT)
        busy.send(MAX)
        assert busy.status == 429
        assert clients.site.body_budget.held("10.0.0.1") == 3 * ALMOST + 50
        assert b" 401 " in (await answered.end()).split(b"\r\n")[0]
        for connection in (hung, third, declared, oversized, busy):  # mid-body, or refused already
            connection.hang_up()
    assert clients.site.body_budget.total == 0 and clients.site.body_budget.held("10.0.0.1") == 0
    full = [clients.connect("10.0.0.1").start(AUDIT) for _ in range(ADDRESS_BUDGET_BODIES)]
    for connection in full:
        connection.send(ALMOST)
    assert [connection.status for connection in full] == [0] * ADDRESS_BUDGET_BODIES


@pytest_twisted.ensureDeferred
async def test_bodies_in_flight_in_all_are_bounded(tmp_path: Path) -> None:
    """Many addresses, each within its own budget: once the bytes in flight in all reach the
    site's budget, the next body is refused 503 JSON with Retry-After, whichever address sends it."""
    app, _ = app_with_store(tmp_path)
    clients = Clients(app)
    for n in range(TOTAL_BUDGET_BODIES):
        clients.connect(f"10.0.1.{n}").start(AUDIT).send(ALMOST)
    assert clients.buffered() == TOTAL_BUDGET_BODIES * ALMOST
    refused = clients.connect("10.0.2.1").start(AUDIT)
    refused.send(ALMOST)
    assert_refused_busy(refused, 503, "receiving too many request bodies at once")
    assert clients.site.body_budget.total == clients.buffered() <= IN_ALL


@pytest_twisted.ensureDeferred
async def test_an_ipv6_client_counts_per_64(tmp_path: Path) -> None:
    """Addresses of one /64 share one budget (a host may use any of them); the next /64 has its own."""
    app, _ = app_with_store(tmp_path)
    clients = Clients(app)
    for n in range(ADDRESS_BUDGET_BODIES):
        clients.connect(f"2001:db8::{n + 1}").start(AUDIT).send(ALMOST)
    same, next_ = clients.connect("2001:db8::ff").start(AUDIT), clients.connect("2001:db8:0:1::1").start(AUDIT)
    same.send(ALMOST)
    next_.send(ALMOST)
    assert (same.status, next_.status) == (429, 0)


@pytest_twisted.ensureDeferred
async def test_audits_in_flight_from_one_address_have_a_smaller_share(tmp_path: Path) -> None:
    """With the default NOPARD_MAX_BODY_SIZE, an address holds at most LIST_ADDRESS_BUDGET_BODIES
    audits of the largest size (an audit is kept in memory while the upstream answers); the next
    is refused 429 JSON, while a publish from that address still fits its larger budget."""
    app = build(tmp_path)
    clients = Clients(app)
    big = 64 * 1024
    for _ in range(LIST_ADDRESS_BUDGET_BODIES):
        audit = clients.connect("10.0.0.1").start(AUDIT)
        audit.send(LIST_BODY_LIMIT - big, big)
        assert audit.status == 0
    refused = clients.connect("10.0.0.1").start(AUDIT)
    refused.send(LIST_BODY_LIMIT - big, big)
    assert_refused_busy(refused, 429, "too many audit or prefetch bodies in flight from your address")
    assert clients.buffered() <= LIST_ADDRESS_BUDGET_BODIES * LIST_BODY_LIMIT
    publish = clients.connect("10.0.0.1").start(PUBLISH)
    publish.send(LIST_BODY_LIMIT, big)
    assert b" 401 " in (await publish.end()).split(b"\r\n")[0]
