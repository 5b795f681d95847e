"""Readmes rendered in a child process nopard starts, talks to over stdin/stdout, and kills past a budget.

A Python thread cannot be stopped, and markdown-it-py needs up to 30 µs a
character on hostile input: in nopard's threads a readme of 500K ``![`` held a
thread of the pool bcrypt logins use for 13 s. Here the rendering runs in one
long-lived child, at a lower CPU priority, one readme at a time; the child is
killed when a rendering outlives ``RENDER_SECONDS`` and started again for the
next one. The child lives as long as nopard (it sees end of file on its stdin
when nopard goes, even after kill -9).

Frames both ways: a 4-byte big-endian length, then UTF-8. The child writes one
byte, ``R``, when it is ready; then per readme sent, ``O`` and the HTML or ``E``
and the error's name.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any, BinaryIO

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nopard.web.readme import RENDER_SECONDS

_LENGTH = struct.Struct(">I")
CHILD_MEMORY = 1024 * 1024 * 1024  # address space: a readme that needs more fails instead of swapping the host
CHILD_NICENESS = 10  # logins and publishes in nopard's own threads win the CPU


class RenderTooSlow(Exception):
    """The rendering outlived its budget: its process was killed."""


class RenderFailed(Exception):
    """The child could not render this readme (an error, or it died)."""


# The child ------------------------------------------------------------------------


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(reader: BinaryIO, writer: BinaryIO) -> None:
    """The child's loop: a readme in, its HTML out, until end of file."""
    from nopard.web.readme import render_readme  # markdown-it and nh3 load in the child only

    writer.write(b"R")
    writer.flush()
    while True:
        head = _read_exactly(reader, _LENGTH.size)
        if head is None:
            return
        body = _read_exactly(reader, _LENGTH.unpack(head)[0])
        if body is None:
            return
        try:
            kind, answer = b"O", render_readme(body.decode("utf-8", "replace")).encode("utf-8", "replace")
        except Exception as error:  # noqa: BLE001 - any failure of one readme is that readme's
            kind, answer = b"E", type(error).__name__.encode()
        writer.write(kind + _LENGTH.pack(len(answer)) + answer)
        writer.flush()


def main() -> None:
    """``python -m nopard.web.readme_worker``: bounded, niced, then serving."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
        os.nice(CHILD_NICENESS)
    except (OSError, ValueError):  # a lower hard limit already, or no permission: render anyway
        pass
    serve(sys.stdin.buffer, sys.stdout.buffer)


# The parent -----------------------------------------------------------------------


class _Child(ProcessProtocol):
    """One child process: its answers parsed, its end reported."""

    def __init__(self, worker: ReadmeWorker) -> None:
        self._worker = worker
        self._buffer = b""
        self.ready = False

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self.ready and self._buffer[:1] == b"R":
            self.ready, self._buffer = True, self._buffer[1:]
            self._worker.child_ready(self)
        while self.ready and len(self._buffer) >= 1 + _LENGTH.size:
            size = _LENGTH.unpack(self._buffer[1:1 + _LENGTH.size])[0]
            end = 1 + _LENGTH.size + size
            if len(self._buffer) < end:
                return
            kind, body, self._buffer = self._buffer[:1], self._buffer[1 + _LENGTH.size:end], self._buffer[end:]
            self._worker.answered(self, kind == b"O", body.decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self._worker.log.warn("readme renderer: {text}", text=data[:2000].decode("utf-8", "replace"),
                              event="readme_worker_stderr")

    def processEnded(self, reason: Failure) -> None:
        self._worker.child_ended(self)


class ReadmeWorker(Service):
    """Renders one readme at a time in a child process, killed past ``budget`` seconds.

    ``render`` fails with RenderTooSlow or RenderFailed; the caller
    (readme_renders.ReadmeRenders) sends the next readme only when the last
    one is answered. ``started``/``killed`` count child processes.
    """

    def __init__(self, reactor: Any, log: Logger, budget: float = RENDER_SECONDS,
                 argv: list[str] | None = None) -> None:
        self._reactor = reactor
        self.log = log
        self._budget = budget
        self._argv = argv or [sys.executable, "-m", "nopard.web.readme_worker"]
        self._child: _Child | None = None
        self._transport: Any = None
        self._waiting: tuple[bytes, Deferred[str]] | None = None  # sent once the child is ready
        self._current: Deferred[str] | None = None
        self._timer: Any = None
        self._alive: dict[_Child, Any] = {}  # every child not yet ended (a killed one takes a moment)
        self._ended: list[Deferred[None]] = []
        self.started = 0
        self.killed = 0

    # Started at the first readme, not with the service: most processes (a CI mirror, nopard-admin's
    # tests, every instance behind a balancer but one) never render a page, and a child that
    # imports the renderer costs each start a Python process.

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._detach()
        if not self._alive:
            return succeed(None)
        ended: Deferred[None] = Deferred()
        self._ended.append(ended)
        for transport in list(self._alive.values()):
            _kill(transport)
        return ended

    def render(self, text: str) -> Deferred[str]:
        """The sanitized HTML of ``text``, rendered in the child."""
        if self._current is not None or self._waiting is not None:
            raise RuntimeError("ReadmeWorker renders one readme at a time")
        body = text.encode("utf-8", "replace")
        frame = _LENGTH.pack(len(body)) + body
        answer: Deferred[str] = Deferred()
        if self._child is None:
            self._spawn()
        assert self._child is not None
        if self._child.ready:
            self._send(frame, answer)
        else:
            self._waiting = (frame, answer)
        return answer

    def _spawn(self) -> None:
        self._child = _Child(self)
        self._transport = self._reactor.spawnProcess(self._child, self._argv[0], self._argv, env=dict(os.environ))
        self._alive[self._child] = self._transport
        self.started += 1

    def _send(self, frame: bytes, answer: Deferred[str]) -> None:
        self._current = answer
        self._timer = self._reactor.callLater(self._budget, self._too_slow)
        self._transport.write(frame)

    def child_ready(self, child: _Child) -> None:
        """The child has loaded the renderer: send what waited for it."""
        if child is self._child and self._waiting is not None:
            frame, answer = self._waiting
            self._waiting = None
            self._send(frame, answer)

    def answered(self, child: _Child, ok: bool, text: str) -> None:
        """One readme's answer came back."""
        if child is not self._child or self._current is None:
            return
        answer, self._current = self._current, None
        self._cancel_timer()
        if ok:
            answer.callback(text)
        else:
            answer.errback(RenderFailed(text))

    def _too_slow(self) -> None:
        self._timer = None
        answer, self._current = self._current, None
        self.killed += 1
        transport = self._transport
        self._detach()
        _kill(transport)
        if self.running:
            self._spawn()  # warm again for the next readme
        if answer is not None:
            answer.errback(RenderTooSlow(f"rendering outlived {self._budget:g} s"))

    def _detach(self) -> None:
        """Forget the current child (being killed, or nopard stopping): what it had in hand fails."""
        self._child = self._transport = None
        self._cancel_timer()
        pending = [d for d in (self._current, self._waiting[1] if self._waiting else None) if d is not None]
        self._current = self._waiting = None
        for answer in pending:
            answer.errback(RenderFailed("the readme renderer's process ended"))

    def child_ended(self, child: _Child) -> None:
        """A child is gone; if it was the current one, what it had in hand failed."""
        self._alive.pop(child, None)
        if child is self._child:
            self._detach()
        if not self._alive:
            ended, self._ended = self._ended, []
            for waiter in ended:
                waiter.callback(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _kill(transport: Any) -> None:
    try:
        transport.signalProcess("KILL")
    except ProcessExitedAlready:
        pass


if __name__ == "__main__":
    main()
