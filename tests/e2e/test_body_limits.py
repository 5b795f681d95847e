"""A real twistd nopard and an anonymous client sending a 40 MB body to a route that takes
a few KB: the refusal comes from the first bytes, and the server's peak memory barely moves;
and one sending many large bodies at once: only its budget of bytes in flight is kept."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from tests.polling import poll_until
from tests.support import NopardServer, files_under, read_reply

MB = 1024 * 1024
# `[0,0,...]`: parsed whole, it took nopard from 92 MB to 617 MB of peak memory.
ZEROS = b"[" + b"0," * (20 * MB - 1) + b"0]"
PIECE = 64 * 1024


def peak_rss(server: NopardServer) -> int:
    """The server's peak resident memory so far (VmHWM), in bytes."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def assert_refused_as_too_large(reply: bytes) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b"content-type: application/json" in head.lower()
    assert "larger than 16384 bytes" in json.loads(body)["error"]


def test_an_anonymous_40mb_login_body_is_refused_within_bounded_memory(nopard: NopardServer) -> None:
    """PUT /-/user/org.couchdb.user:x with 40 MB of `[0,0,...]`, declared, then chunked:
    413 JSON each time, peak RSS within 30 MB of what it was, nothing stored, still serving."""
    path = b"/-/user/org.couchdb.user:x"
    assert nopard.request("GET", "/-/ping").status == 200
    before, stored = peak_rss(nopard), files_under(nopard.registry)

    with socket.create_connection(("127.0.0.1", nopard.port), timeout=30) as sock:
        sock.sendall(b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (path, len(ZEROS)))
        assert_refused_as_too_large(read_reply(sock))  # before a byte of the body was sent

    with socket.create_connection(("127.0.0.1", nopard.port), timeout=30) as sock:
        sock.sendall(b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" % path)
        sent = 0
        try:
            for offset in range(0, len(ZEROS), PIECE):
                piece = ZEROS[offset:offset + PIECE]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except OSError:
            pass  # the server stopped reading and closed: what is tested
        assert_refused_as_too_large(read_reply(sock))
    assert sent < len(ZEROS)

    assert nopard.request("GET", "/-/ping").status == 200
    assert peak_rss(nopard) - before < 30 * MB
    assert files_under(nopard.registry) == stored


class SilentUpstream:
    """An upstream that reads every request and never answers: audits forwarded to it stay in
    flight (their bodies held by nopard) until nopard's upstream timeout."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        with connection:
            try:
                while chunk := connection.recv(1 << 20):
                    self.received += len(chunk)
            except OSError:
                pass  # nopard stopped


def test_concurrent_audit_bodies_from_one_address_are_bounded(start_nopard: Callable[..., NopardServer]) -> None:
    """Eight anonymous chunked 16 MB audits at once from one address, to an upstream that never
    answers: three (NOPARD_MAX_BODY_SIZE 16 MB: a 48 MB budget) are read and forwarded, the others
    refused 429 JSON with Retry-After; peak memory grows by less than five bodies; ping answers."""
    upstream = SilentUpstream()
    nopard = start_nopard({"NOPARD_MAX_BODY_SIZE": "16mb", "NOPARD_FORWARDER_URL": f"http://127.0.0.1:{upstream.port}/",
                           "NOPARD_UPSTREAM_TIMEOUT": "120"})
    before = peak_rss(nopard)
    body = b"[" + b" " * (16 * MB - 2 * PIECE - 2) + b"]"
    connections = [socket.create_connection(("127.0.0.1", nopard.port), timeout=30) for _ in range(8)]
    for sock in connections:
        sock.sendall(b"POST /-/npm/v1/security/advisories/bulk HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")

    def send(sock: socket.socket) -> None:
        try:
            for offset in range(0, len(body), PIECE):
                piece = body[offset:offset + PIECE]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused: the server closed

    senders = [threading.Thread(target=send, args=(sock,)) for sock in connections]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    poll_until(lambda: upstream.received >= 3 * len(body), timeout=60)  # three audits held, in memory

    refusals = [sock for sock in connections if read_reply_now(sock).startswith(b"HTTP/1.1 429 ")]
    assert len(refusals) == 5
    assert nopard.request("GET", "/-/ping").status == 200
    assert peak_rss(nopard) - before < 5 * 16 * MB  # unbounded, eight bodies took more than 8 * 16 MB
    for sock in connections:
        sock.close()
    upstream.listener.close()


def read_reply_now(sock: socket.socket) -> bytes:
    """A reply already sent on ``sock`` (or b"" when the server is still on it)."""
    sock.settimeout(0.5)
    try:
        return read_reply(sock)
    except TimeoutError:
        return b""
