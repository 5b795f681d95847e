"""NOPARD_WORKERS at the limit: what a warm tarball costs each worker, and how the workers end.

The counting test runs the workers on a real ``redis-server`` (NOPARD_REDIS_URL), whose
``INFO commandstats`` counts every command the workers send: the same code path as the
supervisor's own keyspace, which nothing outside it can count.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nopard.ops.daemon import GRACE_SECONDS
from nopard.ops.supervisor import KILL_MARGIN
from tests.e2e.test_workers import pinned, worker_pids, workers  # noqa: F401  # the fixture
from tests.polling import poll_until
from tests.redis_server import RedisServer
from tests.support import NopardServer, publish_body, tarball_bytes


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def subscribers(redis: RedisServer) -> int:
    """Processes subscribed to the change feed."""
    reply = redis.command("PUBSUB", "NUMSUB", "nopard:changed").decode()
    return int(reply.split("\r\n")[-2].lstrip(":"))


def test_a_warm_tarball_get_costs_no_redis_command_on_any_worker(
    workers: Callable[..., NopardServer], redis_server: RedisServer,  # noqa: F811
) -> None:
    """Regression: every tarball GET asked Redis for its package's stamp (an MGET round trip),
    so two workers served tarballs slower than one. The stamp is now kept while the change
    feed is live, and a publish through one worker is still served by the other at once."""
    server = workers(NOPARD_REDIS_URL=redis_server.url)
    poll_until(lambda: subscribers(redis_server) >= 2, "both workers subscribed to the change feed", timeout=30)
    first, second = pinned(server).values()
    token = server.token("alice", "secret-pass")
    assert first.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    for worker in (first, second):  # warm
        assert worker.request("GET", "/pkg/-/pkg-1.0.0.tgz").body == tarball_bytes("pkg", "1.0.0")

    before = redis_server.calls()
    for _ in range(50):
        for worker in (first, second):
            assert worker.request("GET", "/pkg/-/pkg-1.0.0.tgz").status == 200
    after = redis_server.calls()
    # Background work (the health probe's PING, the status history) is not the requests'.
    spent = {name: after[name] - before.get(name, 0) for name in after
             if after[name] != before.get(name, 0) and name not in ("ping", "info", "evalsha", "eval")}
    assert spent == {}

    assert first.request("PUT", "/pkg", publish_body("pkg", "1.1.0"), token=token).status == 201
    assert second.request("GET", "/pkg/-/pkg-1.1.0.tgz").body == tarball_bytes("pkg", "1.1.0")  # at once
    assert second.request("GET", "/pkg").json()["dist-tags"]["latest"] == "1.1.0"


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM"])
def test_no_worker_outlives_its_supervisor_even_one_that_hangs(
    workers: Callable[..., NopardServer], ending: str,  # noqa: F811
) -> None:
    """A worker that never finishes its stop (here: stopped by SIGSTOP) is gone once its
    supervisor is. SIGTERM: the supervisor kills it past the grace (GRACE_SECONDS + KILL_MARGIN),
    then exits. Regression (SIGKILL: no stop of the supervisor's own runs): it kept running,
    holding the shared sockets, with nobody supervising it."""
    server = workers()
    pids = worker_pids(server)
    assert len(pids) == 2 and server.process is not None
    try:
        os.kill(pids["1"], signal.SIGSTOP)  # hangs: handles no signal, drains nothing
        server.process.send_signal(getattr(signal, ending))
        server.process.wait(timeout=GRACE_SECONDS + KILL_MARGIN + 20)
        poll_until(lambda: not any(alive(pid) for pid in pids.values()), "every worker gone", timeout=10)
    finally:
        for pid in pids.values():  # before the fix they stayed: this test's own leftovers
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
