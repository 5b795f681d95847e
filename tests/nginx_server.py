"""nginx with the shipped deploy/nginx/nopard.conf, started as a subprocess for tests.

``render()`` points the conf's upstream at the given instance ports and its ``listen 80`` at
a free port on 127.0.0.1; it raises when the lines it rewrites are gone, so an incompatible
edit of the shipped file breaks the tests instead of silently testing something else.
``NginxServer`` wraps the rendered snippet into a minimal nginx.conf whose pid, logs and
temporary files all live in a temporary directory, and runs ``nginx`` in the foreground.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from tests.polling import wait_for_start
from tests.support import REPO, free_port

CONF = REPO / "deploy" / "nginx" / "nopard.conf"

_UPSTREAM = re.compile(r"^upstream\s+nopard\s*\{\n(?P<body>.*?)^\}", re.M | re.S)
_INSTANCE = re.compile(
    r"^(?P<indent>[ \t]*)server\s+127\.0\.0\.1:598\d(?P<params>(?:\s[^;#\n]*)?);[ \t]*$", re.M
)
_ANY_SERVER = re.compile(r"^[ \t]*server\s", re.M)
_LISTEN = re.compile(r"^(?P<indent>[ \t]*)listen\s+80\s*;[ \t]*$", re.M)
_DECISIONS_CACHE = "/var/cache/nginx/nopard-decisions "
_ALIAS = re.compile(r"^(?P<indent>[ \t]*)alias\s+/var/lib/nopard/\$1\s*;[ \t]*$", re.M)


def render(conf_text: str, instance_ports: list[int], listen_port: int, store: Path | None = None,
           directory: Path = Path("/tmp/nopard-nginx")) -> str:
    """The conf with its upstream servers on ``instance_ports`` and listening on 127.0.0.1:``listen_port``;
    the tarball location (NOPARD_ACCEL_REDIRECT) aliases ``store`` when given, and the decision
    cache's socket and files go under ``directory``."""
    if not instance_ports:
        raise ValueError("at least one instance port is needed")
    upstream = _UPSTREAM.search(conf_text)
    if upstream is None:
        raise ValueError("no `upstream nopard { ... }` block (closed by a `}` at line start) in the conf")
    body = upstream.group("body")
    instances = list(_INSTANCE.finditer(body))
    if not instances:
        raise ValueError("no `server 127.0.0.1:598x ...;` line in the upstream block")
    if len(_ANY_SERVER.findall(body)) != len(instances):
        raise ValueError("the upstream block has server lines other than `server 127.0.0.1:598x ...;`")
    first = instances[0]
    replacement = "\n".join(
        f"{first.group('indent')}server 127.0.0.1:{port}{first.group('params')};" for port in instance_ports
    )
    new_body = _INSTANCE.sub(lambda m: replacement if m.start() == first.start() else "\0", body)
    new_body = re.sub(r"^\0\n", "", new_body, flags=re.M)
    rendered = conf_text[: upstream.start("body")] + new_body + conf_text[upstream.end("body"):]

    rendered, listens = _LISTEN.subn(lambda m: f"{m.group('indent')}listen 127.0.0.1:{listen_port};", rendered)
    if listens != 1:
        raise ValueError(f"expected exactly one `listen 80;` line in the conf, found {listens}")
    if rendered.count(_DECISIONS_CACHE) != 1:
        raise ValueError(f"expected {_DECISIONS_CACHE}once in the conf")
    rendered = rendered.replace(_DECISIONS_CACHE, f"{directory / 'decisions'} ")
    aliased = f"{str(store).rstrip('/')}/" if store is not None else "/var/lib/nopard/"
    rendered, aliases = _ALIAS.subn(lambda m: f"{m.group('indent')}alias {aliased}$1;", rendered)
    if aliases != 1:
        raise ValueError(f"expected exactly one `alias /var/lib/nopard/$1;` line in the conf, found {aliases}")
    return rendered


@lru_cache(maxsize=1)
def _nginx_build() -> str:
    return subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr


def full_config(snippet: str, directory: Path) -> str:
    """A whole nginx.conf around ``snippet`` with every file nginx writes under ``directory``."""
    d = directory
    lines = [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {d}/nginx.pid;",
        f"error_log {d}/error.log info;",
    ]
    if os.geteuid() == 0:
        # Else workers run as the build's user (www-data), who cannot write our 0700 directory.
        lines.append("user root;")
    lines += ["events { worker_connections 256; }", "http {"]
    lines += [
        f"    access_log {d}/access.log;",
        f"    client_body_temp_path {d}/body;",
        f"    proxy_temp_path {d}/proxy;",
    ]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in _nginx_build():
            lines.append(f"    {module}_temp_path {d}/{module};")
    lines += ["    default_type application/octet-stream;", ""]
    lines += ["    " + line if line else "" for line in snippet.splitlines()]
    lines += ["}", ""]
    return "\n".join(lines)


class NginxServer:
    """nginx running deploy/nginx/nopard.conf in front of ``instance_ports``; a context manager.

    ``store`` is the instances' NOPARD_REGISTRY_PATH, for NOPARD_ACCEL_REDIRECT.
    """

    def __init__(self, instance_ports: list[int], conf_path: Path = CONF, store: Path | None = None) -> None:
        if shutil.which("nginx") is None:
            raise RuntimeError(
                "nginx is not on PATH: install it (apt-get install nginx-light; scripts/test does this)"
            )
        self.instance_ports = list(instance_ports)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="nopard-nginx-"))
        self.snippet = render(conf_path.read_text(), self.instance_ports, self.port, store, self.directory)
        self.config_path = self.directory / "nginx.conf"
        self.config_path.write_text(full_config(self.snippet, self.directory))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where clients reach nginx."""
        return f"http://127.0.0.1:{self.port}"

    def _command(self, *extra: str) -> list[str]:
        return ["nginx", "-p", f"{self.directory}/", "-c", str(self.config_path),
                "-e", str(self.directory / "error.log"), *extra]

    def test_config(self) -> subprocess.CompletedProcess:
        """``nginx -t`` on the whole rendered configuration (its output is in stderr)."""
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)

    def error_log(self) -> str:
        """nginx's error log so far (for failure messages and tests)."""
        try:
            return (self.directory / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> NginxServer:
        """Start nginx in the foreground and wait until its port accepts connections."""
        self.process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_start(self.process, self._accepts, "nginx", 15, self.error_log, self.stop)
        return self

    def _accepts(self) -> bool:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True

    def stop(self) -> None:
        """Stop nginx (master and workers) and remove the temporary directory."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()  # SIGTERM: fast shutdown, the master stops its workers
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: only our nginx
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
