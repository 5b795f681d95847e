"""The record of use under NOPARD_WORKERS: each worker counts what it served in memory and
flushes it when the supervisor stops it, into the same shards; the store ends with both."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.e2e.test_workers import pinned, workers  # noqa: F401  (workers: the fixture)
from tests.support import NopardServer
from tests.upstream import FakeUpstream

SERVED = (("debug", "debug-4.4.3.tgz"), ("commander", "commander-15.1.0.tgz"))  # one through each worker


def test_every_workers_uses_reach_the_store_when_nopard_stops(
    workers: Callable[..., NopardServer], fake: FakeUpstream,  # noqa: F811
) -> None:
    server = workers(NOPARD_FORWARDER_URL=fake.url, NOPARD_SYNC_INTERVAL="0")
    for (name, filename), connection in zip(SERVED, pinned(server).values(), strict=True):
        assert connection.request("GET", f"/{name}").status == 200
        assert connection.request("GET", f"/{name}/-/{filename}").status == 200
    server.stop()
    recorded: dict = {}
    for shard in (server.registry / "usage").glob("*.json"):
        recorded.update(json.loads(Path(shard).read_text()))
    assert {name: set(recorded[name]["files"]) for name, _ in SERVED} == {
        name: {filename} for name, filename in SERVED}
