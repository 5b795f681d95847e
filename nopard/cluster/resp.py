"""The supervisor's side of NOPARD_WORKERS without Redis: keyspace.py served over the Redis protocol.

``SharedStateServer`` listens on a loopback port of its own, open only to clients that
send the random password it was made with (the workers get it in their environment,
which other users cannot read), and answers the commands of keyspace.COMMANDS. The
workers reach it with ``NOPARD_REDIS_URL`` pointing at it, so they share through
exactly the code several instances share Redis through (cluster/coordination.py).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall

from nopard.cluster.keyspace import COMMANDS, OK, CommandError, Keyspace, Status

# A request bigger than this is refused and its connection closed: the largest value nopard
# sends is a prepared document, bounded by the keyspace's document budget anyway.
MAX_REQUEST = 512 * 1024 * 1024
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


class RequestParser:
    """Splits received bytes into commands (arrays of bulk strings, as every Redis client sends)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The commands completed by ``data``; ValueError for anything but a well-formed array."""
        self._buffer += data
        if len(self._buffer) > MAX_REQUEST:
            raise ValueError("request too large")
        commands: list[list[bytes]] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return commands
            commands.append(parsed)

    def _one(self) -> list[bytes] | None:
        buffer, position = self._buffer, 0
        end = buffer.find(b"\r\n")
        if end < 0:
            return None
        if buffer[:1] != b"*":
            raise ValueError("expected an array")
        count, position = int(buffer[1:end]), end + 2
        parts = []
        for _ in range(count):
            end = buffer.find(b"\r\n", position)
            if end < 0:
                return None
            if buffer[position : position + 1] != b"$":
                raise ValueError("expected a bulk string")
            size = int(buffer[position + 1 : end])
            if size < 0 or size > MAX_REQUEST:
                raise ValueError("bad bulk length")
            start = end + 2
            if len(buffer) < start + size + 2:
                return None
            parts.append(bytes(buffer[start : start + size]))
            position = start + size + 2
        del self._buffer[:position]
        return parts


class SharedStateProtocol(Protocol):
    """One worker's connection: AUTH first, then commands on the shared keyspace."""

    factory: SharedStateFactory

    def connectionMade(self) -> None:
        self._parser = RequestParser()
        self._authenticated = False

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        try:
            commands = self._parser.feed(data)
        except ValueError as error:
            transport.write(encode(CommandError(f"ERR protocol error: {error}")))
            transport.loseConnection()
            return
        transport.write(b"".join(encode(self._run(command)) for command in commands))

    def _run(self, command: list[bytes]) -> Any:
        if not command:
            return CommandError("ERR empty command")
        name, args = command[0].upper(), command[1:]
        if name == b"AUTH":
            self._authenticated = bool(args) and hmac.compare_digest(args[-1], self.factory.password)
            return OK if self._authenticated else CommandError("WRONGPASS invalid password")
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
