"""Helpers for end-to-end tests: a real `twistd -n nopard` process, plain HTTP,
and the real npm CLI with its own configuration and cache.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect

from tests.polling import poll_until, wait_for_start

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()  # ports free_port gave this process: never given twice


def free_port() -> int:
    """A TCP port nothing uses right now, for a server a test starts on it.

    Drawn below the kernel's ephemeral range: a port the kernel picks (binding port 0) is one it
    also gives outgoing connections their local ports from, so a client of another test could
    take it before the server binds it (seen once: "Address already in use" in test_listen).
    """
    low = _ephemeral_ports_start()
    for _attempt in range(1000):
        port = max(1024, low - 12000) + secrets.randbelow(12000)
        if port >= low or port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:  # no room below the range on this machine: the kernel's pick
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_ports_start() -> int:
    """The first port of the kernel's range for outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def twistd_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a twistd that finds this checkout's nopard and plugin (a None in ``extra`` unsets).

    NOPARD_FORWARDER_URL is none unless ``extra`` sets it: unset, nopard would mirror whatever
    registry this machine's npm uses (tests/e2e/test_first_run.py), and tests talk to loopback only.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPARD_")}
    env["PYTHONPATH"] = str(REPO)
    env["NOPARD_FORWARDER_URL"] = "none"
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@contextmanager
def in_tree_build() -> Iterator[None]:
    """Hold this checkout's build lock while `pip install .` runs: pip builds in the checkout
    (build/, nopard.egg-info), and two builds at once (pytest-xdist workers) break each other's."""
    (REPO / "build").mkdir(exist_ok=True)
    with open(REPO / "build" / ".tests-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# Written by nopard at start (NOPARD_ADMIN_TOKEN_FILE's default), not by any request.
OPERATOR_TOKEN_FILE = ".nopard-admin-token"


def files_under(path: Path) -> list[str]:
    """Every file below ``path``, relative, sorted: what a rejected request must not change
    (the operator token nopard writes when it starts left out)."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != OPERATOR_TOKEN_FILE)


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL when it takes longer than ``timeout`` s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def temporary_leftovers(directory: Path) -> list[Path]:
    """Dot files a write or download left behind (every write goes through one); the fs
    backend's lock files under ``.locks/`` and the operator token are meant to stay."""
    return [p for p in directory.rglob(".*")
            if ".locks" not in p.relative_to(directory).parts and p.name != OPERATOR_TOKEN_FILE]


@dataclass
class Response:
    """An HTTP answer, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class NopardServer:
    """`twistd -n nopard` started as a subprocess on a free port."""

    def __init__(self, workdir: Path, env: dict[str, str | None] | None = None, args: tuple = (),
                 own_group: bool = False) -> None:
        self.workdir = workdir
        self.own_group = own_group  # in a process group (session) of its own, as systemd runs it
        self.port = free_port()
        self.registry = workdir / "registry"
        self.log_path = workdir / "twistd.log"
        self._env = {
            "NOPARD_PORT": str(self.port),
            "NOPARD_REGISTRY_PATH": str(self.registry),
            **(env or {}),
        }
        self._args = args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The registry URL clients are pointed at (with a trailing slash)."""
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> NopardServer:
        """Start and wait until /-/ping answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "nopard", *self._args],
            cwd=self.workdir, env=twistd_env(self._env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=self.own_group,
        )
        wait_for_start(self.process, lambda: self.request("GET", "/-/ping").status == 200, "nopard", 30, self.log)
        return self

    def stop(self) -> None:
        """SIGTERM, and wait for a clean exit."""
        stop_process(self.process, timeout=20)

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Response:
        """One HTTP request to the server; JSON-encodes dict bodies."""
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        finally:
            connection.close()

    def operator_headers(self) -> dict[str, str]:
        """The header nopard-admin sends: the operator token this nopard wrote at start."""
        registry = Path(self._env["NOPARD_REGISTRY_PATH"])  # a test may share another server's
        path = self._env.get("NOPARD_ADMIN_TOKEN_FILE") or registry / ".nopard-admin-token"
        token = Path(path).read_text().strip()
        return {"X-Nopard-Operator-Token": token}

    def login(self, name: str, password: str, email: str | None = "x@example.com") -> Response:
        """The legacy login/registration PUT npm sends."""
        body = {"_id": f"org.couchdb.user:{name}", "name": name, "password": password,
                "type": "user", "roles": [], "date": "2026-01-01T00:00:00.000Z"}
        if email:
            body["email"] = email
        return self.request("PUT", f"/-/user/org.couchdb.user:{name}", body)

    def token(self, name: str, password: str) -> str:
        """Log in and return the token."""
        answer = self.login(name, password)
        assert answer.status == 201, answer.body
        return answer.json()["token"]


def tarball_bytes(name: str, version: str) -> bytes:
    """Stand-in tarball bytes, distinct per name and version."""
    return f"tarball of {name}@{version}".encode() * 8


def publish_body(
    name: str, version: str, data: bytes | None = None, tag: str = "latest", **manifest: Any
) -> dict[str, Any]:
    """A publish body shaped exactly as npm 11 sends it."""
    data = tarball_bytes(name, version) if data is None else data
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    filename = f"{name}-{version}.tgz"
    return {
        "_id": name,
        "name": name,
        "description": manifest.get("description", f"{name} for tests"),
        "dist-tags": {tag: version},
        "versions": {
            version: {
                "name": name, "version": version, "_id": f"{name}@{version}",
                "readme": f"# {name}", "_nodeVersion": "20.0.0", "_npmVersion": "11.0.0",
                **manifest,
                "dist": {"integrity": integrity, "shasum": hashlib.sha1(data).hexdigest(),
                         "tarball": f"http://127.0.0.1/{name}/-/{filename}"},
            }
        },
        "access": None,
        "_attachments": {
            filename: {"content_type": "application/octet-stream",
                       "data": base64.b64encode(data).decode(), "length": len(data)}
        },
    }


def clients_bin() -> Path:
    """Where scripts/test installed the real clients."""
    location = os.environ.get("NOPARD_TEST_CLIENTS") or str(REPO / ".cache" / "clients" / "node_modules" / ".bin")
    path = Path(location)
    if not (path / "npm").exists():
        raise RuntimeError(f"npm is not installed in {path}: run the tests with scripts/test")
    return path


@dataclass
class Npm:
    """The real npm CLI with its own userconfig, cache and HOME, pointed at a registry."""

    registry: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.userconfig = self.home / ".npmrc"
        if not self.userconfig.exists():
            self.userconfig.write_text("update-notifier=false\nfund=false\naudit=false\n")
        (self.home / "globalnpmrc").touch()
        npm_bin = clients_bin()
        self.executable = str(npm_bin / "npm")
        self.env = {
            "PATH": f"{npm_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(self.home),
            "npm_config_userconfig": str(self.userconfig),
            "npm_config_globalconfig": str(self.home / "globalnpmrc"),
            "npm_config_cache": str(self.home / "cache"),
            "npm_config_registry": self.registry,
            "npm_config_loglevel": "warn",
            "NO_COLOR": "1",
            **self.env,
        }

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``npm args...``; fail with its output unless it exits 0 (when ``check``)."""
        result = subprocess.run(
            [self.executable, *args], cwd=cwd or self.home, env=self.env,
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"npm {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def login(self, command: str, user: str, password: str, email: str = "x@example.com") -> tuple[int, str]:
        """Answer npm's interactive login/adduser prompts; return (exit status, output)."""
        # --auth-type=legacy: nopard also offers npm 11's default web login (tests/e2e/test_tokens_weblogin.py).
        child = pexpect.spawn(self.executable, [command, "--auth-type=legacy"], env=self.env, cwd=str(self.home),
                              encoding="utf-8", timeout=60)
        answers = {0: user, 1: password, 2: email}
        while True:
            index = child.expect([r"[Uu]sername: ", r"[Pp]assword: ", r"[Ee]mail[^:]*: ", pexpect.EOF])
            if index == 3:
                break
            child.sendline(answers[index])
        output = child.before or ""
        child.close()
        return child.exitstatus, output

    def prompted(self, *args: str, answers: dict[str, Callable[[str], str]]) -> tuple[int, str]:
        """Run ``npm args...`` on a terminal, answering each prompt matching a pattern of ``answers``
        with what its function returns, given what npm printed so far; (exit status, all npm printed)."""
        child = pexpect.spawn(self.executable, list(args), env=self.env, cwd=str(self.home), encoding="utf-8",
                              timeout=60)
        patterns = list(answers)
        printed = ""
        while True:
            index = child.expect([*patterns, pexpect.EOF])
            printed += (child.before or "") + (child.after if isinstance(child.after, str) else "")
            if index == len(patterns):
                break
            child.sendline(answers[patterns[index]](printed))
        child.close()
        return child.exitstatus, printed

    def token(self) -> str | None:
        """The token npm saved for the registry, if any."""
        for line in self.userconfig.read_text().splitlines():
            if ":_authToken=" in line:
                return line.split("=", 1)[1]
        return None


def make_package(directory: Path, name: str, version: str, **extra: Any) -> Path:
    """Write a small publishable package into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "version": version, "description": f"{name} test package",
                "main": "index.js", "license": "MIT", **extra}
    (directory / "package.json").write_text(json.dumps(manifest))
    (directory / "index.js").write_text(f"module.exports = {json.dumps(name + '@' + version)};\n")
    (directory / "README.md").write_text(f"# {name}\n\nversion {version}\n")
    return directory


def new_project(source: Path, target: Path, with_lock: bool) -> Path:
    """A copy of a project's package.json (and its lockfile, when asked) in a new directory."""
    target.mkdir(parents=True)
    shutil.copy(source / "package.json", target / "package.json")
    if with_lock:
        shutil.copy(source / "package-lock.json", target / "package-lock.json")
    return target


def locked_versions(project: Path) -> dict[str, str]:
    """Install path -> version, from a project's package-lock.json."""
    lock = json.loads((project / "package-lock.json").read_text())
    return {path: entry["version"] for path, entry in lock["packages"].items() if path}


def pack(directory: Path) -> bytes:
    """A gzipped npm tarball of ``directory``'s files under ``package/``, as `npm pack` lays it out."""
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo("package/" + path.relative_to(directory).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def publish_directory(server: NopardServer, token: str, directory: Path) -> Response:
    """Publish the package in ``directory`` over HTTP, as npm 11 would (a real tarball)."""
    manifest = json.loads((directory / "package.json").read_text())
    extra = {k: v for k, v in manifest.items() if k not in ("name", "version")}
    body = publish_body(manifest["name"], manifest["version"], data=pack(directory), **extra)
    return server.request("PUT", "/" + manifest["name"].replace("/", "%2f"), body, token=token)


def until_upstream_down(server: NopardServer, path: str) -> None:
    """Read ``path`` until nopard's breaker counts the upstream as down (the fake must be failing).

    After the first failure, stale reads no longer wait on the upstream and one revalidation at a
    time runs in the background, so how many reads it takes depends on timing.
    """
    def down() -> bool:
        server.request("GET", path)
        return server.request("GET", "/-/nopard/status").json()["upstreams"][0]["state"] != "closed"

    poll_until(down, f"the upstream to count as down while {path} is read")


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
