"""Pieces of nopard/service.py's wiring that stand on their own."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from nopard.upstream.pool import upstream_pool


class Pong(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"pong"


@pytest_twisted.ensureDeferred
async def test_upstream_connections_do_not_log_their_factories() -> None:
    """Each new upstream connection would log "Starting factory" and "Stopping factory";
    the quiet pool silences them through public API (fails if Twisted changes how)."""
    site = Site(Pong())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    pool = upstream_pool(reactor)
    try:
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        for _ in range(2):  # the second one reuses the cached connection
            response = await client.get(f"http://127.0.0.1:{port.getHost().port}/ping")
            assert await response.content() == b"pong"
        await pool.closeCachedConnections()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    assert [e for e in events if "factory" in str(e.get("log_format", ""))] == []
