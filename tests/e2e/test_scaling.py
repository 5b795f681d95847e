"""Several `twistd -n nopard` processes sharing one S3 bucket (moto's server) and one
real redis-server behave as one registry: publishes, installs, caches, locks and
logins cross instances; Redis may go away and come back; an instance may die.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nginx_server import NginxServer
from tests.polling import poll_until
from tests.redis_server import RedisServer
from tests.s3_server import MotoServer
from tests.support import NopardServer, Npm, Response, make_package, pack, publish_body, tarball_bytes
from tests.upstream import FakeUpstream

ABBREVIATED = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
# Every instance is reached through one address (a load balancer): prepared documents are shared per base URL.
BASE_URL = "http://registry.example"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def cluster(
    start_nopard: Callable[..., NopardServer], moto_server: MotoServer, redis_server: RedisServer,
    fake: FakeUpstream, tmp_path: Path,
) -> Callable[..., list[NopardServer]]:
    """Start N nopard instances sharing a fresh bucket, the Redis server and one htpasswd file."""

    def start(count: int = 2, **settings: str) -> list[NopardServer]:
        bucket = moto_server.new_bucket()
        env = {
            "NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": bucket, "REDIS_URL": redis_server.url,
            "NOPARD_HTPASSWD": str(tmp_path / "htpasswd"), "NOPARD_FORWARDER_URL": fake.url,
            "NOPARD_UPSTREAM_TIMEOUT": "5", "NOPARD_STALE_DEADLINE": "1", "NOPARD_LOCK_TTL": "2",
            "NOPARD_SYNC_INTERVAL": "86400", **moto_server.env(), **settings,
        }
        servers = [start_nopard(env, name=f"instance-{i}") for i in range(count)]
        for server in servers:
            poll_until(lambda s=server: health(s)["redis"]["state"] == "up", f"redis up on {server.url}")
        return servers

    return start



def health(server: NopardServer) -> dict:
    return server.request("GET", "/-/nopard/health").json()


def get(server: NopardServer, path: str, **headers: str) -> Response:
    return server.request("GET", path, headers={"Host": "registry.example", **headers})


def versions(server: NopardServer, name: str) -> set[str]:
    answer = get(server, f"/{name}")
    assert answer.status == 200, answer.body
    return set(answer.json()["versions"])


def upstream_gets(fake: FakeUpstream, path: str) -> int:
    return sum(1 for method, p in fake.stats()["requests"] if method == "GET" and p == path)


def test_published_through_one_installs_through_another(cluster, tmp_path: Path) -> None:
    """npm publishes through nginx to either instance; each new version shows on the other at once."""
    first, second = cluster(NOPARD_BASE_URL="")
    with NginxServer([first.port, second.port]) as nginx:
        npm = Npm(nginx.url + "/", tmp_path / "npm-home")
        assert npm.login("adduser", "alice", "pw-alice")[0] == 0
        make_package(tmp_path / "shared-lib", "shared-lib", "1.0.0")
        npm.run("publish", cwd=tmp_path / "shared-lib")

        # Both instances cache 1.0.0; 1.1.0 goes through the first: the second shows it at once.
        token = npm.token()
        assert versions(first, "shared-lib") == versions(second, "shared-lib") == {"1.0.0"}
        tarball = pack(make_package(tmp_path / "v1.1", "shared-lib", "1.1.0"))
        published = first.request("PUT", "/shared-lib", publish_body("shared-lib", "1.1.0", tarball), token=token)
        assert published.status == 201, published.body
        assert versions(second, "shared-lib") == {"1.0.0", "1.1.0"}
        assert get(second, "/shared-lib", Accept=ABBREVIATED).json()["dist-tags"]["latest"] == "1.1.0"
        assert second.request("GET", "/shared-lib/-/shared-lib-1.1.0.tgz").body == tarball

        # A token made through one instance works on the other; so does one made through nginx.
        assert second.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}
        alice = first.token("alice", "pw-alice")
        assert second.request("GET", "/-/whoami", token=alice).json() == {"username": "alice"}

        project = tmp_path / "app"
        project.mkdir()
        (project / "package.json").write_text(
            '{"name": "app", "version": "1.0.0", "dependencies": {"shared-lib": "^1.0.0"}}')
        npm.run("install", cwd=project)
        assert '"version": "1.1.0"' in (project / "node_modules" / "shared-lib" / "package.json").read_text()


def test_web_login_started_on_one_instance_finishes_on_another(cluster) -> None:
    """npm's web login: session opened on one instance, form posted to another, polled on a third."""
    first, second, third = cluster(3)
    first.token("bob", "pw-bob")  # creates bob
    opened = first.request("POST", "/-/v1/login", {})
    session = opened.json()["doneUrl"].rsplit("/", 1)[1]
    assert third.request("GET", f"/-/v1/done/{session}").status == 202
    page = second.request("GET", f"/-/v1/login/{session}")
    assert page.status == 200 and b'name="password"' in page.body
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.body.decode()).group(1)
    posted = second.request("POST", f"/-/v1/login/{session}", f"username=bob&password=pw-bob&csrf={csrf}",
                            headers={"Content-Type": "application/x-www-form-urlencoded",
                                     "Cookie": page.headers["set-cookie"].split(";", 1)[0]})
    assert posted.status == 200, posted.body
    done = third.request("GET", f"/-/v1/done/{session}")
    assert done.status == 200
    assert first.request("GET", "/-/whoami", token=done.json()["token"]).json() == {"username": "bob"}
    assert second.request("GET", f"/-/v1/done/{session}").status == 404  # handed out once


def test_failed_logins_on_different_instances_add_up(cluster) -> None:
    """NOPARD_LOGIN_ATTEMPTS counts failures over every instance: guessing cannot be spread over them."""
    first, second = cluster(NOPARD_LOGIN_ATTEMPTS="4", NOPARD_LOGIN_WINDOW="60")
    first.token("grace", "pw-grace")
    statuses = [server.login("grace", "wrong").status for server in (first, second, first, second)]
    assert statuses == [401, 401, 401, 401]
    for server in (first, second):
        refused = server.login("grace", "pw-grace")
        assert refused.status == 429 and int(refused.headers["retry-after"]) > 0


@pytest.mark.parametrize("redis_up", [True, False], ids=["locked-in-redis", "redis-down"])
def test_concurrent_publishes_of_one_package_through_different_instances_all_land(
    cluster, redis_server: RedisServer, redis_up: bool
) -> None:
    """Twelve versions of one package published at once, alternating instances: all twelve are kept,
    with Redis's lock and without it (the store's compare-and-swap alone)."""
    first, second = cluster()
    token = first.token("carol", "pw-carol")
    assert first.request("PUT", "/busy", publish_body("busy", "1.0.0"), token=token).status == 201
    if not redis_up:
        redis_server.kill()
        for server in (first, second):
            poll_until(lambda s=server: health(s)["redis"]["state"] == "down", "degraded")
    wanted = [f"1.0.{n}" for n in range(1, 13)]

    def publish(index: int) -> int:
        server = (first, second)[index % 2]
        return server.request("PUT", "/busy", publish_body("busy", wanted[index]), token=token).status

    with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
        assert list(pool.map(publish, range(len(wanted)))) == [201] * len(wanted)
    for server in (first, second):
        assert versions(server, "busy") == {"1.0.0", *wanted}
        for version in wanted:
            assert server.request("GET", f"/busy/-/busy-{version}.tgz").body == tarball_bytes("busy", version)


def test_a_document_fetched_through_one_instance_is_a_hit_on_the_others(
    cluster, fake: FakeUpstream, redis_server: RedisServer
) -> None:
    """One upstream request per document and per tarball, whichever instance clients ask."""
    first, second = cluster(NOPARD_BASE_URL=BASE_URL)
    assert first.request("GET", "/debug").headers["x-nopard-cache"] == "MISS"
    answer = second.request("GET", "/debug")
    assert answer.status == 200 and answer.headers["x-nopard-cache"] == "HIT"
    assert upstream_gets(fake, "/debug") == 1
    assert redis_server.command("EXISTS", f"nopard:doc:debug|{BASE_URL}") == b":1\r\n"

    # A cold document asked of both instances at once is fetched once.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: (first, second)[i % 2].request("GET", "/ms"), range(8)))
    assert {a.status for a in answers} == {200}
    assert upstream_gets(fake, "/ms") == 1

    # And so is a tarball.
    manifest = first.request("GET", "/ms").json()
    latest = manifest["versions"][manifest["dist-tags"]["latest"]]
    path = latest["dist"]["tarball"][len(BASE_URL):]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        bodies = list(pool.map(lambda i: (first, second)[i % 2].request("GET", path).body, range(6)))
    assert len(set(bodies)) == 1 and len(bodies[0]) > 0
    tarball_gets = [p for m, p in fake.stats()["requests"] if p.endswith(".tgz")]
    assert len(tarball_gets) == 1, tarball_gets


def test_redis_stopped_and_restarted_under_traffic(cluster, redis_server: RedisServer) -> None:
    """No request fails while Redis is gone; changes made meanwhile show everywhere once it is back."""
    first, second = cluster()
    token = first.token("dave", "pw-dave")
    assert first.request("PUT", "/steady", publish_body("steady", "1.0.0"), token=token).status == 201
    assert versions(second, "steady") == {"1.0.0"}  # cached by the second instance, under Redis's stamp

    failures: list[str] = []
    served: list[int] = []  # one entry per request answered, for waiting on traffic by count
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for server in (first, second):
                for path in ("/steady", "/steady/-/steady-1.0.0.tgz", "/-/ping"):
                    answer = server.request("GET", path)
                    served.append(answer.status)
                    if answer.status != 200:
                        failures.append(f"{server.port} {path} {answer.status} {answer.body[:200]!r}")

    def more_traffic(requests: int = 30) -> None:
        """Wait until the readers have made ``requests`` more requests (in whatever state Redis is)."""
        target = len(served) + requests
        poll_until(lambda: len(served) >= target, f"{requests} more requests of traffic")

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        more_traffic()
        redis_server.kill()
        for server in (first, second):
            poll_until(lambda s=server: health(s)["status"] == "degraded", "degraded health")
            assert health(server)["redis"]["state"] == "down"
            metrics = server.request("GET", "/-/metrics").body.decode()
            assert re.search(r"^nopard_redis_up 0\.0$", metrics, re.M), metrics
        # Published while Redis is away: the instance it went through shows it at once, the
        # other within DEGRADED_FRESHNESS (2 s: it keeps what it read from the store that long).
        assert second.request("PUT", "/steady", publish_body("steady", "1.1.0"), token=token).status == 201
        assert versions(second, "steady") == {"1.0.0", "1.1.0"}
        # Bounded by DEGRADED_FRESHNESS; the timeout is slack for a busy machine, not a measurement.
        poll_until(lambda: versions(first, "steady") == {"1.0.0", "1.1.0"}, "the other instance", timeout=10)
        more_traffic()  # reads go on while Redis is down
        redis_server.restart()
        for server in (first, second):
            poll_until(lambda s=server: health(s)["status"] == "ok", "redis back", timeout=30)
        # Published once it is back: shown by both at once again.
        assert first.request("PUT", "/steady", publish_body("steady", "1.2.0"), token=token).status == 201
        assert versions(second, "steady") == {"1.0.0", "1.1.0", "1.2.0"}
        more_traffic()
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    for server in (first, second):
        assert "redis-down" in server.log() and "redis-up" in server.log()
        assert versions(server, "steady") == {"1.0.0", "1.1.0", "1.2.0"}


@pytest.mark.parametrize("outage", ["restarted-empty", "frozen"])
def test_stale_cache_from_before_an_outage_is_not_served_after_it(
    cluster, redis_server: RedisServer, outage: str
) -> None:
    """A change made while Redis was out of reach shows on every instance once it is back: when it
    comes back empty, and when it was only frozen (its data intact, the other instance never noticed)."""
    first, second = cluster()
    token = first.token("erin", "pw-erin")
    assert first.request("PUT", "/epoch", publish_body("epoch", "1.0.0"), token=token).status == 201
    assert versions(second, "epoch") == {"1.0.0"}
    if outage == "frozen":
        os.kill(redis_server.process.pid, signal.SIGSTOP)
    else:
        redis_server.kill()
    assert first.request("PUT", "/epoch", publish_body("epoch", "2.0.0"), token=token).status == 201
    assert health(first)["redis"]["state"] == "down"
    if outage == "frozen":
        os.kill(redis_server.process.pid, signal.SIGCONT)
    else:
        redis_server.restart()
    for server in (first, second):
        poll_until(lambda s=server: health(s)["redis"]["state"] == "up", "redis back", timeout=30)
    assert versions(second, "epoch") == {"1.0.0", "2.0.0"}


def test_an_instance_killed_mid_publish_leaves_nothing_half_written(cluster, tmp_path: Path) -> None:
    """SIGKILL while publishes are in flight: every version kept is whole, and the others carry on."""
    first, second = cluster()
    token = first.token("frank", "pw-frank")
    assert first.request("PUT", "/sturdy", publish_body("sturdy", "1.0.0"), token=token).status == 201
    big = {f"1.1.{n}": bytes([n]) * (2 * 1024 * 1024) for n in range(12)}

    def publish(version: str) -> int:
        try:
            return first.request("PUT", "/sturdy", publish_body("sturdy", version, big[version]), token=token).status
        except OSError:
            return 0  # the instance died under this request

    with concurrent.futures.ThreadPoolExecutor(len(big)) as pool:
        futures = [pool.submit(publish, version) for version in big]
        # Killed as soon as one publish is through: the others are queued on the lock or writing.
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
        first.process.kill()
        first.process.wait()
        statuses = [future.result() for future in futures]
    assert 0 in statuses, "the kill came too late to interrupt a publish"

    # The survivor publishes to the same package at once (the dead instance's lock expires).
    real = pack(make_package(tmp_path / "sturdy", "sturdy", "2.0.0"))
    assert second.request("PUT", "/sturdy", publish_body("sturdy", "2.0.0", real), token=token).status == 201
    document = get(second, "/sturdy").json()
    expected = {**big, "1.0.0": tarball_bytes("sturdy", "1.0.0"), "2.0.0": real}
    for version in document["versions"]:
        tarball = second.request("GET", f"/sturdy/-/sturdy-{version}.tgz")
        assert tarball.status == 200, version
        assert tarball.body == expected[version], version
    assert {"1.0.0", "2.0.0"} <= set(document["versions"])
    for version, status in zip(big, statuses, strict=True):
        if status == 201:
            assert version in document["versions"]  # acknowledged means kept
    npm = Npm(second.url, tmp_path / "npm-home")
    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "version": "1.0.0", "dependencies": {"sturdy": "2.0.0"}}')
    npm.run("install", cwd=project)


def test_an_instance_killed_mid_fetch_leaves_nothing_half_written(cluster, fake: FakeUpstream) -> None:
    """SIGKILL while a tarball streams in from the upstream: the other instance fetches it whole."""
    first, second = cluster(NOPARD_BASE_URL=BASE_URL)
    manifest = first.request("GET", "/debug").json()
    path = manifest["versions"][manifest["dist-tags"]["latest"]]["dist"]["tarball"][len(BASE_URL):]
    fake.fault("slow", delay=30, paths=["/debug/-/"])
    hung = threading.Thread(target=lambda: _ignore_errors(lambda: first.request("GET", path)))
    hung.start()
    poll_until(lambda: any(p.endswith(".tgz") for _, p in fake.stats()["requests"]), "the fetch to start")
    first.process.kill()
    first.process.wait()
    hung.join()
    fake.fault("none")
    answer = second.request("GET", path)
    assert answer.status == 200 and answer.headers["x-nopard-cache"] == "MISS"
    assert len(answer.body) == int(answer.headers["content-length"]) > 0
    assert second.request("GET", path).headers["x-nopard-cache"] == "HIT"


def _ignore_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except OSError:
        pass


def test_the_tarball_index_of_every_instance_forgets_what_another_changed(cluster) -> None:
    """On S3 an instance's index holds a small tarball's bytes: an unpublish through another
    instance must make it 404 at once (not for FACTS_TTL), and a publish must make a tarball it
    knew as missing 200 at once."""
    first, second = cluster()
    token = first.token("alice", "pw-alice")
    assert first.request("PUT", "/held", publish_body("held", "1.0.0"), token=token).status == 201
    assert second.request("GET", "/held/-/held-2.0.0.tgz").status == 404  # known missing
    assert first.request("PUT", "/held", publish_body("held", "2.0.0"), token=token).status == 201
    assert second.request("GET", "/held/-/held-2.0.0.tgz").body == tarball_bytes("held", "2.0.0")

    assert second.request("GET", "/held/-/held-1.0.0.tgz").status == 200
    assert second.request("GET", "/held/-/held-1.0.0.tgz").status == 200  # from memory now
    document = first.request("GET", "/held?write=true").json()
    del document["versions"]["1.0.0"]
    assert first.request("PUT", f"/held/-rev/{document['_rev']}", document, token=token).status == 200
    assert second.request("GET", "/held/-/held-1.0.0.tgz").status == 404
