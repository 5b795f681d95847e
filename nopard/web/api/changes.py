"""``GET /-/nopard/changes?since=SEQ&limit=N``: this registry's changes feed, in CouchDB's ``_changes`` format.

Another nopard follows it (NOPARD_CHANGES_URL) instead of polling every document; each
asker sees only the packages the access rules let it read (the operator token: all).
"""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.catalog.changes import ChangeLog
from nopard.domain import changes
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import json_response


class ChangesRoutes:
    """The changes feed."""

    def __init__(self, gate: Gate, log: ChangeLog) -> None:
        self._gate = gate
        self._log = log

    def mount(self, app: Klein) -> None:
        """Add this route to ``app``."""
        add_route(app, "changes", "/-/nopard/changes", ["GET"], self.changes)

    async def changes(self, request: IRequest) -> bytes:
        """The changes after ``since`` (0: the first kept; ``now``: none, only where it is), at most ``limit``."""
        readable = await self._gate.names_readable(request)
        since = changes.parse_since(_argument(request, b"since"))
        limit = changes.parse_limit(_argument(request, b"limit"))
        page = await self._log.page(since, limit, readable)
        request.setHeader(b"Cache-Control", b"private, no-cache")
        return json_response(request, 200, page)


def _argument(request: IRequest, name: bytes) -> str | None:
    values = request.args.get(name) if request.args else None
    return values[0].decode("utf-8", "replace") if values else None
