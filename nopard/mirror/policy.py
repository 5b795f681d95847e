"""The offline-first policy: what to do for a mirrored document, as a pure function of the clock.

| cached document | upstream healthy              | upstream down (breaker open) |
|-----------------|-------------------------------|------------------------------|
| fresh           | HIT: serve, no upstream call  | HIT                          |
| stale           | revalidate within a deadline; | STALE: serve at once         |
|                 | on failure serve STALE        |                              |
| missing         | MISS: fetch, store, serve     | fail fast (404), no wait     |

``decide`` is that table; nopard.mirror.documents carries it out against
storage and the upstream, nopard.mirror.served for what clients are served.
"""

from __future__ import annotations

import enum

# Seconds since the upstream's last answer during which clients wait on a revalidation.
TRUST_WINDOW = 60.0
# Seconds a request may go unanswered before an untrusted upstream counts as silent.
SILENT_ENOUGH = 0.5


class Action(enum.Enum):
    """What to do for a mirrored document; the value is how the response says it was served."""

    SERVE = "HIT"
    REVALIDATE = "REVALIDATED"
    SERVE_STALE = "STALE"
    FETCH = "MISS"
    FAIL_FAST = "FAIL"


def decide(fetched_at: float | None, now: float, ttl: float, upstream_down: bool) -> Action:
    """The offline-first table: ``fetched_at`` is None when nothing is cached."""
    if fetched_at is None:
        return Action.FAIL_FAST if upstream_down else Action.FETCH
    if now - fetched_at < ttl:
        return Action.SERVE
    return Action.SERVE_STALE if upstream_down else Action.REVALIDATE
