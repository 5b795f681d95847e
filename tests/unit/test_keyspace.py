"""The supervisor's shared state (nopard/cluster/keyspace.py served by resp.py): hostile input
costs a bounded amount, a wrong password gets nothing, and every Lua script nopard sends to
Redis has a Python twin that answers and leaves the keys exactly as a real redis-server does.

The Redis-backed classes themselves run over both backends in test_coordination.py and
test_auth_sessions.py (the ``supervisor`` parameter).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

import nopard
from nopard.auth import limits
from nopard.cluster import history, locks, sessions, stamps
from nopard.cluster.resp import (
    MAX_LINE,
    MAX_UNAUTHENTICATED,
    READ_SLACK,
    REQUEST_MARGIN,
    SharedStateFactory,
)
from nopard.service import shared_keyspace
from tests.redis_server import RedisServer, encode_command

PASSWORD = b"the-password"
BUDGET = 4 * 1024 * 1024


class Connection:
    """One client connection to a supervisor's keyspace, driven byte by byte (no sockets)."""

    def __init__(self, factory: SharedStateFactory | None = None) -> None:
        self.factory = factory or SharedStateFactory(shared_keyspace(Clock(), BUDGET), PASSWORD)
        self.protocol: Protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        """Deliver ``data``; the bytes answered."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.transport.value()

    def command(self, *args: object) -> bytes:
        return self.send(encode_command(*args))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def held(self) -> int:
        """Bytes the connection holds of requests not run yet."""
        return len(self.protocol._parser._buffer)  # type: ignore[attr-defined]


def authenticated() -> Connection:
    connection = Connection()
    assert connection.command("AUTH", PASSWORD) == b"+OK\r\n"
    return connection


def test_nothing_but_auth_is_answered_without_the_password_and_a_wrong_one_closes() -> None:
    connection = Connection()
    assert connection.command("GET", "nopard:epoch").startswith(b"-NOAUTH")
    assert connection.command("AUTH", "guess").startswith(b"-WRONGPASS")
    assert connection.closed
    right = authenticated()
    assert right.command("SET", "k", "v") == b"+OK\r\n"
    assert right.command("GET", "k") == b"$1\r\nv\r\n"


@pytest.mark.parametrize("hostile", [
    b"*1\r\n$100000000\r\n",  # announces a value far bigger than a client without the password may send
    b"*99999999999\r\n",  # more arguments than any command has
    b"GET nopard:epoch\r\n",  # inline commands: not what nopard's client sends
    b"*1\r\n$-5\r\n",
    b"*1\r\n$3\r\nabcXY",  # a bulk string not ended by CRLF
    b"*" + b"9" * (MAX_LINE + 1),  # a length line that never ends
    b"\x00" * 10,
])
def test_hostile_input_before_auth_is_refused_at_once(hostile: bytes) -> None:
    connection = Connection()
    answer = connection.send(hostile)
    assert answer.startswith(b"-ERR protocol error") and connection.closed


def test_an_unauthenticated_client_cannot_make_the_supervisor_hold_more_than_a_small_request() -> None:
    """Sent in small pieces, a big AUTH is refused once it passes the unauthenticated bound."""
    connection = Connection()
    assert connection.send(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n" % (MAX_UNAUTHENTICATED * 4)).startswith(b"-ERR")
    assert connection.closed
    trickle = Connection()
    for _ in range(MAX_UNAUTHENTICATED):  # a header split over many reads is still bounded
        if trickle.send(b"*") or trickle.closed:
            break
    assert trickle.closed and trickle.held() <= MAX_LINE + READ_SLACK


def test_an_authenticated_request_is_bounded_by_the_document_budget() -> None:
    connection = authenticated()
    assert connection.command("SET", "nopard:doc:a", b"x" * BUDGET) == b"+OK\r\n"
    too_big = BUDGET + REQUEST_MARGIN + 1
    answer = connection.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % too_big)  # refused before the data
    assert answer.startswith(b"-ERR protocol error") and connection.closed


def test_a_request_in_pieces_and_pipelined_requests_are_answered_in_order() -> None:
    connection = authenticated()
    whole = encode_command("SET", "k", "value") + encode_command("INCR", "n") + encode_command("GET", "k")
    answers = b"".join(connection.send(whole[i : i + 1]) for i in range(len(whole)))
    assert answers == b"+OK\r\n:1\r\n$5\r\nvalue\r\n"
    assert connection.held() == 0


def test_replies_wait_while_the_client_does_not_read_them() -> None:
    """The transport pauses its producer when its buffer is full: nothing more is run until it resumes."""
    connection = authenticated()
    connection.command("SET", "k", b"x" * 1000)
    connection.transport.clear()
    connection.protocol.pauseProducing()  # type: ignore[attr-defined]  # what a full write buffer does
    connection.protocol.dataReceived(encode_command("GET", "k") * 5 + encode_command("INCR", "n"))
    assert connection.transport.value() == b""
    connection.protocol.resumeProducing()  # type: ignore[attr-defined]
    assert connection.transport.value().endswith(b":1\r\n")
    assert connection.transport.value().count(b"$1000\r\n") == 5


def test_unknown_commands_and_wrong_types_are_error_replies() -> None:
    connection = authenticated()
    assert connection.command("FLUSHALL").startswith(b"-ERR unknown command")
    connection.command("SET", "s", "v")
    assert connection.command("ZADD", "s", "1", "m").startswith(b"-WRONGTYPE")
    assert connection.command("EVALSHA", "0" * 40, "0").startswith(b"-NOSCRIPT")
    assert connection.command("GET").startswith(b"-ERR wrong arguments")
    assert not connection.closed


def test_shared_documents_stay_within_the_budget_oldest_dropped_first() -> None:
    space = shared_keyspace(Clock(), 3000)
    for n in range(5):
        space.set(b"nopard:doc:%d" % n, b"x" * 1000)
    assert space.document_bytes <= 3000
    assert space.get(b"nopard:doc:0") is None and space.get(b"nopard:doc:4") is not None


# Every Lua script nopard sends, run by a real redis-server and by the keyspace --------------

def sent_scripts() -> set[str]:
    """Every module-level string in nopard that calls Redis from Lua."""
    found = set()
    for module in pkgutil.walk_packages(nopard.__path__, "nopard."):
        try:
            loaded = importlib.import_module(module.name)
        except ImportError:
            continue
        found.update(v for v in vars(loaded).values() if isinstance(v, str) and "redis.call(" in v)
    return found


MS = 1_700_000_000_000  # a "now" in milliseconds, passed by nopard as an argument
# script -> calls (EVAL arguments after the script), then the keys to look at afterwards.
SCENARIOS: dict[str, tuple[list[tuple[object, ...]], list[str]]] = {
    stamps.BUMP_SCRIPT: ([
        (2, "nopard:epoch", "nopard:gen:a"),
        ("SET", "nopard:epoch", "e1"),
        (2, "nopard:epoch", "nopard:gen:a"),
        (2, "nopard:epoch", "nopard:gen:b"),
    ], ["nopard:gen:a", "nopard:gen:b"]),
    locks.RELEASE_SCRIPT: ([
        (1, "lock", "me"),
        ("SET", "lock", "me", "PX", "60000"),
        (1, "lock", "other"),
        (1, "lock", "me"),
        (1, "lock", "me"),
    ], ["lock"]),
    locks.RENEW_SCRIPT: ([
        (1, "lock", "me", "90000"),
        ("SET", "lock", "me", "PX", "5000"),
        (1, "lock", "other", "90000"),
        (1, "lock", "me", "90000"),
    ], ["lock"]),
    sessions.ADMIT_SCRIPT: ([
        *[(4, f"s:r{n}", "pool", f"owners:{owner}", "owner-of", f"record{n}", str(MS + n), "60000", "2", "3",
           f"r{n}", owner, "s:", "owners:")
          for n, owner in enumerate(["ip1", "ip1", "ip1", "ip2", "ip3", "ip2"])],
        # The same id again, and a clock past the first records' expiry.
        (4, "s:r5", "pool", "owners:ip2", "owner-of", "again", str(MS + 5), "60000", "2", "3", "r5", "ip2", "s:",
         "owners:"),
        (4, "s:r9", "pool", "owners:ip9", "owner-of", "late", str(MS + 60_004), "60000", "2", "3", "r9", "ip9",
         "s:", "owners:"),
    ], ["pool", "owners:ip1", "owners:ip2", "owners:ip3", "owners:ip9", "owner-of",
        *[f"s:r{n}" for n in range(10)]]),
    sessions.SETTLE_SCRIPT: ([
        ("EVAL", sessions.ADMIT_SCRIPT, 4, "s:a", "pool", "owners:ip", "owner-of", "rec", str(MS), "60000", "5",
         "5", "a", "ip", "s:", "owners:"),
        ("EVAL", sessions.ADMIT_SCRIPT, 4, "s:b", "pool", "owners:ip", "owner-of", "rec", str(MS), "60000", "5",
         "5", "b", "ip", "s:", "owners:"),
        (3, "s:a", "pool", "owner-of", "a", "owners:", "settled", "30000"),
        (3, "s:b", "pool", "owner-of", "b", "owners:", "", "0"),
        (3, "s:gone", "pool", "owner-of", "gone", "owners:", "x", "1000"),
    ], ["s:a", "s:b", "s:gone", "pool", "owners:ip", "owner-of"]),
    limits.FAILED_SCRIPT: ([
        (2, "login:a", "login:b", str(MS), "60000", "m1"),
        (2, "login:a", "login:b", str(MS + 10), "60000", "m2"),
        (1, "login:a", str(MS + 20), "60000", "m3"),
    ], ["login:a", "login:b"]),
    limits.RETRY_AFTER_SCRIPT: ([
        *[("EVAL", limits.FAILED_SCRIPT, 1, "login:a", str(MS + n * 100), "600000", f"m{n}") for n in range(4)],
        (2, "login:a", "login:none", str(MS + 1000), "60000", "3"),
        (1, "login:a", str(MS + 1000), "60000", "5"),
        (1, "login:a", str(MS + 60_150), "60000", "2"),  # the first two left the window
        (1, "login:a", str(MS + 60_150), "60000", "3"),
    ], ["login:a", "login:none"]),
    history.ADD_SCRIPT: ([
        (1, "nopard:history:1", "90000", "served:HIT", "2", "store:bytes", "500"),
        (1, "nopard:history:1", "90000", "served:HIT", "3", "store:bytes", "400", "down:u", "1.5", "sync:runs", "1"),
        (1, "nopard:history:1", "90000", "down:u", "2.5", "served:HIT", "0.5", "store:bytes", "600"),
        (1, "nopard:history:2", "90000", *[part for n in range(history.MAX_FIELDS + 6) for part in (f"up:u{n}", "1")]),
        ("EVAL", history.READ_SCRIPT, 3, "nopard:history:1", "nopard:history:2", "nopard:history:3"),
    ], ["nopard:history:1", "nopard:history:2"]),
    history.READ_SCRIPT: ([
        (1, "nopard:history:9"),
        ("HSET", "nopard:history:9", "served:MISS", "4"),
        (2, "nopard:history:9", "nopard:history:8"),
    ], ["nopard:history:9"]),
}


def look(send: object, names: list[str]) -> list[bytes]:
    """What the keys hold: type-blind reads, each answered or refused the same way by both."""
    seen = []
    for name in names:
        for command in (("GET", name), ("ZRANGE", name, "0", "-1", "WITHSCORES"), ("HGET", "owner-of", name),
                        ("EXISTS", name)):
            seen.append(_kind_of_error(send(*command)))  # type: ignore[operator]
        ttl = send("PTTL", name)  # type: ignore[operator]
        seen.append(b"%d" % round(int(ttl[1:]) / 10_000))  # real time passes in redis-server: tens of seconds
    return seen


def _kind_of_error(reply: bytes) -> bytes:
    """An error reply's kind (the texts differ), else the reply."""
    return reply.split(b" ")[0] if reply.startswith(b"-") else reply


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def run(send: object, script: str, calls: list[tuple[object, ...]]) -> list[bytes]:
    answers = []
    for call in calls:
        if isinstance(call[0], str):  # a plain command setting the scene
            answers.append(send(*call))  # type: ignore[operator]
        else:
            answers.append(send("EVAL", script, *call))  # type: ignore[operator]
    return answers


def test_every_script_nopard_sends_has_a_twin_in_the_keyspace() -> None:
    scripts = sent_scripts()
    assert scripts == set(SCENARIOS), "a Lua script without a scenario here (or a scenario for none)"
    known = shared_keyspace(Clock(), BUDGET).scripts
    import hashlib

    assert {hashlib.sha1(s.encode()).hexdigest() for s in scripts} <= set(known)


@pytest.mark.parametrize("script", list(SCENARIOS), ids=lambda s: s.split("redis.call('")[1].split("'")[0])
def test_each_twin_answers_and_leaves_the_keys_as_redis_does(script: str, redis_server: RedisServer) -> None:
    calls, names = SCENARIOS[script]
    redis_server.command("FLUSHALL")
    connection = authenticated()
    expected = run(redis_server.command, script, calls) + look(redis_server.command, names)
    assert run(connection.command, script, calls) + look(connection.command, names) == expected
    assert any(not answer.startswith(b"-") for answer in expected)  # the scenario ran, not only errors
