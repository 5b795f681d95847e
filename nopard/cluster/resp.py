"""The supervisor's side of NOPARD_WORKERS without Redis: keyspace.py served over the Redis protocol.

``SharedStateServer`` listens on a loopback port of its own, open only to clients that
send the random password it was made with (the workers get it in their environment,
which other users cannot read), and answers the commands of keyspace.COMMANDS, and
SUBSCRIBE / PUBLISH (cluster/feed.py's news of changed packages). The
workers reach it with ``NOPARD_REDIS_URL`` pointing at it, so they share through
exactly the code several instances share Redis through (cluster/coordination.py).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from nopard.cluster.keyspace import COMMANDS, OK, CommandError, Keyspace, Status

# What one connection may make the supervisor hold. Before AUTH: a few hundred bytes (a client
# without the password can cost nothing more). After: one request at most ``max_request`` bytes
# (the keyspace's document budget, the largest value worth keeping, plus a margin); replies are
# written one command at a time while the client reads them (see SharedStateProtocol).
MAX_UNAUTHENTICATED = 512
REQUEST_MARGIN = 1024 * 1024
MAX_LINE = 32  # "*<count>" and "$<size>" lines: digits only
MAX_ARGUMENTS = 1024 * 1024
MAX_CONNECTIONS = 1024
READ_SLACK = 64 * 1024  # one read of the transport
SWEEP_INTERVAL = 30.0


def encode(value: Any) -> bytes:
    """One RESP reply."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, Status):
        return b"+" + value.encode() + b"\r\n"
    if isinstance(value, CommandError):
        return b"-" + str(value).replace("\r\n", " ").encode() + b"\r\n"
    if isinstance(value, bool):
        return b":1\r\n" if value else b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, float):
        return b":%d\r\n" % int(value)
    if isinstance(value, bytes | str):
        data = value if isinstance(value, bytes) else value.encode()
        return b"$%d\r\n%s\r\n" % (len(data), data)
    if isinstance(value, list | tuple):
        return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)
    raise TypeError(f"cannot send {type(value).__name__}")


class ProtocolError(ValueError):
    """Not a well-formed command, or more than the connection may send: the connection is closed."""


class RequestParser:
    """Splits received bytes into commands (arrays of bulk strings, as every Redis client sends).

    Incremental: what was parsed of a command is not parsed again when more bytes come.
    A command is refused as soon as its announced size passes ``limit`` (lines and data
    counted), so the bytes held for an unfinished command stay below ``limit`` + MAX_LINE.
    """

    def __init__(self, limit: int = MAX_UNAUTHENTICATED) -> None:
        self.limit = limit
        self._buffer = bytearray()  # starts with the command being read
        self._position = 0  # bytes of it parsed
        self._parts: list[bytes] = []
        self._count: int | None = None  # its number of arguments, once read

    def feed(self, data: bytes) -> None:
        """Take received bytes; ProtocolError when more is buffered than commands may hold.

        Beyond the command being read, one read's worth of pipelined commands may wait
        while replies are not read (the protocol stops reading then).
        """
        self._buffer += data
        if len(self._buffer) > self.limit + MAX_LINE + READ_SLACK:
            raise ProtocolError("request too large")

    def next(self) -> list[bytes] | None:
        """The next complete command, None until one is; ProtocolError for a malformed one."""
        if self._count is None:
            count = self._number(b"*")
            if count is None:
                return None
            if not 0 < count <= MAX_ARGUMENTS:
                raise ProtocolError("bad argument count")
            self._count = count
        while len(self._parts) < self._count:
            start = self._position
            size = self._number(b"$")
            if size is None:
                return None
            if size < 0 or self._position + size + 2 > self.limit:
                raise ProtocolError("request too large")
            end = self._position + size
            if len(self._buffer) < end + 2:
                self._position = start  # the length line is read again with the data
                return None
            if self._buffer[end : end + 2] != b"\r\n":
                raise ProtocolError("bulk string not ended by CRLF")
            self._parts.append(bytes(self._buffer[self._position : end]))
            self._position = end + 2
        command, self._parts, self._count = self._parts, [], None
        del self._buffer[: self._position]
        self._position = 0
        return command

    def _number(self, kind: bytes) -> int | None:
        """The number of the ``<kind><digits>`` line at the position (consumed), None until it is whole."""
        end = self._buffer.find(b"\r\n", self._position, self._position + MAX_LINE)
        if end < 0:
            waiting = self._buffer[self._position : self._position + MAX_LINE]
            if len(waiting) >= MAX_LINE or waiting[:1] not in (b"", kind):
                raise ProtocolError(f"expected {kind.decode()!r} and a number")
            return None
        line = bytes(self._buffer[self._position : end])
        if line[:1] != kind or not line[1:].lstrip(b"-").isdigit() or end + 2 > self.limit:
            raise ProtocolError(f"expected {kind.decode()!r} and a number")
        self._position = end + 2
        return int(line[1:])


@implementer(IPushProducer)
class SharedStateProtocol(Protocol):
    """One worker's connection: AUTH first, then commands on the shared keyspace.

    The protocol is its transport's producer: while the client does not read its
    replies (the write buffer is full), nothing more is read or run, so replies
    waiting for it stay within one command's.
    """

    factory: SharedStateFactory

    def connectionMade(self) -> None:
        self._parser = RequestParser()
        self._authenticated = False
        self._paused = False
        transport: Any = self.transport
        if self.factory.connections >= MAX_CONNECTIONS:
            transport.write(encode(CommandError("ERR max number of clients reached")))
            transport.loseConnection()
            return
        self.factory.connections += 1
        self._counted = True
        transport.registerProducer(self, True)

    def connectionLost(self, reason: Any = None) -> None:
        for subscribers in self.factory.subscribers.values():
            subscribers.discard(self)
        if getattr(self, "_counted", False):
            self.factory.connections -= 1
            self._counted = False

    def pauseProducing(self) -> None:
        """The client is not reading: stop reading its commands."""
        self._paused = True
        cast(Any, self.transport).pauseProducing()

    def resumeProducing(self) -> None:
        """The client read its replies: go on."""
        self._paused = False
        cast(Any, self.transport).resumeProducing()
        self._drain()

    def stopProducing(self) -> None:
        """The connection is closing."""
        self._paused = True

    def dataReceived(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except ProtocolError as error:
            self._refuse(error)
            return
        self._drain()

    def _drain(self) -> None:
        transport: Any = self.transport
        while not self._paused and not transport.disconnecting:
            try:
                command = self._parser.next()
            except ProtocolError as error:
                self._refuse(error)
                return
            if command is None:
                return
            transport.write(self._answer(command))
            if not self._authenticated and command[0].upper() == b"AUTH":
                transport.loseConnection()  # a wrong password: no second guess on this connection
                return

    def _refuse(self, error: Exception) -> None:
        transport: Any = self.transport
        transport.write(encode(CommandError(f"ERR protocol error: {error}")))
        transport.loseConnection()

    def _answer(self, command: list[bytes]) -> bytes:
        """The reply to ``command``, encoded: pub/sub here (it needs the connections), the rest in _run."""
        name, args = command[0].upper(), command[1:]
        if not self._authenticated or name not in (b"SUBSCRIBE", b"PUBLISH"):
            return encode(self._run(command))
        if name == b"PUBLISH":
            if len(args) != 2:
                return encode(CommandError("ERR wrong number of arguments for 'publish' command"))
            return encode(self.factory.publish(args[0], args[1]))
        replies = []
        for channel in args:
            self.factory.subscribers.setdefault(channel, set()).add(self)
            mine = sum(1 for subscribers in self.factory.subscribers.values() if self in subscribers)
            replies.append(encode([b"subscribe", channel, mine]))
        return b"".join(replies)

    def deliver(self, channel: bytes, message: bytes) -> bool:
        """Send a published message; a subscriber not reading its messages is dropped instead
        (it connects again and, having missed news, starts afresh: nopard's ChangeFeed does)."""
        if self._paused:
            cast(Any, self.transport).loseConnection()
            return False
        cast(Any, self.transport).write(encode([b"message", channel, message]))
        return True

    def _run(self, command: list[bytes]) -> Any:
        name, args = command[0].upper(), command[1:]
        if name == b"AUTH":
            self._authenticated = bool(args) and hmac.compare_digest(args[-1], self.factory.password)
            if not self._authenticated:
                return CommandError("WRONGPASS invalid password")
            self._parser.limit = self.factory.max_request
            return OK
        if not self._authenticated:
            return CommandError("NOAUTH Authentication required.")
        if name == b"PING":
            return Status("PONG")
        if name == b"SELECT":
            return OK
        handler = COMMANDS.get(name)
        if handler is None:
            return CommandError(f"ERR unknown command '{name.decode(errors='replace')}'")
        try:
            return handler(self.factory.keyspace, *args)
        except CommandError as error:
            return error
        except (TypeError, ValueError, IndexError) as error:
            return CommandError(f"ERR wrong arguments for '{name.decode(errors='replace')}': {error}")


class SharedStateFactory(Factory):
    """Connections to one keyspace, for clients knowing ``password``."""

    protocol = SharedStateProtocol  # type: ignore[assignment]  # Twisted types it as a callable
    noisy = False

    def __init__(self, keyspace: Keyspace, password: bytes) -> None:
        self.keyspace = keyspace
        self.password = password
        self.max_request = keyspace.document_budget + REQUEST_MARGIN
        self.connections = 0
        self.subscribers: dict[bytes, set[SharedStateProtocol]] = {}

    def publish(self, channel: bytes, message: bytes) -> int:
        """PUBLISH: deliver ``message`` to the channel's subscribers; how many got it."""
        return sum(1 for subscriber in list(self.subscribers.get(channel, ())) if subscriber.deliver(channel, message))


class SharedStateServer(Service):
    """The keyspace served on a loopback port from start to stop; ``url`` is what workers connect to."""

    def __init__(self, keyspace: Keyspace, reactor: Any) -> None:
        self.keyspace = keyspace
        self._reactor = reactor
        self._password = secrets.token_hex(24)
        self._port: IListeningPort | None = None
        self._sweep = LoopingCall(keyspace.sweep)
        self._sweep.clock = reactor

    @property
    def url(self) -> str:
        """The redis:// URL of the running server (with its password)."""
        if self._port is None:
            raise RuntimeError("the shared state server is not listening")
        return f"redis://:{self._password}@127.0.0.1:{cast(Any, self._port.getHost()).port}/0"

    def startService(self) -> None:
        """Listen on a free loopback port (before the workers start: they connect at once)."""
        super().startService()
        factory = SharedStateFactory(self.keyspace, self._password.encode())
        self._port = self._reactor.listenTCP(0, factory, interface="127.0.0.1")
        self._sweep.start(SWEEP_INTERVAL, now=False)

    def stopService(self) -> Any:
        """Stop listening (the pool stops it after its workers ended)."""
        super().stopService()
        if self._sweep.running:
            self._sweep.stop()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None
