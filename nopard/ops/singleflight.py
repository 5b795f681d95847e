"""Concurrent callers of one piece of work share one run of it ("single flight").

Used where a second run would only repeat the first: fetching one tarball from
the upstream, rebuilding the search index, measuring the store.
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
        """The result of ``work()``, started now unless a run for ``key`` is under way, then that one's."""
        if key in self._waiters:
            waiter: Deferred[T] = Deferred()
            self._waiters[key].append(waiter)
            return await waiter
        self._waiters[key] = []
        try:
            result = await work()
        except BaseException as error:  # the key must not stay taken, whatever stopped the work
            for waiter in self._waiters.pop(key):
                waiter.errback(error)
            raise
        for waiter in self._waiters.pop(key):
            waiter.callback(result)
        return result
