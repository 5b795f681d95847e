"""A real ``redis-server``, started as a subprocess on a free 127.0.0.1 port.

No persistence (``--save "" --appendonly no``), so a restart starts empty; its
working directory and log file live in a temporary directory removed by stop().
``command()`` talks RESP over a raw socket, so tests can look at the keys a
nopard instance left behind without a client library.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.polling import wait_for_start
from tests.support import free_port, stop_process


def encode_command(*args: object) -> bytes:
    """A RESP array of bulk strings: how clients send commands."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection mid-reply")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line


def _read_exactly(sock: socket.socket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection mid-reply")
        buffer += chunk
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def _read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """One whole RESP reply, returned raw (with its CRLFs), nested arrays included."""
    line = _read_line(sock, buffer)
    raw = line + b"\r\n"
    kind = line[:1]
    if kind == b"$":
        size = int(line[1:])
        if size >= 0:
            raw += _read_exactly(sock, buffer, size + 2)
    elif kind == b"*":
        for _ in range(max(int(line[1:]), 0)):
            raw += _read_reply(sock, buffer)
    return raw


class RedisServer:
    """``redis-server`` on a free port; a context manager that stops it."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError(
                "redis-server is not on PATH: install it (apt-get install redis-server; "
                "scripts/test does this)"
            )
        self.port = free_port()
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL to give nopard (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """redis-server's log file (in the temporary directory)."""
        assert self.directory is not None, "start() the server first"
        return self.directory / "redis.log"

    def log(self) -> str:
        """The log so far, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def start(self) -> RedisServer:
        """Start the server (on self.port, again after a stop or kill) and wait for PING."""
        if self.process and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="nopard-redis-"))
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.log_path),
                "--daemonize", "no",
                "--protected-mode", "no",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_for_start(self.process, self.ping, "redis-server", 15, self.log, self._terminate)
        return self

    def ping(self) -> bool:
        """Whether the server answers an inline PING with +PONG."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: object, timeout: float = 5) -> bytes:
        """Send one command (e.g. ``command("KEYS", "*")``) and return its raw RESP reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(encode_command(*args))
            return _read_reply(sock, bytearray())

    def calls(self) -> dict[str, int]:
        """How many times each command ran so far (INFO commandstats), by lower-case name."""
        info = self.command("INFO", "commandstats").decode()
        return {name: int(count) for name, count in re.findall(r"cmdstat_([a-z|]+):calls=(\d+)", info)}

    @contextmanager
    def subscribed(self, channel: str, timeout: float = 10) -> Iterator[Callable[[], str]]:
        """Subscribed to ``channel`` for the block: a function returning the next message published
        on it (socket.timeout past ``timeout`` seconds)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            buffer = bytearray()
            sock.sendall(encode_command("SUBSCRIBE", channel))
            _read_reply(sock, buffer)  # the confirmation: nothing published before it is missed

            def message() -> str:
                reply = _read_reply(sock, buffer).split(b"\r\n")  # *3 $7 message $n channel $n data
                return reply[6].decode()
            yield message

    def _terminate(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL the server (a crash); restart() brings it back, empty, on the same port."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> RedisServer:
        """Stop the server if it runs, then start it again on the same port."""
        self._terminate()
        return self.start()

    def stop(self) -> None:
        """Stop the server and remove its temporary directory."""
        self._terminate()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def shared_state_url(kind: str) -> Iterator[str]:
    """A Redis URL nopard's Redis code paths can use: a real ``redis-server``, or (``supervisor``)
    the keyspace a NOPARD_WORKERS supervisor serves its workers, served on the test's reactor."""
    if kind == "redis-server":
        with RedisServer() as server:
            yield server.url
        return
    import pytest_twisted
    from twisted.internet import reactor

    from nopard.cluster.resp import SharedStateServer
    from nopard.service import shared_keyspace

    shared = SharedStateServer(shared_keyspace(reactor, 64 * 1024 * 1024), reactor)
    shared.startService()
    try:
        yield shared.url
    finally:
        stopped = shared.stopService()
        if stopped is not None:
            pytest_twisted.blockon(stopped)


__all__ = ["RedisServer", "encode_command", "shared_state_url"]
