"""`twistd nopard` as a process: packaging, zero-config start, settings, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.polling import poll_text
from tests.support import (
    BIN,
    REPO,
    NopardServer,
    free_port,
    in_tree_build,
    publish_body,
    temporary_leftovers,
    twistd_env,
)


def twistd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60,
) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "twistd"), *args], cwd=cwd, env=twistd_env(env),
                          capture_output=True, text=True, timeout=timeout)


def test_pip_install_makes_twistd_nopard_available(tmp_path: Path) -> None:
    """`pip install .` puts the package and the dropin where twistd finds them."""
    target = tmp_path / "site"
    with in_tree_build():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(REPO)],
            check=True, capture_output=True, cwd=tmp_path,
        )
    assert (target / "twisted" / "plugins" / "nopard_plugin.py").exists()
    assert (target / "nopard" / "web" / "static" / "nopard.css").exists()  # the browser pages' stylesheet
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPARD_")}
    env["PYTHONPATH"] = str(target)
    listing = subprocess.run([str(BIN / "twistd"), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "nopard" in listing
    assert "Usage: twistd [options] nopard" in subprocess.run(
        [str(BIN / "twistd"), "nopard", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    ).stdout


def test_zero_config_start_serves_on_5984_with_registry_in_cwd(tmp_path: Path) -> None:
    """With no settings, nopard listens on 127.0.0.1:5984 and creates ./registry."""
    server = NopardServer(tmp_path)
    server.port = 5984
    server._env = {}
    server.start()
    try:
        assert server.request("GET", "/-/ping").status == 200
        assert (tmp_path / "registry").is_dir()
        assert server.login("alice", "pw").status == 201
        assert (tmp_path / "registry" / "users" / "htpasswd").exists()
    finally:
        server.stop()


def test_a_bad_setting_stops_startup_with_one_line(tmp_path: Path) -> None:
    """A bad value exits non-zero with one line naming the setting."""
    result = twistd("-n", "--pidfile=", "nopard", cwd=tmp_path, env={"NOPARD_PORT": "eighty"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["nopard: NOPARD_PORT: 'eighty' is not a port number (1-65535)"]
    assert not (tmp_path / "registry").exists()


def test_option_beats_environment(tmp_path: Path) -> None:
    """A twistd option wins over the NOPARD_* variable, and is named when bad."""
    result = twistd("-n", "--pidfile=", "nopard", "--max-body-size", "huge", cwd=tmp_path,
                    env={"NOPARD_MAX_BODY_SIZE": "1mb"})
    assert result.returncode != 0
    assert result.stderr.strip().endswith(
        "nopard: --max-body-size: 'huge' is not a size (examples: 100mb, 512kb, 1048576)")


def test_options_set_port_and_registry(tmp_path: Path) -> None:
    """--port and --registry-path serve from the given directory."""
    port = free_port()
    server = NopardServer(tmp_path / "w", env={}, args=("--port", str(port), "--registry-path", str(tmp_path / "data")))
    server.port = port
    server.start()
    try:
        assert server.login("alice", "pw").status == 201
        assert (tmp_path / "data" / "users" / "htpasswd").exists()
    finally:
        server.stop()


def test_access_log_line_per_request(nopard: NopardServer) -> None:
    """Each request logs client, user, method, path, status, bytes, duration and cache status."""
    token = nopard.token("alice", "pw")
    nopard.request("GET", "/-/whoami", token=token)
    nopard.request("GET", "/missing-package")
    log = poll_text(nopard.log, " path=/missing-package status=404 ")
    lines = [line for line in log.splitlines() if " INFO access " in line]
    assert any(" client=127.0.0.1 user=alice method=GET path=/-/whoami status=200 bytes=20 " in line for line in lines)
    assert any(" client=127.0.0.1 user=- method=GET path=/missing-package status=404 " in line
               and line.endswith(" cache=- upstream_ms=-") for line in lines)


def test_logfile_and_loglevel(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """NOPARD_LOGFILE receives the access lines; NOPARD_LOGLEVEL=warn silences them."""
    logfile = tmp_path / "nopard.log"
    server = start_nopard({"NOPARD_LOGFILE": str(logfile)}, name="verbose")
    server.request("GET", "/-/ping")
    quiet = start_nopard({"NOPARD_LOGFILE": str(tmp_path / "quiet.log"), "NOPARD_LOGLEVEL": "warn"}, name="quiet")
    quiet.request("GET", "/-/ping")
    time.sleep(0.2)
    assert "method=GET path=/-/ping status=200" in logfile.read_text()
    assert "path=/-/ping" not in server.log()
    assert "path=/-/ping" not in (tmp_path / "quiet.log").read_text()


def test_sigterm_stops_cleanly_without_temp_files(nopard: NopardServer) -> None:
    """SIGTERM shuts down cleanly (twistd then exits by that signal) and leaves no temp files."""
    token = nopard.token("alice", "pw")
    assert nopard.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    nopard.stop()
    assert nopard.process.returncode == -signal.SIGTERM
    assert "Server Shut Down." in nopard.log()
    assert not temporary_leftovers(nopard.registry)
    assert json.loads((nopard.registry / "packages" / "pkg" / "package.json").read_text())["name"] == "pkg"


def test_refuses_itself_as_upstream(tmp_path: Path) -> None:
    """An upstream URL that is nopard's own address stops start-up with one line."""
    result = twistd("-n", "--pidfile=", "nopard", "--port", "4873", cwd=tmp_path,
                    env={"NOPARD_FORWARDER_URL": "http://localhost:4873/"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "nopard: NOPARD_FORWARDER_URL: http://localhost:4873 is this nopard itself"
    ]
