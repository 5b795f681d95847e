"""NOPARD_WORKERS=2: a real supervisor and its workers sharing one port and the store, without Redis."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.polling import poll_until
from tests.support import NopardServer, publish_body


def test_two_workers_serve_a_publish_at_once_and_survive_kill(tmp_path: Path) -> None:
    server = NopardServer(tmp_path, env={"NOPARD_WORKERS": "2"}).start()
    try:
        # A worker shares through the supervisor once its link is up (a second after it starts).
        poll_until(lambda: server.log().count("redis-up") >= 2, timeout=30)
        token = server.token("alice", "secret-pass")
        # Warm both workers' memory with version 1.0.0 first, so a stale copy would show.
        assert server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status in (200, 201)
        seen: dict[str, str] = {}

        def every_worker_has(version: str) -> bool:
            answer = server.request("GET", "/pkg")
            assert answer.json()["dist-tags"]["latest"] == version  # never an old one, on any worker
            seen[answer.headers["x-nopard-worker"]] = version
            return set(seen) == {"1", "2"} and set(seen.values()) == {version}

        poll_until(lambda: every_worker_has("1.0.0"), timeout=30)
        assert server.request("PUT", "/pkg", publish_body("pkg", "1.1.0"), token=token).status in (200, 201)
        seen.clear()
        poll_until(lambda: every_worker_has("1.1.0"), timeout=30)

        pids = [int(p) for p in re.findall(r"worker 1 started as pid (\d+)", server.log())]
        os.kill(pids[-1], signal.SIGKILL)
        poll_until(lambda: len(re.findall(r"worker 1 started as pid", server.log())) == 2, timeout=30)
        seen.clear()
        poll_until(lambda: every_worker_has("1.1.0"), timeout=60)
    finally:
        server.stop()
    assert "worker 1 (pid" in server.log() and "stopped" in server.log()
