"""The upstream's health: a circuit breaker on an injected clock.

Closed: requests go upstream. After ``threshold`` consecutive failures
(timeouts, refused connections, 5xx) it opens: nothing goes upstream, so
stale documents are served at once and missing ones fail fast (but for the
probe). Every
``probe_interval`` seconds one request is let through as a probe (sooner when
a request nothing can be served without comes: ``admit(urgent=True)``); its
success closes the breaker, its failure keeps it open. At most one probe is in flight,
and every probe ends: an answer that is neither (a 429), a cancelled request or
an error in nopard itself ends it without a verdict (``end``), and the next
probe is due ``probe_interval`` later, so the upstream never stays "probing"
for good.
"""

from __future__ import annotations

from collections.abc import Callable


class Admission:
    """One request let through by the breaker; ``probe``: it is the probe of an open breaker."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


class Breaker:
    """Counts consecutive upstream failures and decides whether to try upstream."""

    def __init__(
        self, now: Callable[[], float], threshold: int = 3, probe_interval: float = 10.0
    ) -> None:
        self._now = now
        self.threshold = threshold
        self.probe_interval = probe_interval
        self.failures = 0
        self.last_success_at: float | None = None
        self.opened_at: float | None = None
        self._probe_in_flight = False
        self._probe: Admission | None = None  # the request that is the probe in flight
        self._next_probe = 0.0
        self.transitions: list[tuple[float, str]] = []  # for logs and tests

    @property
    def is_open(self) -> bool:
        """Whether the upstream counts as down."""
        return self.opened_at is not None

    @property
    def down(self) -> bool:
        """Whether to treat the upstream as down now: open, and no probe due.

        When a probe is due, the next request that needs the upstream goes and
        becomes the probe (allow() grants it to exactly one).
        """
        if self.opened_at is None:
            return False
        return self._probe_in_flight or self._now() < self._next_probe

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``probing``."""
        if self.opened_at is None:
            return "closed"
        return "probing" if self._probe_in_flight else "open"

    def allow(self) -> bool:
        """Whether a request may go upstream now; if open, this caller may become the probe."""
        return self.admit() is not None

    @property
    def probe_free(self) -> bool:
        """Whether no probe is in flight (an urgent request may then be the probe at once)."""
        return not self._probe_in_flight

    def admit(self, urgent: bool = False) -> Admission | None:
        """An admission for one request to go upstream now (None: not now).

        While open, the one caller admitted is the probe; it must be ended by
        ``succeeded``, ``failed`` or ``end(admission)``, whatever happens to the request.
        ``urgent`` (nothing to serve without it): the probe now if none is in
        flight, before the probe timer fires, so an upstream that came back is
        noticed by the next request that needs it.
        """
        if self.opened_at is None:
            return Admission(probe=False)
        if self._probe_in_flight or (self._now() < self._next_probe and not urgent):
            return None
        self._probe_in_flight = True
        self._probe = Admission(probe=True)
        return self._probe

    def end(self, admission: Admission | None) -> None:
        """The request ``admission`` let through is over; a probe still in flight ends without a verdict.

        Called after every request (answered or not); a no-op when
        ``succeeded`` or ``failed`` already ended the probe, or for a request
        that was not the probe.
        """
        if admission is None or admission is not self._probe or not self._probe_in_flight:
            return
        self._probe_in_flight = False
        self._probe = None
        if self.opened_at is not None:
            self._next_probe = self._now() + self.probe_interval

    def trusted(self, window: float) -> bool:
        """Whether the upstream answered within ``window`` seconds, with no failure since.

        Only then is a client kept waiting on it; otherwise it may be just going dark.
        """
        recent = self.last_success_at is not None and self._now() - self.last_success_at < window
        return recent and self.failures == 0

    def succeeded(self) -> None:
        """An upstream request got an answer that was not a failure."""
        self.failures = 0
        self.last_success_at = self._now()
        self._probe_in_flight, self._probe = False, None
        if self.opened_at is not None:
            self.opened_at = None
            self.transitions.append((self._now(), "closed"))

    def failed(self) -> None:
        """An upstream request timed out, was refused or got a 5xx."""
        self.failures += 1
        self._probe_in_flight, self._probe = False, None
        now = self._now()
        if self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = now
            self.transitions.append((now, "open"))
        if self.opened_at is not None:
            self._next_probe = now + self.probe_interval
