"""nopard as a system service: a real daemon (PID file, run-as user, logfile, SIGTERM, stale PID
files); the installer and its units are in test_service_install.py.

The daemon tests run as root and drop to ``nobody``, so everything the daemon
touches lives in world-readable temporary directories made here (pytest's own
tmp_path is private to root): the ``open_dir`` and ``daemons`` fixtures (tests/e2e/conftest.py)
and tests/daemons.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.daemons import (
    NOBODY,
    Daemon,
    alive,
    dead_pid,
    hidden_files,
    needs_root,
    owner_ids,
    privileged_free_port,
    register,
)
from tests.polling import poll_text, poll_until
from tests.support import free_port, publish_body

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
    assert (registry / "users" / "htpasswd").stat().st_uid == NOBODY.pw_uid

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
