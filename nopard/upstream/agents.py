"""The agent upstream requests go through, following the settings it is built from.

NOPARD_PROXY_URL, NOPARD_IGNORE_CERT and NOPARD_UPSTREAM_TIMEOUT (the connect
timeout) are fixed into an agent when it is built; the settings page may change
them at runtime, so ``LiveAgent`` builds a new agent when they change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IAgent
from zope.interface import implementer

from nopard.settings.config import LiveSettings, Settings

BuildAgent = Callable[[Settings, HTTPConnectionPool], Any]


def agent_key(settings: Settings) -> tuple[str, bool, float]:
    """The settings an upstream agent is built from."""
    return settings.proxy_url, settings.ignore_cert, settings.upstream_timeout


@implementer(IAgent)
class LiveAgent:
    """An IAgent that passes each request to the agent built for the current settings.

    Each agent gets its own connection pool: a pooled connection is keyed by
    scheme, host and port only, so a shared pool would let a connection made
    without certificate checks, or without the proxy, serve requests after
    the setting changed.
    """

    def __init__(self, settings: LiveSettings, build: BuildAgent, make_pool: Callable[[], HTTPConnectionPool]) -> None:
        self._settings = settings
        self._build = build
        self._make_pool = make_pool
        self._pools: list[HTTPConnectionPool] = []  # every pool made; the last is in use
        self._key: tuple[str, bool, float] | None = None
        self._agent: Any = None

    def current(self) -> Any:
        """The agent for the current settings, built anew if they changed since the last request."""
        settings = self._settings.current
        key = agent_key(settings)
        if key != self._key:
            if self._pools:
                self._pools[-1].closeCachedConnections()  # idle ones; busy ones close when cached
            pool = self._make_pool()
            self._pools.append(pool)
            self._agent = self._build(settings, pool)
            self._key = key
        return self._agent

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred:
        """Send the request through the agent of the current settings."""
        return self.current().request(method, uri, headers, bodyProducer)

    def closeCachedConnections(self) -> Deferred:
        """Close the connections of every pool (at shutdown), old ones too."""
        return gatherResults([pool.closeCachedConnections() for pool in self._pools])
