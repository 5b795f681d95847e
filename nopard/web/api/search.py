"""Search (npm search) over the packages the caller may read, and npm's audits (upstream and/or stored advisories)."""

from __future__ import annotations

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from nopard.catalog import merged
from nopard.catalog import search as searching
from nopard.catalog.search import SearchIndex
from nopard.domain.errors import InvalidInput, NotFound
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import Requests, header, json_response
from nopard.web.services import AuditAnswers, UpstreamSearch

AUDIT_PATHS = ("/-/npm/v1/security/advisories/bulk", "/-/npm/v1/security/audits/quick", "/-/npm/v1/security/audits")


class SearchRoutes:
    """``/-/v1/search``, the audit endpoints, and the stored advisories their answers link to."""

    def __init__(self, requests: Requests, gate: Gate, index: SearchIndex, audits: AuditAnswers,
                 clock: IReactorTime, upstream: UpstreamSearch | None = None) -> None:
        self._requests = requests
        self._upstream = upstream
        self._gate = gate
        self._index = index
        self._audits = audits
        self._clock = clock

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "search", "/-/v1/search", ["GET"], self.search_packages)
        for path in AUDIT_PATHS:
            add_route(app, "search", path, ["POST"], self.audit)
        add_route(app, "search", "/-/npm/v1/security/advisories/<osv_id>", ["GET"], self.advisory)

    async def search_packages(self, request: IRequest) -> bytes:
        """npm search: local and mirrored packages the caller may read, then the upstream's own results."""
        identity = await self._gate.reader(request)
        if not (request.args.get(b"text") or [b""])[0].strip():
            raise InvalidInput("a search needs words to look for: /-/v1/search?text=<words>")
        query = searching.parse_query(request.args)
        visible = self._gate.may_read(identity.user)
        listing = await self._index.listing()
        found = searching.matches([entry for entry, _, _ in listing], query, visible)
        local = {entry.name for entry, origin, _ in listing if origin == "local"}
        answer = None
        upstream = self._upstream
        if upstream is not None and merged.may_ask_upstream(query, local, upstream.forwards):
            offset, size = merged.upstream_window(query, len(found))
            answer = merged.read_upstream_answer(await upstream.search(query.text, offset, size), offset)

        def keep(name: str) -> bool:
            # Only what nopard would serve this reader from the upstream: never a hidden,
            # local, private or unproxied name (nor one this page lists already).
            return name not in local and visible(name) and upstream is not None and upstream.forwards(name)

        result = merged.merged_answer(found, answer, query, keep, self._requests.base_url(request),
                                      self._clock.seconds())
        request.setHeader(b"Cache-Control", b"private, no-cache")
        return json_response(request, 200, result)

    async def audit(self, request: IRequest) -> bytes:
        """Audits as NOPARD_AUDIT says: the upstream (with it down, the stored advisories, else a fast
        failure: npm install goes on), the stored advisories, or both."""
        await self._gate.reader(request)
        request.content.seek(0)
        body = request.content.read()
        headers = {"Content-Type": header(request, "content-type") or "application/json"}
        encoding = header(request, "content-encoding")
        if encoding:
            headers["Content-Encoding"] = encoding
        status, content, content_type = await self._audits.answer(
            request.path.decode("ascii"), body, headers, self._requests.base_url(request),
            lambda: self._requests.json_body(request))
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % len(content))
        return content

    async def advisory(self, request: IRequest, osv_id: str) -> bytes:
        """One stored OSV record's advisories (the ``url`` of an audit entry whose record gives none)."""
        await self._gate.reader(request)
        found = await self._audits.advisory(osv_id)
        if not found:
            raise NotFound(f"no advisory {osv_id} is stored here")
        return json_response(request, 200, {"id": osv_id, "advisories": [a.to_json() for a in found]})
