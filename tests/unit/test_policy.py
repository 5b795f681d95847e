"""The offline-first table and the breaker, on a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from nopard.mirror.policy import Action, decide
from nopard.upstream.breaker import Breaker

TTL = 300.0


@pytest.mark.parametrize("fetched_at, now, down, action", [
    (1000.0, 1000.0 + TTL - 1, False, Action.SERVE),        # fresh, upstream healthy
    (1000.0, 1000.0 + TTL - 1, True, Action.SERVE),         # fresh, upstream down
    (1000.0, 1000.0 + TTL, False, Action.REVALIDATE),       # stale, healthy
    (1000.0, 1000.0 + TTL + 9999, True, Action.SERVE_STALE),  # stale, down
    (None, 5000.0, False, Action.FETCH),                    # missing, healthy
    (None, 5000.0, True, Action.FAIL_FAST),                 # missing, down
])
def test_every_cell_of_the_policy_table(fetched_at, now, down, action) -> None:
    """decide() gives each cell of DESIGN.md's offline-first table."""
    assert decide(fetched_at, now, TTL, down) is action


def test_freshness_follows_the_clock() -> None:
    """A document is fresh until exactly META_TTL seconds after its fetch."""
    clock = Clock()
    clock.advance(100)
    fetched_at = clock.seconds()
    clock.advance(TTL - 0.001)
    assert decide(fetched_at, clock.seconds(), TTL, False) is Action.SERVE
    clock.advance(0.001)
    assert decide(fetched_at, clock.seconds(), TTL, False) is Action.REVALIDATE


def test_breaker_opens_after_consecutive_failures() -> None:
    """Three failures in a row open the breaker; a success in between resets the count."""
    breaker = Breaker(Clock().seconds, threshold=3)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    breaker.failed()
    assert not breaker.is_open
    breaker.failed()
    assert breaker.is_open and breaker.state == "open"


def test_open_breaker_lets_one_probe_through_per_interval() -> None:
    """While open, nothing goes upstream until the probe interval passes, then exactly one probe."""
    clock = Clock()
    breaker = Breaker(clock.seconds, threshold=1, probe_interval=10)
    breaker.failed()
    assert not breaker.allow()
    clock.advance(10)
    assert breaker.allow()
    assert breaker.state == "probing"
    assert not breaker.allow()


def test_failed_probe_waits_another_interval() -> None:
    """A failed probe keeps the breaker open and schedules the next probe an interval later."""
    clock = Clock()
    breaker = Breaker(clock.seconds, threshold=1, probe_interval=10)
    breaker.failed()
    clock.advance(10)
    assert breaker.allow()
    breaker.failed()
    assert breaker.is_open and not breaker.allow()
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_successful_probe_closes_the_breaker() -> None:
    """A probe that succeeds closes the breaker: everything goes upstream again."""
    clock = Clock()
    breaker = Breaker(clock.seconds, threshold=1, probe_interval=10)
    breaker.failed()
    clock.advance(10)
    breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))
    assert [state for _, state in breaker.transitions] == ["open", "closed"]


def test_down_until_a_probe_is_due() -> None:
    """An open breaker counts as down until the probe interval passes, then one caller probes."""
    clock = Clock()
    breaker = Breaker(clock.seconds, threshold=1, probe_interval=10)
    assert not breaker.down
    breaker.failed()
    assert breaker.down
    clock.advance(10)
    assert not breaker.down
    assert breaker.allow()
    assert breaker.down
