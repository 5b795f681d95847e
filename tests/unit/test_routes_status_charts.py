"""The status page's charts of the last day, in-process: requests served through NopardSite (as
twistd serves them), an upstream that goes down and comes back, a sync run, on an injected clock."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.web.resource import Resource

from tests.support import publish_body
from tests.unit.route_harness import OPERATOR_TOKEN, InProcess, build

OPERATOR = {"X_Nopard_Operator_Token": OPERATOR_TOKEN}
MINUTE = 60.0


class SwitchedUpstream(Resource):
    """An upstream that holds nothing (404), or is down (503) while ``down``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setResponseCode(503 if self.down else 404)
        return b'{"error":"unavailable"}' if self.down else b'{"error":"Not found"}'


async def get(app: InProcess, path: str) -> int:
    """GET ``path`` through NopardSite, as a client would: the status."""
    exchange = await app.raw(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return exchange.status


def chart(page: str, name: str) -> str:
    """The <svg> of chart ``name`` in ``page``."""
    found = re.search(rf'<svg [^>]*data-chart="{name}".*?</svg>', page, re.S)
    assert found, f"no {name} chart in the page"
    return found.group(0)


@pytest_twisted.ensureDeferred
async def test_the_day_charts_show_requests_an_outage_and_a_sync_run(tmp_path: Path) -> None:
    upstream = SwitchedUpstream()
    app = build(tmp_path, upstream=upstream, probe_interval="10")
    token = await app.user("alice")
    assert (await app.call("PUT", "/local-pkg", publish_body("local-pkg", "1.0.0"), token=token)).status == 201
    for _ in range(3):
        assert await get(app, "/local-pkg") == 200
    app.clock.advance(20 * MINUTE)
    upstream.down = True
    for _ in range(4):
        await get(app, "/missing-pkg")
    app.clock.advance(30 * MINUTE)
    upstream.down = False
    await get(app, "/missing-pkg")  # the probe: the upstream answers again
    app.clock.advance(10 * MINUTE)
    assert (await app.call("POST", "/-/nopard/sync", {"job": "refresh"}, **OPERATOR)).status == 200
    app.clock.advance(MINUTE)

    answer = await app.call("GET", "/-/web/status")
    assert answer.status == 200
    page = answer.body.decode()
    requests = chart(page, "requests")
    assert len(re.findall(r'<rect [^>]*class="LOCAL"', requests)) == 1
    assert "3 documents and tarballs served in the last 24 hours: LOCAL 3 (100%)" in page
    timeline = chart(page, "upstreams")
    assert 'role="img"' in timeline and "<title" in timeline and "<desc" in timeline
    downs = re.findall(r'<rect [^>]*class="down"', timeline)
    assert len(downs) == 1, timeline
    assert re.search(r"down once, (2\d|3\d) min in all", page), page
    sync = chart(page, "sync")
    assert len(re.findall(r'<circle [^>]*class="run"', sync)) == 1
    assert "1 sync run in the last 24 hours" in page
    sizes = chart(page, "sizes")
    assert 'class="line store"' in sizes and "no limit set" in page
