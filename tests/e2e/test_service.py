"""nopard as a system service: a real daemon (PID file, run-as user, logfile,
SIGTERM, stale PID files) and the installer with its systemd and Upstart units.

The daemon tests run as root and drop to ``nobody``, so everything the daemon
touches lives in world-readable temporary directories made here (pytest's own
tmp_path is private to root). The installer tests install into a fake root
(``scripts/install-service --root``): no user or file is left on the machine.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from nopard.ops.daemon import readable_by
from tests.polling import PollTimeout, poll_text, poll_until
from tests.support import BIN, REPO, free_port, publish_body, temporary_leftovers, twistd_env

INSTALLER = REPO / "scripts" / "install-service"
NOBODY = pwd.getpwnam("nobody")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="daemonizing to another user needs root")


# Helpers ------------------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory every user can enter (the daemon hands parts of it to nobody)."""
    path = Path(tempfile.mkdtemp(prefix="nopard-service-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running afterwards is killed (by its PID)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.pid and alive(daemon.pid):
            os.kill(daemon.pid, signal.SIGKILL)
            with suppress(PollTimeout):
                poll_until(lambda pid=daemon.pid: not alive(pid), "the killed daemon to be gone", 10)


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


# The daemon -------------------------------------------------------------------------------


@needs_root
def test_daemon_pid_file_run_as_user_logfile_and_graceful_sigterm(open_dir: Path, daemons: list[Daemon]) -> None:
    """`twistd nopard` daemonizes: PID file in NOPARD_RUN_PATH, process owned by
    NOPARD_RUNAS_USER, working in NOPARD_HOME, logging to NOPARD_LOGFILE; SIGTERM lets a
    request in flight finish, removes the PID file and leaves no temporary file."""
    home = open_dir / "home"
    daemon = Daemon(open_dir, {
        "NOPARD_HOME": str(home), "NOPARD_RUN_PATH": "run", "NOPARD_RUNAS_USER": "nobody",
        "NOPARD_LOGFILE": "log/nopard.log", "NOPARD_REGISTRY_PATH": "registry",
    })
    daemons.append(daemon)
    pidfile, logfile, registry = home / "run" / "nopard.pid", home / "log" / "nopard.log", home / "registry"
    result = daemon.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    poll_until(pidfile.exists, "the PID file")
    daemon.pid = int(pidfile.read_text())
    poll_until(lambda: daemon.ping() == 200, "the daemon to answer")

    uids, gids = owner_ids(daemon.pid)
    assert uids == [NOBODY.pw_uid] * 4 and gids == [NOBODY.pw_gid] * 4
    assert os.readlink(f"/proc/{daemon.pid}/cwd") == str(home)
    # Detached: a session of its own (twistd's double fork), not a child of the starter.
    assert os.getsid(daemon.pid) not in (os.getsid(0), daemon.pid)
    assert int(Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
    for directory in (registry, home / "run", home / "log"):
        assert directory.stat().st_uid == NOBODY.pw_uid, directory
    token = register(daemon.port)
    assert (registry / "htpasswd").stat().st_uid == NOBODY.pw_uid

    # A publish whose body is still arriving when SIGTERM comes.
    body = json.dumps(publish_body("slow-pkg", "1.0.0")).encode()
    connection = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    connection.sendall(
        b"PUT /slow-pkg HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (token.encode(), len(body)) + body[:500]
    )
    time.sleep(0.3)
    os.kill(daemon.pid, signal.SIGTERM)
    poll_text(logfile.read_text, "waiting for 1 requests in flight", 10)
    assert daemon.ping() is None  # no new connections once stopping
    connection.sendall(body[500:])
    answer = connection.recv(65536).decode()
    connection.close()
    assert answer.startswith("HTTP/1.1 201 "), answer
    poll_until(lambda: not alive(daemon.pid), "the daemon to stop on SIGTERM", 40)

    assert not pidfile.exists()
    assert hidden_files(registry) == []
    assert json.loads((registry / "packages" / "slow-pkg" / "package.json").read_text())["name"] == "slow-pkg"
    log = logfile.read_text()
    assert "starting up" in log
    assert f"set uid/gid {NOBODY.pw_uid}/{NOBODY.pw_gid}" in log
    assert any("/-/ping" in line and "200" in line for line in log.splitlines())
    assert any("/slow-pkg" in line and "201" in line for line in log.splitlines())
    assert "Server Shut Down." in log
    assert not (open_dir / "twistd.log").exists() and not (home / "twistd.log").exists()
    assert not (open_dir / "twistd.pid").exists()


@needs_root
@pytest.mark.parametrize("content", ["dead", "", "garbage\n"])
def test_a_stale_pid_file_does_not_prevent_a_start(open_dir: Path, daemons: list[Daemon], content: str) -> None:
    """A PID file left by a crash (its process gone, or half written) is removed at start."""
    run = open_dir / "run"
    run.mkdir()
    pidfile = run / "nopard.pid"
    stale = str(dead_pid()) if content == "dead" else content
    pidfile.write_text(stale)
    daemon = Daemon(open_dir, {"NOPARD_RUN_PATH": str(run), "NOPARD_RUNAS_USER": "nobody",
                               "NOPARD_LOGFILE": str(open_dir / "nopard.log"),
                               "NOPARD_REGISTRY_PATH": str(open_dir / "registry")})
    daemons.append(daemon)
    daemon.start(pidfile)
    assert str(daemon.pid) != stale
    log = (open_dir / "nopard.log").read_text()
    assert f"removed stale PID file {pidfile}" in log
    assert f"{run} is not writable by user nobody" in log
    daemon.stop()
    # The run directory is root's, so nobody could not remove the PID file: the next start copes.
    assert pidfile.read_text() == str(daemon.pid)
    second = Daemon(open_dir, dict(daemon.env, NOPARD_PORT=str(free_port())))
    daemons.append(second)
    second.start(pidfile)
    second.stop()


@needs_root
def test_a_second_start_is_refused_while_the_first_runs(open_dir: Path, daemons: list[Daemon]) -> None:
    """A PID file whose process runs stops a second start with one line; the first goes on."""
    env = {"NOPARD_RUN_PATH": str(open_dir / "run"), "NOPARD_RUNAS_USER": "nobody",
           "NOPARD_LOGFILE": str(open_dir / "nopard.log"), "NOPARD_REGISTRY_PATH": str(open_dir / "registry")}
    first = Daemon(open_dir, dict(env))
    daemons.append(first)
    pidfile = open_dir / "run" / "nopard.pid"
    first.start(pidfile)
    result = Daemon(open_dir, dict(env)).run()
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"nopard: NOPARD_RUN_PATH: nopard is already running as PID {first.pid} ({pidfile})"
    ]
    assert alive(first.pid) and first.ping() == 200
    first.stop()
    assert not pidfile.exists()  # the run directory nopard created belongs to nobody


@needs_root
def test_twistd_options_win_over_nopard_variables(open_dir: Path, daemons: list[Daemon]) -> None:
    """--pidfile, --uid and --logfile beat NOPARD_RUN_PATH, NOPARD_RUNAS_USER and NOPARD_LOGFILE."""
    pidfile, twistd_log = open_dir / "custom.pid", open_dir / "twistd-own.log"
    daemon = Daemon(
        open_dir,
        {"NOPARD_RUN_PATH": str(open_dir / "run"), "NOPARD_RUNAS_USER": "root",
         "NOPARD_LOGFILE": str(open_dir / "nopard.log"), "NOPARD_REGISTRY_PATH": str(open_dir / "registry")},
        args=(f"--pidfile={pidfile}", "--uid=nobody", f"--logfile={twistd_log}"),
    )
    daemons.append(daemon)
    daemon.start(pidfile)
    assert owner_ids(daemon.pid)[0] == [NOBODY.pw_uid] * 4
    assert not (open_dir / "run").exists()
    assert not (open_dir / "nopard.log").exists()
    daemon.stop()
    log = twistd_log.read_text()
    assert "starting up" in log and "Server Shut Down." in log
    assert any("/-/ping" in line and "200" in line for line in log.splitlines())


@needs_root
def test_a_port_below_1024_is_bound_before_privileges_are_dropped(open_dir: Path, daemons: list[Daemon]) -> None:
    """Root binds the port; only then does the process become nobody, and it serves."""
    daemon = Daemon(open_dir, {"NOPARD_PORT": str(privileged_free_port()), "NOPARD_RUN_PATH": str(open_dir / "run"),
                               "NOPARD_RUNAS_USER": "nobody", "NOPARD_LOGFILE": str(open_dir / "nopard.log"),
                               "NOPARD_REGISTRY_PATH": str(open_dir / "registry")})
    daemons.append(daemon)
    daemon.start(open_dir / "run" / "nopard.pid")
    assert owner_ids(daemon.pid)[0] == [NOBODY.pw_uid] * 4
    register(daemon.port)
    daemon.stop()


@needs_root
def test_run_as_mistakes_stop_startup_with_one_line(open_dir: Path) -> None:
    """An unknown user, or a registry that user cannot write, is named before anything starts."""
    environment = {"NOPARD_RUNAS_USER": "no-such-user-here", "NOPARD_RUN_PATH": str(open_dir / "run")}
    result = Daemon(open_dir, environment).run()
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["nopard: NOPARD_RUNAS_USER: there is no user 'no-such-user-here'"]
    assert not (open_dir / "run").exists()

    registry = open_dir / "roots-registry"
    registry.mkdir(mode=0o755)
    result = Daemon(open_dir, {"NOPARD_RUNAS_USER": "nobody", "NOPARD_REGISTRY_PATH": str(registry),
                               "NOPARD_RUN_PATH": str(open_dir / "run")}).run()
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"nopard: NOPARD_REGISTRY_PATH: {registry} is not writable by user nobody (chown -R nobody {registry})"
    ]


# The installer and the units ----------------------------------------------------------------


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(INSTALLER), *args, "--root", str(root)], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, mode, owner and content."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        state[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, content)
    return state


def passwd_entry(root: Path, user: str) -> list[str]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        if line.startswith(f"{user}:"):
            return line.split(":")
    raise AssertionError(f"no user {user} in {root}/etc/passwd")


def systemd_root(root: Path) -> Path:
    """``root`` with the system's own units, which `systemd-analyze verify --root` loads too."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: scripts/test installs it (apt-get install systemd)")
    target = root / "usr" / "lib" / "systemd" / "system"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree("/usr/lib/systemd/system", target, symlinks=True)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "nopard.service"],
                          capture_output=True, text=True, timeout=120)


@needs_root
def test_install_service_systemd_into_a_fake_root_and_again_changes_nothing(tmp_path: Path) -> None:
    """User, directories, settings file and unit are made once; a second run changes nothing."""
    root = tmp_path / "root"
    root.mkdir()
    host_users = Path("/etc/passwd").read_text()
    first = install(root, "systemd", "--no-venv")
    assert "+ create system user nopard" in first.stdout
    assert Path("/etc/passwd").read_text() == host_users  # the user went into the fake root only

    entry = passwd_entry(root, "nopard")
    uid, gid = int(entry[2]), int(entry[3])
    assert uid < 1000 and entry[5] == "/var/lib/nopard" and entry[6].endswith("nologin")
    for directory in ("var/lib/nopard", "var/log/nopard"):
        info = (root / directory).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (uid, gid, 0o750), directory
    defaults = root / "etc" / "default" / "nopard"
    assert defaults.stat().st_mode & 0o777 == 0o600
    lines = defaults.read_text().splitlines()
    assert all(not line or line.startswith("#") for line in lines)
    from nopard.settings.config import SETTINGS
    assert all(f"#{s.env}=" in defaults.read_text() for s in SETTINGS)
    unit = root / "etc" / "systemd" / "system" / "nopard.service"
    assert unit.read_text() == (REPO / "systemd" / "nopard.service").read_text()
    assert not (root / "opt").exists()

    before = snapshot(root)
    second = install(root, "systemd", "--no-venv")
    assert second.stdout.strip() == "nopard (systemd): already installed, nothing to change"
    assert snapshot(root) == before

    defaults.write_text("NOPARD_PORT=4873\n")
    install(root, "systemd", "--no-venv")
    assert defaults.read_text() == "NOPARD_PORT=4873\n"  # the admin's settings are never overwritten


def test_install_service_dry_run_changes_nothing(tmp_path: Path) -> None:
    """--dry-run says what it would do and leaves the root as it was."""
    root = tmp_path / "root"
    root.mkdir()
    result = install(root, "upstart", "--dry-run", "--no-venv")
    assert "would: create system user nopard" in result.stdout
    assert "would: install /etc/init/nopard.conf" in result.stdout
    assert "dry run: none made" in result.stdout
    assert list(root.iterdir()) == []


@needs_root
def test_install_service_upstart_job_follows_the_prefix(tmp_path: Path) -> None:
    """The Upstart job lands in /etc/init, runs the virtualenv's twistd in the foreground
    and drops to the nopard user; its script is valid shell."""
    root = tmp_path / "root"
    root.mkdir()
    install(root, "upstart", "--no-venv", "--prefix", "/srv/nopard")
    job = (root / "etc" / "init" / "nopard.conf").read_text()
    assert "exec /srv/nopard/bin/twistd --nodaemon nopard" in job and "/opt/nopard" not in job
    assert "env NOPARD_RUNAS_USER=nopard" in job
    assert re.search(r"^respawn$", job, re.M) and re.search(r"^kill timeout \d+$", job, re.M)
    stanzas = {line.split()[0] for line in re.sub(r"(?ms)^script$.*?^end script$", "", job).splitlines()
               if line.strip() and not line.startswith("#")}
    assert stanzas <= {"description", "start", "stop", "respawn", "kill", "normal", "console", "env", "chdir",
                       "umask", "setuid", "setgid", "limit"}, stanzas
    script = re.search(r"(?ms)^script$(.*?)^end script$", job).group(1)
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "/etc/default/nopard" in script
    assert install(root, "upstart", "--no-venv", "--prefix", "/srv/nopard").stdout.strip() == (
        "nopard (upstart): already installed, nothing to change"
    )


def test_systemd_unit_settings() -> None:
    """The unit runs as its own user, in the foreground, restarts on failure, and is sandboxed."""
    unit = (REPO / "systemd" / "nopard.service").read_text()
    lines = set(unit.splitlines())
    for expected in (
        "User=nopard", "EnvironmentFile=-/etc/default/nopard", "ExecStart=/opt/nopard/bin/twistd --nodaemon nopard",
        "Restart=on-failure", "ProtectSystem=strict", "ReadWritePaths=/var/lib/nopard /var/log/nopard",
        "NoNewPrivileges=yes", "PrivateTmp=yes", "Environment=NOPARD_REGISTRY_PATH=/var/lib/nopard",
        "Environment=NOPARD_RUN_PATH=/run/nopard", "RuntimeDirectory=nopard",
    ):
        assert expected in lines, expected


def test_systemd_socket_unit_hands_its_socket_to_the_service() -> None:
    """nopard.socket listens where nopard would; the drop-in makes nopard take that socket
    (the endpoint tests/e2e/test_listen.py runs under systemd-socket-activate)."""
    socket_unit = set((REPO / "systemd" / "nopard.socket").read_text().splitlines())
    assert {"[Socket]", "ListenStream=127.0.0.1:5984", "WantedBy=sockets.target"} <= socket_unit
    drop_in = set((REPO / "systemd" / "nopard.service.d" / "socket.conf").read_text().splitlines())
    assert {"Requires=nopard.socket", "After=nopard.socket",
            "Environment=NOPARD_LISTEN=systemd:domain=INET:index=0"} <= drop_in
    empty = Path(tempfile.mkdtemp())
    refused = install(empty, "upstart", "--socket", "--dry-run", "--no-venv", check=False)
    empty.rmdir()
    assert refused.returncode == 2 and "--socket is for systemd only" in refused.stderr


@needs_root
def test_installed_service_verifies_and_runs(open_dir: Path, daemons: list[Daemon]) -> None:
    """A full install into a fake root (virtualenv with `pip install .` from this checkout):
    `systemd-analyze verify` accepts the unit, and the installed twistd serves as nobody."""
    root = open_dir / "root"
    root.mkdir()
    first = install(root, "systemd")
    assert "+ install nopard from" in first.stdout
    twistd = root / "opt" / "nopard" / "bin" / "twistd"
    assert os.access(twistd, os.X_OK)
    assert install(root, "systemd").stdout.strip() == "nopard (systemd): already installed, nothing to change"

    systemd_root(root)
    result = verify(root)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # The check has teeth: a unit whose program is missing fails it.
    twistd.rename(twistd.with_name("twistd.moved"))
    broken = verify(root)
    assert broken.returncode != 0 and "/opt/nopard/bin/twistd" in broken.stderr
    twistd.with_name("twistd.moved").rename(twistd)

    # Socket activation: --socket adds nopard.socket and the drop-in; both verify with the service.
    with_socket = install(root, "systemd", "--socket")
    assert "+ install /etc/systemd/system/nopard.socket" in with_socket.stdout
    assert "+ install /etc/systemd/system/nopard.service.d/socket.conf" in with_socket.stdout
    assert install(root, "systemd", "--socket").stdout.strip() == (
        "nopard (systemd): already installed, nothing to change")
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "nopard.socket", "nopard.service"],
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    # The installed nopard runs as a service would under Upstart: root binds, then nobody serves.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOPARD_", "PYTHON"))}
    env.update(NOPARD_PORT=str(free_port()), NOPARD_FORWARDER_URL="none", NOPARD_RUNAS_USER="nobody",
               NOPARD_HOME=str(open_dir / "state"),
               NOPARD_REGISTRY_PATH=str(open_dir / "state"), NOPARD_RUN_PATH=str(open_dir / "run"))
    process = subprocess.Popen([str(twistd), "--nodaemon", "nopard"], cwd=open_dir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    daemon = Daemon(open_dir, dict(env))
    daemon.pid = process.pid
    daemons.append(daemon)
    try:
        poll_until(lambda: daemon.ping() == 200 or process.poll() is not None, "the service to answer or exit", 30)
        assert process.poll() is None, process.stdout.read()
        assert owner_ids(process.pid)[0] == [NOBODY.pw_uid] * 4
        register(daemon.port)
        assert (open_dir / "state" / "htpasswd").stat().st_uid == NOBODY.pw_uid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
    output = process.stdout.read()
    assert process.returncode == -signal.SIGTERM, output
    assert "Server Shut Down." in output
    assert not (open_dir / "run" / "nopard.pid").exists()
