"""The changes feed of two `twistd -n nopard` instances sharing one S3 bucket (moto's server) and a real
redis-server: one feed, numbered in the order changes were written, whichever instance took them."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.polling import poll_until
from tests.redis_server import RedisServer
from tests.s3_server import MotoServer
from tests.support import NopardServer, publish_body

PUBLISHES = 12


@pytest.fixture
def instances(start_nopard: Callable[..., NopardServer], tmp_path: Path) -> Iterator[list[NopardServer]]:
    """Two private nopards on one bucket and one Redis (their users in one htpasswd file)."""
    with MotoServer() as moto, RedisServer() as redis:
        env = {"NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": moto.new_bucket(), "REDIS_URL": redis.url,
               "NOPARD_HTPASSWD": str(tmp_path / "htpasswd"), "NOPARD_SYNC_INTERVAL": "0", **moto.env()}
        servers = [start_nopard(env, name=f"instance-{i}") for i in range(2)]
        for server in servers:
            poll_until(lambda s=server: s.request("GET", "/-/nopard/health").json()["redis"]["state"] == "up",
                       f"redis up on {server.url}")
        yield servers
        for server in servers:
            server.stop()


def test_publishes_through_both_instances_at_once_make_one_ordered_feed(instances: list[NopardServer]) -> None:
    """Twelve publishes sent at once, alternately to each instance (two packages, six versions each):
    both instances answer the same feed, numbered 1 to 12 with no gap or repeat, each version's
    publish once, and a package's versions in the order its document took them."""
    token = instances[0].token("alice", "pw-alice")

    def publish(index: int) -> int:
        name, version = f"pkg-{index % 2}", f"1.0.{index // 2}"
        return instances[index % 2].request("PUT", f"/{name}", publish_body(name, version), token=token).status

    with concurrent.futures.ThreadPoolExecutor(PUBLISHES) as pool:
        assert set(pool.map(publish, range(PUBLISHES))) <= {200, 201}
    pages = [server.request("GET", "/-/nopard/changes?since=0").json() for server in instances]
    assert pages[0] == pages[1]
    results = pages[0]["results"]
    assert [r["seq"] for r in results] == list(range(1, PUBLISHES + 1)) and pages[0]["last_seq"] == PUBLISHES
    assert sorted(r["id"] for r in results) == ["pkg-0"] * 6 + ["pkg-1"] * 6
    assert {r["kind"] for r in results} == {"publish"}
    for name in ("pkg-0", "pkg-1"):
        # Each change names the document revision it made: in feed order, those revisions count up.
        revisions = [int(r["changes"][0]["rev"].split("-")[0]) for r in results if r["id"] == name]
        assert revisions == sorted(revisions) and len(set(revisions)) == 6
    assert instances[1].request("GET", "/-/nopard/changes?since=now").json() == {"results": [], "last_seq": 12}
