"""Users in the store (issue 17 item 1), end to end: two `twistd -n nopard` instances on moto's S3
server and a real redis-server share their users with no shared file, nopard-admin changes them on
the bucket from "another machine", and an older version's local htpasswd moves into the store once.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nopard.auth.htpasswd import hash_password, parse_htpasswd
from nopard.auth.stored_users import NEWS
from nopard.cluster.feed import CHANNEL
from tests.e2e.test_accounts import basic
from tests.polling import poll_until
from tests.redis_server import RedisServer
from tests.s3_server import MotoServer
from tests.support import BIN, NopardServer, Npm, make_package

ADMIN = str(BIN / "nopard-admin")


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture
def pair(start_nopard: Callable[..., NopardServer], moto_server: MotoServer, redis_server: RedisServer,
         bucket: str) -> list[NopardServer]:
    """Two instances on one bucket and one Redis; each its own registry directory, no NOPARD_HTPASSWD."""
    env = {"NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": bucket, "NOPARD_REDIS_URL": redis_server.url,
           "NOPARD_MAX_USERS": "1000", "NOPARD_SYNC_INTERVAL": "0", **moto_server.env()}
    servers = [start_nopard(env, name=f"instance-{i}") for i in (1, 2)]
    for server in servers:
        poll_until(lambda s=server: s.request("GET", "/-/nopard/health").json()["redis"]["state"] == "up",
                   f"redis up on {server.url}")
    return servers


def elsewhere_admin(tmp_path: Path, moto_server: MotoServer, bucket: str, *args: str,
                    stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """nopard-admin as on a machine of its own: no registry directory there, the bucket's settings (and ``env``)."""
    env = {"PATH": str(BIN), "NOPARD_REGISTRY_PATH": str(tmp_path / "admin-machine"), "NOPARD_STORAGE": "s3",
           "NOPARD_S3_BUCKET": bucket, **moto_server.env(), **(env or {})}
    return subprocess.run([ADMIN, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


def npm_on(server: NopardServer, home: Path, token: str | None = None) -> Npm:
    npm = Npm(server.url, home)
    if token is not None:
        with npm.userconfig.open("a") as config:
            config.write(f"//127.0.0.1:{server.port}/:_authToken={token}\n")
    return npm


def test_a_user_of_instance_1_is_a_user_of_instance_2(pair: list[NopardServer], tmp_path: Path,
                                                       moto_server: MotoServer, bucket: str) -> None:
    """npm adduser and publish through instance 1; npm whoami and install through instance 2; then
    nopard-admin user passwd on the bucket: the new password logs in on both at once, the old on none."""
    first, second = pair
    alice = npm_on(first, tmp_path / "alice-1")
    status, output = alice.login("adduser", "alice", "first secret", "alice@example.com")
    assert status == 0, output
    alice.run("publish", cwd=make_package(tmp_path / "pkg", "@team/shared", "1.0.0"))
    token = alice.token()
    assert token is not None

    elsewhere = npm_on(second, tmp_path / "alice-2", token)
    assert elsewhere.run("whoami").stdout.strip() == "alice"
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "project", "version": "1.0.0"}')
    elsewhere.run("install", "@team/shared@1.0.0", cwd=project)
    assert (project / "node_modules" / "@team" / "shared" / "package.json").exists()
    assert {s.login("alice", "first secret").status for s in pair} == {201}

    changed = elsewhere_admin(tmp_path, moto_server, bucket, "user", "passwd", "alice", "--password-stdin",
                              stdin="second secret\n")
    assert (changed.returncode, changed.stdout) == (0, "changed the password of alice\n"), changed.stderr
    for server in (second, first):
        assert server.login("alice", "second secret").status == 201, server.url
        assert server.login("alice", "first secret").status == 401, server.url
    listed = elsewhere_admin(tmp_path, moto_server, bucket, "user", "list")
    assert listed.stdout.startswith("alice  alice@example.com  created 20"), listed.stdout


def test_nopard_admin_announces_its_users_changes_so_the_old_password_is_refused_at_once(
        pair: list[NopardServer], tmp_path: Path, moto_server: MotoServer, bucket: str,
        redis_server: RedisServer) -> None:
    """With NOPARD_REDIS_URL, `user passwd` and `user remove` announce the users' change on the
    change feed (the message every instance re-reads the users on), so neither instance accepts
    the old password in the second it would trust its copy; both refuse it right away."""
    for server in pair:
        assert server.login("alice", "old secret").status == 201, server.url  # signed up on the first
    redis = {"NOPARD_REDIS_URL": redis_server.url}
    with redis_server.subscribed(CHANNEL) as message:
        changed = elsewhere_admin(tmp_path, moto_server, bucket, "user", "passwd", "alice", "--password-stdin",
                                  stdin="new secret\n", env=redis)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.splitlines() == ["changed the password of alice",
                                               "told the running instances: the users changed"]
        assert message() == NEWS
        assert [server.login("alice", "old secret").status for server in pair] == [401, 401]
        assert [server.login("alice", "new secret").status for server in pair] == [201, 201]
        removed = elsewhere_admin(tmp_path, moto_server, bucket, "user", "remove", "alice", env=redis)
        assert removed.stdout.splitlines()[-1] == "told the running instances: the users changed", removed.stderr
        assert message() == NEWS
        # (a login would sign alice up again)
        whoami = [server.request("GET", "/-/whoami", headers=basic("alice", "new secret")) for server in pair]
        assert [answer.status for answer in whoami] == [401, 401]


def test_concurrent_sign_ups_through_both_instances_are_all_kept(pair: list[NopardServer], moto_server: MotoServer,
                                                                  bucket: str) -> None:
    """40 registrations at once, alternating instances: every one logs in afterwards, on either instance."""
    names = [f"user{i}" for i in range(40)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda i: pair[i % 2].login(names[i], f"pw-{i}").status, range(len(names))))
    assert statuses == [201] * len(names)
    stored = moto_server.client().get_object(Bucket=bucket, Key="users/htpasswd")["Body"].read().decode()
    assert sorted(parse_htpasswd(stored)) == sorted(names)
    for i, name in enumerate(names):
        assert pair[(i + 1) % 2].login(name, f"pw-{i}").status == 201, name


def test_an_older_local_htpasswd_moves_into_the_store_once(start_nopard: Callable[..., NopardServer],
                                                           tmp_path: Path) -> None:
    """<registry>/htpasswd of an older version: moved into the store at the first start (one line
    says how many users and where from), renamed, and not moved again at the next start."""
    registry = tmp_path / "nopard" / "registry"
    registry.mkdir(parents=True)
    (registry / "htpasswd").write_text(f"alice:{hash_password('pw-a')}\nbob:{hash_password('pw-b')}\n")
    server = start_nopard({"NOPARD_MAX_USERS": "0"})
    assert server.login("alice", "pw-a").status == 201 and server.login("bob", "pw-b").status == 201
    moved = [line for line in server.log().splitlines() if "into the store" in line]
    assert len(moved) == 1 and (
        f"moved 2 users from {registry / 'htpasswd'} into the store (users/htpasswd); "
        f"the file is renamed {registry / 'htpasswd'}.moved-to-store and no longer read") in moved[0]
    assert not (registry / "htpasswd").exists() and (registry / "htpasswd.moved-to-store").exists()
    assert sorted(parse_htpasswd((registry / "users" / "htpasswd").read_text())) == ["alice", "bob"]

    server.stop()
    server.start()
    assert server.login("alice", "pw-a").status == 201
    assert len([line for line in server.log().splitlines() if "into the store" in line]) == 1


def test_users_are_shared_by_the_workers_of_one_machine(tmp_path: Path) -> None:
    """NOPARD_WORKERS=2, no Redis, filesystem store: a user registered through one worker logs in
    through the other at once (its copy just read), and nopard-admin's new password works on both."""
    from tests.e2e.test_workers import pinned, started_workers

    server = NopardServer(tmp_path / "nopard", {"NOPARD_WORKERS": "2", "NOPARD_MAX_USERS": "10"})
    server.start()
    try:
        started_workers(server, 2)
        first, second = pinned(server).values()
        body = {"name": "carol", "password": "pw-c", "type": "user"}
        assert second.request("PUT", "/-/user/org.couchdb.user:carol", body).status == 201  # second has read
        body = {"name": "alice", "password": "pw-a", "type": "user"}
        token = first.request("PUT", "/-/user/org.couchdb.user:alice", body).json()["token"]
        assert second.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}
        assert second.request("PUT", "/-/user/org.couchdb.user:alice", body).status == 201
        changed = subprocess.run([ADMIN, "user", "passwd", "alice", "--password-stdin"], input="pw-new\n",
                                 text=True, capture_output=True,
                                 env={"PATH": str(BIN), "NOPARD_REGISTRY_PATH": str(server.registry)})
        assert changed.returncode == 0, changed.stderr
        for worker in (first, second):
            new = {**body, "password": "pw-new"}
            assert worker.request("PUT", "/-/user/org.couchdb.user:alice", new).status == 201, worker.worker
            assert worker.request("PUT", "/-/user/org.couchdb.user:alice", body).status == 401, worker.worker
    finally:
        server.stop()
