"""Which upstream serves a package name: a scope's own, the forwarder, or none (private)."""

from __future__ import annotations

from collections.abc import Callable

from nopard.settings.config import LiveSettings
from nopard.upstream.client import Upstream


class Upstreams:
    """Which upstream serves a name: a scope's own, the forwarder, or none (private)."""

    def __init__(self, settings: LiveSettings, make: Callable[[str, str | None], Upstream]) -> None:
        current = settings.current
        self._settings = settings
        self._make = make
        self._default: Upstream | None = None
        self._default_url = ""
        self.scoped = {
            scope: make(url, current.scope_tokens.get(scope))
            for scope, url in current.scope_upstreams.items()
        }

    @property
    def default(self) -> Upstream | None:
        """The forwarder (NOPARD_FORWARDER_URL), or None; rebuilt when the URL changes at runtime."""
        url = self._settings.current.forwarder_url
        if url != self._default_url:
            # A new Upstream: the old one's breaker and counters describe another registry.
            self._default = self._make(url, None) if url else None
            self._default_url = url
        return self._default

    def for_name(self, name: str) -> Upstream | None:
        """The upstream of ``name``, or None when it must never leave nopard."""
        scope = name.split("/", 1)[0] if name.startswith("@") else None
        if scope in self._settings.current.private_scopes:
            return None
        return self.scoped.get(scope, self.default) if scope else self.default

    def all(self) -> list[Upstream]:
        """Every upstream configured."""
        return [u for u in [self.default, *self.scoped.values()] if u is not None]
