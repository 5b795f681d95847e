"""Starting nopard for scripts/bench, plain GETs to any server it runs, and their memory."""

from __future__ import annotations

import contextlib
import http.client
import os
import urllib.parse
from pathlib import Path

from tests.polling import poll_until
from tests.support import NopardServer, Response
from tests.upstream import FakeUpstream

# What npm install sends for documents: the abbreviated form, with the full one as fallback.
INSTALL_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
# "Warm" means every document is fresh for the whole run, however long --duration makes it.
WARM_TTL = "3600"


def start_nopard(stack: contextlib.ExitStack, workdir: Path, upstream: FakeUpstream, args,
                 port: int | None = None, **env: str) -> NopardServer:
    """A `twistd -n nopard` mirroring ``upstream``, stopped when ``stack`` closes.

    The sync schedule is off unless ``env`` says otherwise: a scheduled sync (the first a minute
    after start) would refresh documents and backfill tarballs in the middle of a measurement,
    making upstream requests and using CPU that the run would count as its own.
    """
    settings = {"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_LOGLEVEL": args.loglevel,
                "NOPARD_SYNC_INTERVAL": "0", **env}
    if port is not None:
        settings["NOPARD_PORT"] = str(port)
    server = NopardServer(workdir, settings)
    if port is not None:
        server.port = port
    stack.callback(server.stop)
    return server.start()


def written(server: NopardServer, timeout: float = 20.0) -> None:
    """Wait until ``server`` wrote every copy it fetched for a client (they are written once fetches
    pause, NOPARD_MIRROR_WRITE_DELAY): before another server reads the store it filled."""
    def none_waiting() -> bool:
        lines = get(server.url, "/-/metrics").body.decode().splitlines()
        return "nopard_mirror_writes_waiting 0.0" in lines
    poll_until(none_waiting, "nopard to write what it fetched", timeout=timeout)


def get(base_url: str, path: str, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    """GET ``path`` from the server at ``base_url``; raise unless it answers ``status``."""
    where = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        response = Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()
    if response.status != status:
        raise RuntimeError(f"GET {base_url.rstrip('/')}{path} {headers}: {response.status}, not {status}: "
                           f"{response.body[:300]!r}")
    return response


def peak_rss(pid: int) -> int | None:
    """A process's peak resident memory in bytes (VmHWM), or None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, every thread) a process has used, or None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux), or none."""
    try:
        return [int(word) for task in Path(f"/proc/{pid}/task").iterdir()
                for word in (task / "children").read_text().split()]
    except OSError:
        return []


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and every descendant still running (nginx's master and its
    workers), or None off Linux."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(tree_cpu_seconds(child) or 0 for child in children(pid))


def tree_peak_rss(pid: int) -> int | None:
    """The sum of the peak resident memory of a process and every descendant still running
    (NOPARD_WORKERS' supervisor and its workers)."""
    own = peak_rss(pid)
    if own is None:
        return None
    return own + sum(tree_peak_rss(child) or 0 for child in children(pid))
