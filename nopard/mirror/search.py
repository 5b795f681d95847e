"""The upstream's own search (``/-/v1/search``), asked for npm search within the stale deadline.

Only the forwarder is asked (a scope with its own upstream, or a private one, is
never searched there); while its breaker counts it as down nobody waits on it, and
an answer that does not come within NOPARD_STALE_DEADLINE, fails or is no search
answer leaves the search to what nopard holds.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from nopard.domain.errors import UpstreamUnavailable
from nopard.mirror.upstreams import Upstreams
from nopard.settings.config import LiveSettings

MAX_ANSWER_BYTES = 4 * 1024 * 1024  # 250 results of the public registry are well under 1 MB


class UpstreamSearch:
    """Asks the forwarder's ``/-/v1/search``; says which names it serves."""

    def __init__(self, upstreams: Upstreams, settings: LiveSettings, clock: IReactorTime) -> None:
        self._upstreams = upstreams
        self._settings = settings
        self._clock = clock

    def forwards(self, name: str) -> bool:
        """Whether ``name`` is served from the forwarder (not private, no upstream of its own, proxied)."""
        default = self._upstreams.default
        return default is not None and self._upstreams.for_name(name) is default

    async def search(self, text: str, offset: int, size: int) -> Any:
        """The forwarder's decoded answer for ``text`` (``from``/``size``), or None: no forwarder, down, slow, not JSON.

        What the answer holds is read by nopard.catalog.merged.read_upstream_answer.
        """
        upstream = self._upstreams.default
        if upstream is None or upstream.breaker.down:
            return None
        params = {"text": text, "size": str(size), "from": str(offset)}
        deadline = self._settings.current.stale_deadline
        asked = Deferred.fromCoroutine(upstream.search(params, deadline, MAX_ANSWER_BYTES))
        # Whatever the HTTP client's own timers do, nobody waits past the deadline on this clock.
        timer = self._clock.callLater(deadline, asked.cancel)
        try:
            status, body = await asked
        except (UpstreamUnavailable, CancelledError):
            return None
        finally:
            if timer.active():
                timer.cancel()
        if status != 200 or body is None:
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
