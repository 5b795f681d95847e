"""NOPARD_WORKERS: a real supervisor and its workers sharing one port and the store, without Redis.

A test talks to one given worker through a kept-alive connection it answered on (``pinned``):
X-Nopard-Worker says which worker answered, and a connection stays with the worker that
accepted it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.polling import poll_until
from tests.support import (
    NopardServer,
    Npm,
    Response,
    make_package,
    publish_body,
    publish_directory,
    tarball_bytes,
    temporary_leftovers,
)
from tests.upstream import FakeUpstream


class Pinned:
    """A kept-alive HTTP connection to one worker."""

    def __init__(self, server: NopardServer, connection: http.client.HTTPConnection, worker: str) -> None:
        self.server = server
        self.connection = connection
        self.worker = worker

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.connection.request(method, path, body=body, headers=headers)
        answer = self.connection.getresponse()
        response = Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        assert response.headers["x-nopard-worker"] == self.worker  # still the same worker
        return response


def pinned(server: NopardServer, count: int = 2) -> dict[str, Pinned]:
    """One kept-alive connection to each of ``count`` workers, by worker name."""
    found: dict[str, Pinned] = {}
    spare: list[http.client.HTTPConnection] = []
    for _ in range(500):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("GET", "/-/ping")
        answer = connection.getresponse()
        answer.read()
        worker = answer.headers["x-nopard-worker"]
        if worker in found:
            spare.append(connection)  # held open meanwhile, so the next connection may land elsewhere
        else:
            found[worker] = Pinned(server, connection, worker)
        if len(found) == count:
            break
    for connection in spare:
        connection.close()
    assert len(found) == count, f"only workers {sorted(found)} answered"
    return found


def worker_pids(server: NopardServer) -> dict[str, int]:
    """Worker name -> the pid it runs as now (from the supervisor's log)."""
    return {index: int(pid) for index, pid in re.findall(r"worker (\d+) started as pid (\d+)", server.log())}


def started_workers(server: NopardServer, count: int) -> None:
    """Wait until ``count`` workers share state through the supervisor (their link up)."""
    poll_until(lambda: server.log().count("redis-up") >= count, timeout=30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., NopardServer]]:
    """Start supervisors of NOPARD_WORKERS workers (2 unless given); stopped after the test."""
    servers: list[NopardServer] = []

    def start(count: int = 2, own_group: bool = False, **env: str) -> NopardServer:
        server = NopardServer(tmp_path / f"nopard{len(servers)}", {"NOPARD_WORKERS": str(count), **env},
                              own_group=own_group)
        servers.append(server)
        server.start()
        started_workers(server, count)
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_publish_through_one_worker_is_served_by_every_worker_at_once_and_npm_installs_through_all(
    workers: Callable[..., NopardServer], tmp_path: Path,
) -> None:
    server = workers()
    first, second = pinned(server).values()
    token = server.token("alice", "secret-pass")
    # Both workers hold version 1.0.0 in memory first, so a stale copy would show.
    assert first.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    assert second.request("GET", "/pkg").json()["dist-tags"]["latest"] == "1.0.0"
    assert first.request("GET", "/pkg").json()["dist-tags"]["latest"] == "1.0.0"
    assert first.request("PUT", "/pkg", publish_body("pkg", "1.1.0"), token=token).status == 201
    assert second.request("GET", "/pkg").json()["dist-tags"]["latest"] == "1.1.0"  # at once, no stale copy
    assert second.request("GET", "/pkg/-/pkg-1.1.0.tgz").body == tarball_bytes("pkg", "1.1.0")

    names = [f"lib{n}" for n in range(10)]
    for name in names:  # real tarballs, published through whichever worker accepts
        assert publish_directory(server, token, make_package(tmp_path / name, name, "1.0.0")).status == 201
    project = make_package(tmp_path / "app", "app", "1.0.0", dependencies=dict.fromkeys(names, "1.0.0"))
    Npm(server.url, tmp_path / "npm-home").run("install", "--no-audit", "--no-fund", cwd=project)
    assert all((project / "node_modules" / name / "index.js").exists() for name in names)
    tarball_lines = [line for line in server.log().splitlines() if " access " in line and ".tgz" in line]
    assert len(tarball_lines) >= len(names)
    assert {re.search(r"worker=(\d+)", line).group(1) for line in tarball_lines} == {"1", "2"}


def test_the_tarball_index_of_every_worker_forgets_a_change_made_through_another(
    workers: Callable[..., NopardServer],
) -> None:
    """Regression: a worker's index kept "not stored" / "stored" for FACTS_TTL (10 s) after a
    publish or unpublish through another worker, answering 404 for a just-published tarball."""
    server = workers()
    first, second = pinned(server).values()
    token = server.token("alice", "secret-pass")
    assert first.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    assert second.request("GET", "/pkg/-/pkg-2.0.0.tgz").status == 404  # second's index: not stored
    assert first.request("PUT", "/pkg", publish_body("pkg", "2.0.0"), token=token).status == 201
    assert second.request("GET", "/pkg/-/pkg-2.0.0.tgz").status == 200  # at once

    assert second.request("GET", "/pkg/-/pkg-1.0.0.tgz").status == 200  # second's index: stored, bytes held
    document = first.request("GET", "/pkg?write=true").json()
    del document["versions"]["1.0.0"]
    assert first.request("PUT", f"/pkg/-rev/{document['_rev']}", document, token=token).status == 200
    assert second.request("GET", "/pkg/-/pkg-1.0.0.tgz").status == 404  # at once
    assert "1.0.0" not in second.request("GET", "/pkg").json()["versions"]


def test_concurrent_publishes_over_workers_lose_nothing(workers: Callable[..., NopardServer]) -> None:
    server = workers()
    token = server.token("alice", "secret-pass")
    wanted = {name: [f"1.0.{n}" for n in range(8)] for name in ("one", "two", "three")}
    answered: list[str] = []

    def publish(name: str, version: str) -> int:
        answer = server.request("PUT", f"/{name}", publish_body(name, version), token=token)  # a new connection
        answered.append(answer.headers.get("x-nopard-worker", "?"))
        return answer.status

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda job: publish(*job), [(n, v) for n, vs in wanted.items() for v in vs]))
    assert statuses == [201] * 24
    assert set(answered) == {"1", "2"}
    for connection in pinned(server).values():
        for name, versions in wanted.items():
            assert sorted(connection.request("GET", f"/{name}").json()["versions"]) == sorted(versions)


@pytest.fixture
def slow_upstream(fake: FakeUpstream) -> Callable[[float], str]:
    """Makes the fake upstream answer tarballs after ``delay`` seconds; the path of one to ask nopard."""
    def slow(delay: float) -> str:
        fake.fault("slow", delay=delay, paths=["/accepts/-/"])
        return "/accepts/-/accepts-2.0.0.tgz"

    return slow


def test_a_worker_killed_mid_request_is_started_again_and_nothing_half_written_is_kept(
    workers: Callable[..., NopardServer], fake: FakeUpstream, slow_upstream: Callable[[float], str],
) -> None:
    server = workers(NOPARD_FORWARDER_URL=fake.url, NOPARD_STALE_DEADLINE="30")
    victim = pinned(server)["1"]
    assert victim.request("GET", "/accepts").status == 200  # the document, stored
    path = slow_upstream(30)
    outcome: list[Any] = []

    def fetch() -> None:
        try:
            outcome.append(victim.request("GET", path).status)
        except (http.client.HTTPException, OSError) as error:
            outcome.append(error)

    client = threading.Thread(target=fetch)
    client.start()
    poll_until(lambda: any(p.endswith(".tgz") for _m, p in fake.stats()["requests"]), timeout=20)
    os.kill(worker_pids(server)["1"], signal.SIGKILL)
    client.join(timeout=30)
    assert outcome and isinstance(outcome[0], Exception), outcome  # a cut connection, not an answer
    poll_until(lambda: server.log().count("worker 1 started as pid") == 2, timeout=30)
    assert not list(server.registry.rglob("accepts-2.0.0.tgz"))  # nothing half-written stored
    # The killed fetch's spool file is removed once the worker is started again.
    def leftovers() -> list[Path]:
        return [p for p in temporary_leftovers(server.registry) if p.name != ".spool"]  # the directory stays

    poll_until(lambda: not leftovers(), lambda: str(leftovers()))
    fake.fault("none")
    started_workers(server, 3)
    for connection in pinned(server).values():
        answer = connection.request("GET", path)
        assert answer.status == 200 and answer.body[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("whom", ["supervisor", "process group"])
def test_sigterm_drains_a_request_in_flight_and_refuses_new_connections(
    workers: Callable[..., NopardServer], fake: FakeUpstream, slow_upstream: Callable[[float], str], whom: str,
) -> None:
    """SIGTERM to the supervisor, or to its whole process group as systemd's KillMode=control-group
    sends it (each worker then gets it twice: from systemd and from the supervisor)."""
    server = workers(NOPARD_FORWARDER_URL=fake.url, NOPARD_STALE_DEADLINE="30", own_group=True)
    busy = pinned(server)["2"]
    assert busy.request("GET", "/accepts").status == 200
    path = slow_upstream(4)
    outcome: list[Any] = []
    client = threading.Thread(target=lambda: outcome.append(busy.request("GET", path)))
    client.start()
    poll_until(lambda: any(p.endswith(".tgz") for _m, p in fake.stats()["requests"]), timeout=20)
    assert server.process is not None
    if whom == "supervisor":
        server.process.send_signal(signal.SIGTERM)
    else:
        os.killpg(server.process.pid, signal.SIGTERM)

    def refused() -> bool:
        try:
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=2).connect()
        except ConnectionRefusedError:
            return True
        return False

    poll_until(refused, "new connections refused while draining", timeout=10)
    assert client.is_alive()  # the slow answer is still on its way
    client.join(timeout=30)
    assert outcome and outcome[0].status == 200 and outcome[0].body[:2] == b"\x1f\x8b"
    # twistd ends as killed by the SIGTERM it handled (systemd counts that a clean stop).
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    log = server.log()
    assert "worker-exited" not in log and "Traceback" not in log  # stopped, not restarted, no error
    assert log.count("worker 1 (pid") == log.count("worker 2 (pid") == 1  # each stopped once


def test_a_web_login_started_on_one_worker_is_finished_and_answered_by_the_others(
    workers: Callable[..., NopardServer], tmp_path: Path,
) -> None:
    from tests.e2e.test_tokens_weblogin import npm_web_login, web_npm

    server = workers()
    first, second = pinned(server).values()
    assert first.request("PUT", "/-/user/org.couchdb.user:alice", {
        "name": "alice", "password": "pw", "email": "a@example.com", "type": "user"}).status == 201
    urls = first.request("POST", "/-/v1/login", {}).json()
    done = urls["doneUrl"].split(str(server.port), 1)[1]
    login = urls["loginUrl"].split(str(server.port), 1)[1]
    assert second.request("GET", done).status == 202  # the other worker knows the session
    page = second.request("GET", login)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.body.decode()).group(1)
    submitted = second.request("POST", login, f"username=alice&password=pw&csrf={csrf}", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": page.headers["set-cookie"].split(";")[0],
        "Origin": server.url.rstrip("/")})
    assert submitted.status == 200
    token = first.request("GET", done).json()["token"]
    assert second.request("GET", done).status == 404  # handed out once, over both workers
    assert second.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}

    npm = web_npm(server, tmp_path / "npm")  # npm's own web flow through the shared port
    status, output = npm_web_login(npm, server, "login", username="alice", password="pw")
    assert status == 0, output
    assert npm.run("whoami").stdout.strip() == "alice"
    for connection in (first, second):
        assert connection.request("GET", "/-/whoami", token=npm.token()).json() == {"username": "alice"}


def counted(metrics: str, route: str) -> float:
    """The nopard_http_requests_total of ``route`` in a scrape, over every method and status."""
    return sum(float(value) for value in re.findall(
        rf'^nopard_http_requests_total{{[^}}]*route="{route}"[^}}]*}} (\S+)$', metrics, re.M))


def test_metrics_answered_by_any_worker_count_every_workers_requests(workers: Callable[..., NopardServer]) -> None:
    server = workers(NOPARD_RUN_PATH="run")
    first, second = pinned(server).values()
    before = counted(first.request("GET", "/-/metrics").body.decode(), "ping")
    for _ in range(3):
        first.request("GET", "/-/ping")
    for _ in range(5):
        second.request("GET", "/-/ping")
    scrape = second.request("GET", "/-/metrics").body.decode()
    assert counted(scrape, "ping") == before + 8
    assert f'nopard_worker{{worker="{second.worker}"}} 1.0' in scrape
    assert 'nopard_info{version=' in scrape and scrape.count("# TYPE nopard_http_requests_total counter") == 1

    os.kill(worker_pids(server)[second.worker], signal.SIGKILL)  # a dead worker's counts stay
    poll_until(lambda: server.log().count(f"worker {second.worker} started as pid") == 2, timeout=30)
    assert counted(first.request("GET", "/-/metrics").body.decode(), "ping") == before + 8
    assert list((server.workdir / "run" / "metrics").glob("counter_*.db"))
