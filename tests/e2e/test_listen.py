"""Where `twistd -n nopard` listens: Twisted endpoint strings (NOPARD_LISTEN, repeatable --listen),
on TCP ports, a UNIX socket, TLS and a socket systemd hands over (systemd-socket-activate)."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import BIN, free_port, publish_body, stop_process, twistd_env


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a UNIX socket (the Host header still says localhost, as curl sends it)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._socket_path)


def ask(connection: http.client.HTTPConnection, method: str, path: str, body: dict | None = None,
        token: str | None = None) -> tuple[int, Any]:
    """One request; the status and the JSON body (None when it is not JSON)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        return answer.status, (json.loads(data) if data[:1] in (b"{", b"[") else None)
    finally:
        connection.close()


def tcp(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def answers(connect: Callable[[], http.client.HTTPConnection], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if ask(connect(), "GET", "/-/ping")[0] == 200:
                return True
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    return False


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test started; stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop_process(process)


def start(tmp_path: Path, processes: list[subprocess.Popen], args: list[str], env: dict[str, str] | None = None,
          prefix: list[str] | None = None) -> subprocess.Popen:
    """`twistd -n nopard ARGS` (after ``prefix``, a command that runs it), its output in tmp_path/log."""
    command = [*(prefix or []), str(BIN / "twistd"), "-n", "--pidfile=", "nopard", *args]
    log = open(tmp_path / "log", "ab")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                               env=twistd_env({"NOPARD_REGISTRY_PATH": str(tmp_path / "registry"), **(env or {})}))
    processes.append(process)
    return process


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "log").read_text(errors="replace")


def test_a_unix_socket_and_two_tcp_ports_at_once(tmp_path: Path, processes: list[subprocess.Popen]) -> None:
    """Each --listen adds an endpoint; every one answers, and the tarball URLs follow the Host asked."""
    first, second, unix = free_port(), free_port(), tmp_path / "nopard.sock"
    start(tmp_path, processes, [f"--listen=tcp:{first}:interface=127.0.0.1",
                                f"--listen=tcp:{second}:interface=127.0.0.1", f"--listen=unix:{unix}"])
    assert answers(lambda: tcp(first)), log_of(tmp_path)
    assert answers(lambda: tcp(second)) and answers(lambda: UnixConnection(unix))
    status, body = ask(UnixConnection(unix), "PUT", "/-/user/org.couchdb.user:alice",
                       {"_id": "org.couchdb.user:alice", "name": "alice", "password": "pw", "type": "user"})
    assert status == 201, body
    status, _ = ask(tcp(first), "PUT", "/sockets", publish_body("sockets", "1.0.0"), token=body["token"])
    assert status == 201
    for connect, base in ((lambda: tcp(second), f"http://127.0.0.1:{second}"),
                          (lambda: UnixConnection(unix), "http://localhost")):
        status, document = ask(connect(), "GET", "/sockets")
        assert document["versions"]["1.0.0"]["dist"]["tarball"] == f"{base}/sockets/-/sockets-1.0.0.tgz"
    curl = shutil.which("curl")
    if curl:  # what an operator would try first
        out = subprocess.run([curl, "-sS", "--unix-socket", str(unix), "http://localhost/-/ping"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    started = [line for line in log_of(tmp_path).splitlines() if "nopard serving" in line]
    assert started and f"unix:{unix}" in started[0]


def test_nopard_listen_takes_endpoints_separated_by_spaces(tmp_path: Path,
                                                           processes: list[subprocess.Popen]) -> None:
    """NOPARD_LISTEN replaces NOPARD_HOSTNAME/NOPARD_PORT: nothing listens on NOPARD_PORT then."""
    first, second, unused = free_port(), free_port(), free_port()
    start(tmp_path, processes, [], env={"NOPARD_LISTEN": f"tcp:{first}:interface=127.0.0.1\n  tcp:{second}",
                                        "NOPARD_PORT": str(unused)})
    assert answers(lambda: tcp(first)), log_of(tmp_path)
    assert answers(lambda: tcp(second))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", unused), timeout=5).close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, made here with the cryptography package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_tls_with_a_self_signed_certificate(tmp_path: Path, processes: list[subprocess.Popen]) -> None:
    """An ssl: endpoint serves https beside plain http; tarball URLs there say https."""
    key, cert = self_signed(tmp_path)
    plain, secure = free_port(), free_port()
    start(tmp_path, processes, [f"--listen=tcp:{plain}:interface=127.0.0.1",
                                f"--listen=ssl:{secure}:interface=127.0.0.1:privateKey={key}:certKey={cert}"])
    context = ssl.create_default_context(cafile=str(cert))

    def tls() -> http.client.HTTPConnection:
        return http.client.HTTPSConnection("127.0.0.1", secure, timeout=30, context=context)

    assert answers(tls), log_of(tmp_path)
    status, body = ask(tcp(plain), "PUT", "/-/user/org.couchdb.user:alice",
                       {"_id": "org.couchdb.user:alice", "name": "alice", "password": "pw", "type": "user"})
    assert status == 201
    assert ask(tls(), "PUT", "/secure", publish_body("secure", "1.0.0"), token=body["token"])[0] == 201
    _, document = ask(tls(), "GET", "/secure")
    assert document["versions"]["1.0.0"]["dist"]["tarball"] == f"https://127.0.0.1:{secure}/secure/-/secure-1.0.0.tgz"
    with pytest.raises(ssl.SSLError):  # the certificate is checked: a client without it refuses
        ask(http.client.HTTPSConnection("127.0.0.1", secure, timeout=30,
                                        context=ssl.create_default_context()), "GET", "/-/ping")


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing")
def test_socket_activation_with_systemd_socket_activate(tmp_path: Path,
                                                        processes: list[subprocess.Popen]) -> None:
    """systemd-socket-activate listens and hands the socket to nopard, as systemd's nopard.socket would."""
    port = free_port()
    env = twistd_env({"NOPARD_REGISTRY_PATH": str(tmp_path / "registry")})
    # It passes on no environment of its own accord, only what --setenv names; --fdname sets
    # LISTEN_FDNAMES, which systemd always sets and Twisted's systemd: endpoint insists on.
    passed = [f"--setenv={name}" for name in env if name.startswith("NOPARD_") or name in ("PYTHONPATH", "PATH")]
    start(tmp_path, processes, ["--listen=systemd:domain=INET:index=0"],
          prefix=[shutil.which("systemd-socket-activate") or "", "--listen", f"127.0.0.1:{port}",
                  "--fdname=nopard", *passed])
    # The socket listens before nopard runs: the first request starts it (and waits for it).
    assert answers(lambda: tcp(port), seconds=60), log_of(tmp_path)
    assert answers(lambda: tcp(port))


def test_a_bad_endpoint_or_a_port_in_use_stops_startup(tmp_path: Path, processes: list[subprocess.Popen]) -> None:
    """Start-up ends with one line naming the setting, not a nopard that listens nowhere."""
    bad = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "nopard", "--listen=bogus:1234"],
                         cwd=tmp_path, env=twistd_env({"NOPARD_REGISTRY_PATH": str(tmp_path / "r")}),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "nopard: --listen: cannot listen on 'bogus:1234'" in bad.stdout + bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "nopard"], cwd=tmp_path,
                                env=twistd_env({"NOPARD_REGISTRY_PATH": str(tmp_path / "r"),
                                                "NOPARD_PORT": str(taken)}),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Address already in use" in result.stdout + result.stderr
