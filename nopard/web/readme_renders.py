"""Each package version's readme rendered at most once, within budgets, and kept.

A package page asks ``ReadmeRenders.html`` for its readme. A readme longer
than readme.MAX_README is shown as text at once. Otherwise a rendering is
kept, keyed by (name, version, SHA-256 of the text), so views after the first
cost a look-up, and views during the first share its rendering. Renderings
wait in one queue for one renderer (nopard.web.readme_worker's child process
in nopard, a fake in tests), which enforces the time budget; a readme found
too slow or failing stays text, and is not tried again for RETRY_SECONDS. A
page waits at most PAGE_WAIT_SECONDS: past that it shows the text and the
rendering goes on for the next view. With QUEUE readmes waiting, a new one
is shown as text and not queued: a flood of page views of hostile readmes
costs the renderer at most QUEUE budgets, and nothing else in nopard.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from nopard.web.readme import BUSY, FAILED, MAX_README, PAGE_WAIT_SECONDS, PENDING, TOO_LARGE, TOO_SLOW, plain_readme
from nopard.web.readme_worker import RenderTooSlow

# Memory budget of the kept renderings: 32 MiB holds a thousand ordinary readmes (10 to 30K of
# HTML each) or at least 12 of the largest (MAX_README characters make up to ~2.5 MB of HTML),
# a small share of what nopard's document cache (NOPARD_MEMORY_CACHE_SIZE) may hold.
CACHE_BYTES = 32 * 1024 * 1024
QUEUE = 16  # renderings waiting for the renderer at most (each costs up to RENDER_SECONDS)
# A readme found too slow (or failing) is tried again after this: the machine may just have
# been busy; a hostile one costs one budget per version per hour.
RETRY_SECONDS = 3600.0
_ENTRY_OVERHEAD = 200  # bytes a kept entry costs beyond its HTML (key, hash, node)


class Renderer(Protocol):
    """Renders one readme at a time; fails with RenderTooSlow past its time budget."""

    def render(self, text: str) -> Deferred[str]:
        """The sanitized HTML of ``text``."""
        ...


@dataclass(frozen=True)
class Rendered:
    """A kept outcome: the HTML, or why the readme stays text (TOO_SLOW, FAILED)."""

    html: str | None
    reason: str = ""
    at: float = 0.0  # when it was rendered (or given up)

    @property
    def size(self) -> int:
        """Bytes this entry holds in memory."""
        return _ENTRY_OVERHEAD + (sys.getsizeof(self.html) if self.html is not None else 0)


Key = tuple[str, str, str]


class ReadmeRenders:
    """The readme HTML of package pages: cached, shared, queued, within budgets.

    ``renders`` counts readmes sent to the renderer; ``kept_bytes`` what the
    cache holds. ``cache_bytes``, ``queue`` and ``page_wait`` default to the
    budgets above (tests make them small).
    """

    def __init__(self, renderer: Renderer, clock: IReactorTime, cache_bytes: int = CACHE_BYTES,
                 queue: int = QUEUE, page_wait: float = PAGE_WAIT_SECONDS) -> None:
        self._renderer = renderer
        self._clock = clock
        self._cache_bytes = cache_bytes
        self._queue_size = queue
        self._page_wait = page_wait
        self._kept: OrderedDict[Key, Rendered] = OrderedDict()
        self.kept_bytes = 0
        self._waiters: dict[Key, list[Deferred[Rendered]]] = {}  # queued or rendering
        self._queue: deque[tuple[Key, str]] = deque()
        self._busy = False
        self.renders = 0

    async def html(self, name: str, version: str, text: str) -> str:
        """The HTML to show for ``name``@``version``'s readme ``text``: rendered, or the text with a note."""
        if len(text) > MAX_README:
            return plain_readme(text, TOO_LARGE)
        key = (name, version, hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())
        kept = self._kept.get(key)
        if kept is not None and kept.html is None and self._clock.seconds() - kept.at >= RETRY_SECONDS:
            self._forget(key)
            kept = None
        if kept is not None:
            self._kept.move_to_end(key)
            return _shown(kept, text)
        if key not in self._waiters:
            if len(self._queue) >= self._queue_size:
                return plain_readme(text, BUSY)
            self._waiters[key] = []
            self._queue.append((key, text))
        waiter: Deferred[Rendered] = Deferred()
        self._waiters[key].append(waiter)
        timer = self._clock.callLater(self._page_wait, self._give_up, key, waiter)
        self._pump()
        result = await waiter
        if timer.active():
            timer.cancel()
        return plain_readme(text, PENDING) if result is _PENDING else _shown(result, text)

    def _give_up(self, key: Key, waiter: Deferred[Rendered]) -> None:
        """The page waited long enough: it shows the text; the rendering goes on, for the next view."""
        waiters = self._waiters.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
            waiter.callback(_PENDING)

    def _pump(self) -> None:
        if self._busy or not self._queue:
            return
        key, text = self._queue.popleft()
        self._busy = True
        self.renders += 1
        maybeDeferred(self._renderer.render, text).addCallbacks(
            lambda html: Rendered(html), _failed_outcome,
        ).addCallback(self._done, key)

    def _done(self, outcome: Rendered, key: Key) -> None:
        self._busy = False
        outcome = Rendered(outcome.html, outcome.reason, self._clock.seconds())
        self._keep(key, outcome)
        for waiter in self._waiters.pop(key, []):
            waiter.callback(outcome)
        self._pump()

    def _keep(self, key: Key, outcome: Rendered) -> None:
        if outcome.size > self._cache_bytes:
            return
        self._kept[key] = outcome
        self.kept_bytes += outcome.size
        while self.kept_bytes > self._cache_bytes:
            self._forget(next(iter(self._kept)))

    def _forget(self, key: Key) -> None:
        self.kept_bytes -= self._kept.pop(key).size


_PENDING = Rendered(None, PENDING)


def _failed_outcome(failure: Failure) -> Rendered:
    return Rendered(None, TOO_SLOW if failure.check(RenderTooSlow) else FAILED)


def _shown(outcome: Rendered, text: str) -> str:
    return outcome.html if outcome.html is not None else plain_readme(text, outcome.reason)
