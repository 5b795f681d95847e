"""deploy/nginx/nopard.conf with a real nginx: it is valid, balances over the instances,
passes Host and the X-Forwarded-* headers nopard builds tarball URLs from, lets big
publishes through, fails over idempotent requests and does not replay the others.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nopard.settings.config import SETTINGS
from nopard.settings.values import parse_size
from tests.nginx_server import CONF, NginxServer, full_config, render
from tests.support import NopardServer, free_port, publish_body

MB = 1024 * 1024


class Backend:
    """A tiny HTTP/1.1 server standing in for one nopard instance.

    It answers JSON naming itself, with the headers and body digest it received; paths
    starting with /drop, when ``drops``, are read whole and then answered by closing the
    connection (an instance dying mid-request).
    """

    def __init__(self, name: str, drops: bool = False) -> None:
        self.name = name
        self.drops = drops
        self.requests: list[tuple[str, str]] = []
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.stopped = False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects

            def setup(self) -> None:
                super().setup()
                with backend.lock:
                    backend.connections.add(self.connection)

            def finish(self) -> None:
                with backend.lock:
                    backend.connections.discard(self.connection)
                super().finish()

            def log_message(self, *args: Any) -> None:
                pass

            def read_body(self) -> tuple[int, str]:
                digest, size = hashlib.sha256(), 0
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    while True:
                        chunk_size = int(self.rfile.readline().split(b";")[0], 16)
                        if chunk_size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            break
                        data = self.rfile.read(chunk_size)
                        self.rfile.readline()
                        digest.update(data)
                        size += len(data)
                else:
                    remaining = int(self.headers.get("Content-Length") or 0)
                    while remaining:
                        data = self.rfile.read(min(remaining, MB))
                        if not data:
                            break
                        digest.update(data)
                        size += len(data)
                        remaining -= len(data)
                return size, digest.hexdigest()

            def handle_any(self) -> None:
                size, sha256 = self.read_body()
                with backend.lock:
                    backend.requests.append((self.command, self.path))
                if backend.drops and self.path.startswith("/drop"):
                    self.close_connection = True
                    return
                body = json.dumps({
                    "backend": backend.name,
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("Host"),
                    "x-forwarded-host": self.headers.get("X-Forwarded-Host"),
                    "x-forwarded-proto": self.headers.get("X-Forwarded-Proto"),
                    "x-forwarded-for": self.headers.get("X-Forwarded-For"),
                    "size": size,
                    "sha256": sha256,
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = handle_any

        return Handler

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if m == method)

    def stop(self) -> None:
        """Stop listening and cut every open connection (nginx's idle keepalive ones too)."""
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def request(
    url: str, method: str = "GET", path: str = "/", body: bytes | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


@pytest.fixture
def backends() -> Iterator[tuple[Backend, Backend]]:
    a, b = Backend("a", drops=True), Backend("b")
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def nginx(backends: tuple[Backend, Backend]) -> Iterator[NginxServer]:
    with NginxServer([backend.port for backend in backends]) as server:
        yield server


def test_rendered_configuration_passes_nginx_t() -> None:
    server = NginxServer([5984, 5985, 5986])
    try:
        result = server.test_config()
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr
    finally:
        server.stop()


def test_render_replaces_the_upstream_servers_and_the_listen_line() -> None:
    rendered = render(CONF.read_text(), [7001, 7002, 7003], 8123)
    upstream = rendered.split("upstream nopard {", 1)[1].split("\n}", 1)[0]
    servers = [line.strip() for line in upstream.splitlines() if line.strip().startswith("server ")]
    assert [line.split()[1] for line in servers] == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    listens = [line.strip() for line in rendered.splitlines() if line.strip().startswith("listen ")]
    assert listens == ["listen 127.0.0.1:8123;"]
    assert "alias /var/lib/nopard/$1;" in rendered and "nginx-nopard-decisions" not in rendered
    assert "/var/cache/" not in rendered


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("server 127.0.0.1:598", "server 10.0.0.1:598"),
        lambda text: text.replace("listen 80;", "listen 8080;"),
        lambda text: text.replace("upstream nopard {", "upstream registry {"),
        lambda text: text.replace("alias /var/lib/nopard/$1;", "alias /srv/npm/$1;"),
        lambda text: text.replace("/var/cache/nginx/nopard-decisions ", "/var/cache/x ", 1),
    ],
)
def test_render_refuses_an_incompatibly_edited_conf(edit: Any) -> None:
    with pytest.raises(ValueError):
        render(edit(CONF.read_text()), [7001], 8123)


def test_client_max_body_size_leaves_the_limit_to_nopard() -> None:
    """nginx lets through at least nopard's default NOPARD_MAX_BODY_SIZE, so nopard's 413 is the one seen."""
    match = re.search(r"^\s*client_max_body_size\s+(\d+[kmg]?)\s*;", CONF.read_text(), re.M)
    assert match is not None
    default = next(setting.default for setting in SETTINGS if setting.name == "max_body_size")
    assert parse_size(match.group(1)) >= parse_size(default)


def test_requests_are_balanced_over_the_instances(nginx: NginxServer) -> None:
    answers = [request(nginx.url, path=f"/pkg-{i}")[1]["backend"] for i in range(10)]
    assert answers.count("a") >= 3 and answers.count("b") >= 3, answers


def test_host_and_forwarded_headers_reach_the_instance(nginx: NginxServer) -> None:
    status, answer = request(
        nginx.url,
        path="/@scope%2fname",
        headers={
            "Host": "registry.example:8080",
            # A client cannot choose the host or scheme of the tarball URLs.
            "X-Forwarded-Host": "spoofed.example",
            "X-Forwarded-Proto": "https",
        },
    )
    assert status == 200
    assert answer["host"] == "registry.example:8080"
    assert answer["x-forwarded-host"] == "registry.example:8080"
    assert answer["x-forwarded-proto"] == "http"
    # Set, so nopard never mistakes a proxied request for one from its own machine.
    assert answer["x-forwarded-for"] == "127.0.0.1"
    # Passed on byte for byte: scoped names keep their %2f.
    assert answer["path"] == "/@scope%2fname"


def test_a_50_mb_publish_passes_through_unspooled(nginx: NginxServer) -> None:
    body = hashlib.sha256(b"nopard").digest() * (50 * MB // 32)
    status, answer = request(nginx.url, "PUT", "/big-package", body=body,
                             headers={"Content-Type": "application/json"})
    assert status == 200
    assert answer["size"] == len(body)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    # proxy_request_buffering off: streamed, not written to nginx's body temp files first.
    assert not any(p.is_file() for p in (nginx.directory / "body").rglob("*"))


def test_a_body_over_client_max_body_size_is_refused_up_front(
    nginx: NginxServer, backends: tuple[Backend, Backend],
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    try:
        connection.putrequest("PUT", "/huge-package")
        connection.putheader("Content-Length", str(201 * MB))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert all(backend.count("PUT") == 0 for backend in backends)


def test_gets_still_succeed_when_an_instance_stops(
    nginx: NginxServer, backends: tuple[Backend, Backend],
) -> None:
    a, b = backends
    warm = {request(nginx.url, path=f"/warm-{i}")[1]["backend"] for i in range(4)}
    assert warm == {"a", "b"}  # both have idle keepalive connections from nginx now
    a.stop()
    for i in range(8):
        status, answer = request(nginx.url, path=f"/after-{i}")
        assert status == 200
        assert answer["backend"] == "b"


def test_an_idempotent_request_is_retried_on_the_other_instance(
    nginx: NginxServer, backends: tuple[Backend, Backend],
) -> None:
    a, b = backends
    for i in range(4):
        status, answer = request(nginx.url, path=f"/drop-{i}")
        assert status == 200 and answer["backend"] == "b"
    assert a.count("GET") >= 1  # a dropped at least one, which b then answered


# A small PUT is left out: whether nginx holds its whole body (and may resend it) depends on
# whether it arrived with the request head, a matter of timing; see the conf's comment.
@pytest.mark.parametrize("method, size", [("POST", 1024), ("POST", 5 * MB), ("PUT", 5 * MB)])
def test_a_post_or_a_streamed_publish_is_not_replayed_on_another_instance(
    nginx: NginxServer, backends: tuple[Backend, Backend], method: str, size: int,
) -> None:
    a, b = backends
    statuses = [request(nginx.url, method, f"/drop-{i}", body=b"x" * size)[0] for i in range(4)]
    assert a.count(method) >= 1, statuses
    # Each request reached exactly one instance: a's drops became 502s, not second attempts on b.
    assert statuses.count(502) == a.count(method)
    assert statuses.count(200) == b.count(method)


def test_nginx_proxies_to_nopard_over_a_unix_socket(tmp_path: Path) -> None:
    """The conf's commented `server unix:...;` alternative, with a real nopard listening on a UNIX
    socket (NOPARD_LISTEN): nginx reaches it, and tarball URLs name nginx's address."""
    [line] = re.findall(r"^[ \t]*#[ \t]*(server unix:\S+;)", CONF.read_text(), re.M)
    sock, port = tmp_path / "nopard.sock", free_port()
    nopard = NopardServer(tmp_path / "nopard", args=(f"--listen=tcp:{port}:interface=127.0.0.1",
                                                     f"--listen=unix:{sock}"))
    nopard.port = port  # NopardServer waits for /-/ping there
    nopard.start()
    try:
        nginx = NginxServer([5984])
        unix_only = re.sub(r"^([ \t]*)server 127\.0\.0\.1:5984[^;\n]*;", lambda m: m.group(1) + re.sub(
            r"unix:\S+;", f"unix:{sock};", line), nginx.snippet, flags=re.M)
        assert f"server unix:{sock};" in unix_only
        nginx.config_path.write_text(full_config(unix_only, nginx.directory))
        with nginx:
            assert request(nginx.url, "GET", "/-/ping")[0] == 200
            token = nopard.token("alice", "pw")
            body = json.dumps(publish_body("over-unix", "1.0.0")).encode()
            status, _ = request(nginx.url, "PUT", "/over-unix", body,
                                {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            assert status == 201
            status, document = request(nginx.url, "GET", "/over-unix")
            assert status == 200
            tarball = document["versions"]["1.0.0"]["dist"]["tarball"]
            assert tarball == f"{nginx.url}/over-unix/-/over-unix-1.0.0.tgz"
    finally:
        nopard.stop()


def test_the_store_location_sends_tarball_files_only(tmp_path: Path) -> None:
    """Whatever file an instance's X-Accel-Redirect names, nginx's store location sends tarballs
    only: a user record, the htpasswd file or a path climbing out are never sent."""
    store = tmp_path / "store"
    (store / "packages/a/tarballs").mkdir(parents=True)
    (store / "packages/a/tarballs/a-1.0.0.tgz").write_bytes(b"TGZ")
    (store / "users").mkdir()
    (store / "users/alice.json").write_bytes(b"SECRET")
    (store / "users/htpasswd").write_bytes(b"SECRET")
    (store / "htpasswd").write_bytes(b"SECRET")  # where older versions kept it

    class Redirecting(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802  # http.server's name
            self.send_response(200 if "/-/" in self.path else 404)
            if "/-/" in self.path:
                self.send_header("X-Accel-Redirect", self.headers["X-Target"])
            self.send_header("Content-Length", "0")
            self.end_headers()

    backend = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=backend.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with NginxServer([backend.server_address[1]], store=store) as nginx:
            def fetch(target: str) -> tuple[int, bytes]:
                connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
                connection.request("GET", "/a/-/a-1.0.0.tgz", headers={"X-Target": target})
                answer = connection.getresponse()
                return answer.status, answer.read()

            assert fetch("/_nopard_store/packages/a/tarballs/a-1.0.0.tgz") == (200, b"TGZ")
            for target in ("/_nopard_store/users/alice.json", "/_nopard_store/users/htpasswd",
                           "/_nopard_store/htpasswd",
                           "/_nopard_store/packages/a/tarballs/../../../users/alice.json",
                           "/_nopard_store/packages/a/tarballs/%2e%2e/%2e%2e/%2e%2e/htpasswd"):
                status, body = fetch(target)
                assert status != 200 and b"SECRET" not in body, (target, status)
    finally:
        backend.shutdown()
        backend.server_close()
