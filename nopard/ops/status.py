"""What an operator wants at a glance: upstream health, prepared-document memory, Redis.

Served by ``/-/nopard/status`` and the status page; read from the live
components each time, nothing kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from nopard.domain.prepared import PreparedCache
from nopard.domain.times import iso_time


class Breaker(Protocol):
    """An upstream's circuit breaker, as far as the status shows it."""

    @property
    def state(self) -> str:
        """closed, open or probing."""

    failures: int
    opened_at: float | None


class UpstreamHealth(Protocol):
    """An upstream, as far as the status shows it."""

    shown_url: str  # the URL without its credentials
    breaker: Breaker
    requests_made: int


class SharedState(Protocol):
    """The link between instances (Redis, or none: ``off``)."""

    @property
    def state(self) -> str:
        """up, degraded or off."""

    @property
    def since(self) -> float | None:
        """When ``state`` began (None: never changes)."""


class OperatorStatus:
    """Cache, Redis and upstream states, read now."""

    def __init__(self, cache: PreparedCache, shared: SharedState,
                 upstreams: Callable[[], Iterable[UpstreamHealth]], firewall: Any = None,
                 forwarder: Callable[[], dict[str, Any]] | None = None,
                 mirror: Callable[[], dict[str, Any]] | None = None) -> None:
        self._cache = cache
        self._shared = shared
        self._upstreams = upstreams
        self._firewall = firewall  # nopard.firewall.verdicts.Firewall: what it withholds
        # Which registry is mirrored and where that came from (settings/firstrun.py).
        self._forwarder = forwarder or (lambda: {"url": None, "source": "default", "note": ""})
        # The mirror's size, limit and evictions (nopard.jobs.eviction.Eviction.figures).
        self._mirror = mirror or (lambda: {"size": None, "limit": None, "evictions": 0, "measured_at": None})

    def status(self) -> dict[str, Any]:
        """What an operator wants at a glance: upstream health and cache use (URLs without credentials)."""
        shared = self._shared
        since = iso_time(shared.since) if shared.since is not None else None
        found = {
            "cache": self._cache.stats(),
            "redis": {"state": shared.state, "since": since},
            "forwarder": self._forwarder(),
            "mirror": self._mirror(),
            "upstreams": [
                {"url": u.shown_url, "state": u.breaker.state,
                 "consecutive_failures": u.breaker.failures, "requests": u.requests_made,
                 "down_since": u.breaker.opened_at}
                for u in self._upstreams()
            ],
        }
        if self._firewall is not None:
            found["firewall"] = self._firewall.status()
        return found
