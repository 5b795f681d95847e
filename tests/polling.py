"""One way for the tests to wait for something another process does: ask again until it holds.

A test never sleeps a fixed time hoping that is enough (too short on a busy machine, too long on
an idle one) and never asserts how long anything took; it polls, and the timeout only bounds how
long a failing test hangs. Kept free of heavy imports so that every harness (nopard, redis-server,
nginx, moto, chromium) can use it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(AssertionError):
    """What was waited for did not come within the timeout (an assertion: the test fails)."""


def _pauses(timeout: float, interval: float, clock: Callable[[], float]) -> Iterator[float]:
    """The pause after each try: ``interval`` until the deadline, then one last try (pause 0)."""
    deadline = clock() + timeout
    while clock() < deadline:
        yield interval
    yield 0.0


def _timed_out(condition: object, what: str | Callable[[], str], timeout: float) -> PollTimeout:
    described = (what() if callable(what) else what) or repr(condition)
    return PollTimeout(f"timed out after {timeout:g} s waiting for {described}")


def poll_until(
    condition: Callable[[], T],
    what: str | Callable[[], str] = "",
    timeout: float = 20.0,
    interval: float = 0.05,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``condition`` until it returns something true and return that; ``condition`` is
    always called at least once and once more at the deadline.

    ``what`` names what is waited for in the failure (a callable is asked only then, so it can
    show the last state seen). Exceptions from ``condition`` propagate: a condition that may
    fail while the thing is not ready yet (a refused connection) catches that itself.
    """
    for pause in _pauses(timeout, interval, clock):
        result = condition()
        if result:
            return result
        if pause:
            sleep(pause)
    raise _timed_out(condition, what, timeout)


async def poll_until_async(
    condition: Callable[[], T],
    sleep: Callable[[float], Awaitable[object]],
    what: str | Callable[[], str] = "",
    timeout: float = 20.0,
    interval: float = 0.05,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """:func:`poll_until` for a test running inside the reactor: it pauses with ``sleep`` (a
    Deferred-returning delay on the test's reactor) so the reactor keeps running meanwhile."""
    for pause in _pauses(timeout, interval, clock):
        result = condition()
        if result:
            return result
        if pause:
            await sleep(pause)
    raise _timed_out(condition, what, timeout)


def poll_text(read: Callable[[], str], wanted: str, timeout: float = 10.0) -> str:
    """What ``read`` returns once it contains ``wanted`` (log lines are written asynchronously);
    the failure shows the end of the last text read."""
    last = [""]

    def contains() -> bool:
        last[0] = read()
        return wanted in last[0]

    poll_until(contains, lambda: f"{wanted!r} in:\n{last[0][-3000:]}", timeout)
    return last[0]



def wait_for_start(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    name: str,
    timeout: float,
    log: Callable[[], str] = lambda: "",
    on_timeout: Callable[[], object] = lambda: None,
) -> None:
    """Poll ``ready`` until the just-started ``process`` serves; an ``OSError`` from ``ready`` (a
    refused connection) counts as not yet. RuntimeError with ``log()`` when the process exits
    first, or (after ``on_timeout()``, which stops it) when ``timeout`` passes."""

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{log()}")
        try:
            return bool(ready())
        except OSError:
            return False

    try:
        poll_until(serving, f"{name} to answer", timeout)
    except PollTimeout:
        on_timeout()
        raise RuntimeError(f"{name} did not answer within {timeout:g} s:\n{log()}") from None
