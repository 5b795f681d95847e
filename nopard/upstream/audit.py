"""npm's audit requests, forwarded to the default upstream (nothing is mirrored for them)."""

from __future__ import annotations

from collections.abc import Callable

from nopard.domain.errors import NotFound
from nopard.upstream.client import Upstream


class AuditForwarder:
    """Sends audit requests to the forwarder; fails fast when it is down, like any upstream call."""

    def __init__(self, default: Callable[[], Upstream | None]) -> None:
        self._default = default  # a callable: the forwarder is rebuilt when its URL changes at runtime

    async def forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """(status, body, content type) of the upstream's answer to a POST of ``body`` to ``path``."""
        upstream = self._default()
        if upstream is None:
            raise NotFound("no upstream is configured for audits")
        return await upstream.forward("POST", path, body, headers)
