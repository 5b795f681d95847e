"""nopard as a system service: the installer (scripts/install-service) with its systemd and Upstart
units, installed into a fake root (``--root``): no user or file is left on the machine. The
daemon tests run as root and drop to ``nobody`` (tests/daemons.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.daemons import (
    INSTALLER,
    NOBODY,
    Daemon,
    needs_root,
    owner_ids,
    register,
)
from tests.polling import poll_until
from tests.support import REPO, free_port, in_tree_build

# The installer and the units ----------------------------------------------------------------


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    with in_tree_build():  # the installer runs `pip install` of this checkout
        result = subprocess.run([str(INSTALLER), *args, "--root", str(root)], capture_output=True, text=True,
                                timeout=600)
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
        assert (open_dir / "state" / "users" / "htpasswd").stat().st_uid == NOBODY.pw_uid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
    output = process.stdout.read()
    assert process.returncode == -signal.SIGTERM, output
    assert "Server Shut Down." in output
    assert not (open_dir / "run" / "nopard.pid").exists()
