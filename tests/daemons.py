"""The system-service daemon the service tests start: `twistd nopard` daemonizing to ``nobody``,
with the HTTP, process and port helpers the tests check it with (tests/e2e/test_service*.py).
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nopard.ops.daemon import readable_by
from tests.polling import poll_until
from tests.support import BIN, REPO, free_port, temporary_leftovers, twistd_env

INSTALLER = REPO / "scripts" / "install-service"
NOBODY = pwd.getpwnam("nobody")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="daemonizing to another user needs root")


def daemon_python() -> tuple[str, str]:
    """An interpreter nobody can read, and the PYTHONPATH that finds nopard and its packages.

    The suite's virtualenv may come from a Python installed where only root can
    read (pyenv under /root): a daemon dropped to nobody could then not import
    anything lazily. In that case the system Python of the same version runs
    the same packages, as a service's virtualenv would.
    """
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    for python in candidates:
        if not os.access(python, os.X_OK):
            continue
        stdlib = subprocess.run([python, "-c", "import os; print(os.path.dirname(os.__file__))"],
                                capture_output=True, text=True).stdout.strip()
        if stdlib and all(readable_by(d, NOBODY.pw_uid, NOBODY.pw_gid) for d in [stdlib, *site, str(REPO)]):
            path = str(REPO) if python == sys.executable else os.pathsep.join([str(REPO), *dict.fromkeys(site)])
            return python, path
    pytest.skip("no Python whose library the user nobody can read")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def owner_ids(pid: int) -> tuple[list[int], list[int]]:
    """The real, effective, saved and filesystem uids and gids of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    uids = [int(x) for x in re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()]
    gids = [int(x) for x in re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()]
    return uids, gids


def http(port: int, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    """One request; the status and the JSON body."""
    import http.client

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        return answer.status, (json.loads(data) if data.startswith(b"{") else {})
    finally:
        connection.close()


def register(port: int, name: str = "alice") -> str:
    status, body = http(port, "PUT", f"/-/user/org.couchdb.user:{name}",
                        {"_id": f"org.couchdb.user:{name}", "name": name, "password": "pw", "type": "user"})
    assert status == 201, body
    return body["token"]


class Daemon:
    """`twistd nopard` (daemonizing) started from ``cwd`` with NOPARD_* settings."""

    def __init__(self, cwd: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.cwd = cwd
        self.port = int(env.setdefault("NOPARD_PORT", str(free_port())))
        self.env = env
        self.args = args
        self.pid: int | None = None

    def run(self) -> subprocess.CompletedProcess:
        """Start it; twistd returns once the daemon reported it started (or failed)."""
        python, path = daemon_python()
        env = twistd_env(self.env)
        env["PYTHONPATH"] = path
        return subprocess.run([python, str(BIN / "twistd"), *self.args, "nopard"], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=60)

    def start(self, pidfile: Path) -> Daemon:
        result = self.run()
        assert result.returncode == 0, result.stdout + result.stderr
        poll_until(pidfile.exists, f"a PID file {pidfile}")
        self.pid = int(pidfile.read_text())
        poll_until(lambda: self.ping() == 200, "the daemon to answer")
        return self

    def ping(self) -> int | None:
        try:
            return http(self.port, "GET", "/-/ping")[0]
        except OSError:
            return None

    def stop(self) -> None:
        """SIGTERM, then wait until the process is gone."""
        if self.pid and alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            poll_until(lambda: not alive(self.pid), "the daemon to stop on SIGTERM", 40)


def hidden_files(directory: Path) -> list[Path]:
    """Temporary files (every write goes through a dot file) and spool leftovers."""
    return temporary_leftovers(directory)


def dead_pid() -> int:
    """The PID of a process that has just exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def privileged_free_port() -> int:
    """A free TCP port below 1024."""
    for port in range(1023, 900, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")
