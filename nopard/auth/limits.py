"""Brute-force protection: failed password checks per account and per client address.

Each key (``user:<name>``, ``addr:<address>``) keeps the times of its recent
failures. Once a key has NOPARD_LOGIN_ATTEMPTS failures within the last
NOPARD_LOGIN_WINDOW seconds, further password checks for it are refused with
TooManyAttempts before the password is even looked at; the refusal says when
the oldest counted failure leaves the window. A successful check clears the
account's failures. Nothing is ever locked for longer than the window.
Kept in memory: a restart forgets every count.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any

from nopard.config import LiveSettings
from nopard.errors import TooManyAttempts

MAX_KEYS = 100_000  # memory bound: the least recently failed keys are forgotten first


class LoginLimiter:
    """Counts failed password checks in a sliding window; ``clock`` has ``seconds()``."""

    def __init__(self, settings: LiveSettings, clock: Any, max_keys: int = MAX_KEYS) -> None:
        self._settings = settings
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def keys(account: str | None, address: str | None) -> list[str]:
        """The keys a check by ``account`` from ``address`` counts against."""
        keys = []
        if account:
            keys.append(f"user:{account}")
        if address:
            keys.append(f"addr:{address}")
        return keys

    def _recent(self, key: str, now: float) -> deque[float] | None:
        """The failures of ``key`` still in the window (dropping older ones)."""
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = now - self._settings.current.login_window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, account: str | None, address: str | None) -> int:
        """Seconds until a check by ``account`` from ``address`` is allowed again; 0: now."""
        now = self._clock.seconds()
        current = self._settings.current
        wait = 0.0
        for key in self.keys(account, address):
            times = self._recent(key, now)
            if times is not None and len(times) >= current.login_attempts:
                # The check is allowed once enough failures left the window.
                freeing = times[len(times) - current.login_attempts]
                wait = max(wait, freeing + current.login_window - now)
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def check(self, account: str | None, address: str | None) -> None:
        """Raise TooManyAttempts if ``account`` or ``address`` failed too often lately."""
        wait = self.retry_after(account, address)
        if wait:
            raise TooManyAttempts(
                f"too many failed logins; try again in {wait} seconds", retry_after=wait
            )

    def failed(self, account: str | None, address: str | None) -> None:
        """Count one failed password check."""
        now = self._clock.seconds()
        for key in self.keys(account, address):
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque()
            times.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, account: str | None) -> None:
        """The account proved its password: forget its failures (its address keeps its count)."""
        if account:
            self._failures.pop(f"user:{account}", None)
