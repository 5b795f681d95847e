"""A real twistd nopard and an anonymous client sending a 40 MB body to a route that takes
a few KB: the refusal comes from the first bytes, and the server's peak memory barely moves."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.support import NopardServer, files_under

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


def read_reply(sock: socket.socket) -> bytes:
    """What the server answered, up to the end of the reply or of the connection."""
    data = b""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found and b"content-length: %d" % len(body) in head.lower():
            return data
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


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
