"""The tests' one poll-until helper, on a fake clock (no real waiting)."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.polling import PollTimeout, poll_text, poll_until, poll_until_async


class FakeTime:
    """A clock that only moves when the poller sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_true_result_without_sleeping_when_it_already_holds() -> None:
    """A condition true at once is returned at once, as its own value."""
    time = FakeTime()
    assert poll_until(lambda: {"state": "up"}, clock=time.clock, sleep=time.sleep) == {"state": "up"}
    assert time.sleeps == []


def test_asks_again_each_interval_until_the_condition_holds() -> None:
    """A condition that holds on the fourth call: three sleeps of the interval in between."""
    time, answers = FakeTime(), iter([0, None, "", 7])
    assert poll_until(lambda: next(answers), interval=0.5, clock=time.clock, sleep=time.sleep) == 7
    assert time.sleeps == [0.5, 0.5, 0.5]


def test_fails_as_an_assertion_naming_what_it_waited_for() -> None:
    """Never true: PollTimeout (an AssertionError) after the timeout, asked once more at the deadline."""
    time, calls = FakeTime(), []
    with pytest.raises(PollTimeout, match="after 1 s waiting for redis up") as raised:
        poll_until(lambda: calls.append(time.now), "redis up", timeout=1, interval=0.25,
                   clock=time.clock, sleep=time.sleep)
    assert isinstance(raised.value, AssertionError)
    assert calls == [0, 0.25, 0.5, 0.75, 1.0]


def test_a_callable_description_is_asked_only_on_failure() -> None:
    """The description can show the last state seen; it is not computed while polling succeeds."""
    time, described = FakeTime(), []
    poll_until(lambda: True, lambda: described.append(1) or "x", clock=time.clock, sleep=time.sleep)
    assert described == []


def test_poll_text_returns_the_text_once_it_contains_the_wanted_line() -> None:
    """poll_text reads until the wanted string is there and returns that whole text."""
    texts = iter(["", "a\n", "a\nb wanted\n"])
    assert poll_text(lambda: next(texts), "wanted") == "a\nb wanted\n"


def test_poll_text_failure_shows_the_end_of_the_last_text() -> None:
    """When the string never appears, the failure quotes what was read last."""
    with pytest.raises(PollTimeout, match="'missing' in:\nthe log so far"):
        poll_text(lambda: "the log so far", "missing", timeout=0)


@pytest_twisted.ensureDeferred
async def test_the_async_poller_pauses_with_the_given_sleep() -> None:
    """poll_until_async awaits the sleep it is given between tries and returns the first true result."""
    time, answers = FakeTime(), iter([False, False, "ready"])

    async def sleep(seconds: float) -> None:
        time.sleep(seconds)

    assert await poll_until_async(lambda: next(answers), sleep, interval=0.1, clock=time.clock) == "ready"
    assert time.sleeps == [0.1, 0.1]
