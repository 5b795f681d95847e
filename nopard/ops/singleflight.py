"""Concurrent callers of one piece of work share one run of it ("single flight").

Used where a second run would only repeat the first: fetching one tarball from
the upstream, rebuilding the search index, measuring the store.

The shared run belongs to no caller: a caller that goes away (its Deferred
cancelled, e.g. a client hanging up) stops waiting, and only it; the run goes
on for the others and finishes its work (a tarball fetched is stored), even
when nobody waits any more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs ``work`` once per key at a time; callers arriving meanwhile get that run's result or error."""

    def __init__(self) -> None:
        self._waiters: dict[Hashable, list[Deferred[Any]]] = {}

    def running(self, key: Hashable) -> bool:
        """Whether a run for ``key`` is under way."""
        return key in self._waiters

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """The result of ``work()``, started now unless a run for ``key`` is under way, then that one's.

        Cancelling the caller's wait cancels only that wait, never the run.
        """
        starting = key not in self._waiters
        waiters = self._waiters.setdefault(key, [])

        def leave(waiter: Deferred[Any]) -> None:
            waiters.remove(waiter)  # then Deferred.cancel fails it with CancelledError

        waiter: Deferred[T] = Deferred(leave)
        waiters.append(waiter)
        if starting:
            Deferred.fromCoroutine(self._drive(key, work))
        return await waiter

    async def _drive(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> None:
        """Run ``work`` and hand its outcome to whoever still waits; nothing of it escapes."""
        try:
            result = await work()
        except BaseException as error:  # the key must not stay taken, whatever stopped the work
            for waiter in self._waiters.pop(key):
                waiter.errback(error)
            return
        for waiter in self._waiters.pop(key):
            waiter.callback(result)
