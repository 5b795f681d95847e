"""npm's signature and provenance endpoints: the signing keys, and a version's attestations."""

from __future__ import annotations

from urllib.parse import unquote

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.domain.errors import InvalidInput
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import json_response
from nopard.web.services import ProvenanceSource

KEYS = "/-/npm/v1/keys"
ATTESTATIONS = "/-/npm/v1/attestations/"


def parse_attestations_path(path: bytes) -> tuple[str, str]:
    """(name, version) of ``/-/npm/v1/attestations/<name>@<version>`` (``@scope%2fname@1.0.0`` as npm sends)."""
    try:
        spec = unquote(path.decode("ascii")[len(ATTESTATIONS):], errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("invalid attestations path") from None
    name, at, version = spec.rpartition("@")
    if not at or not name or not version:
        raise InvalidInput("an attestations path names <package>@<version>")
    return name, version


class ProvenanceRoutes:
    """``/-/npm/v1/keys`` (nopard's keys and the upstreams') and ``/-/npm/v1/attestations/<name>@<version>``."""

    def __init__(self, gate: Gate, provenance: ProvenanceSource) -> None:
        self._gate = gate
        self._provenance = provenance

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "provenance", KEYS, ["GET"], self.keys)
        add_route(app, "provenance", ATTESTATIONS, ["GET"], self.attestations, branch=True)

    async def keys(self, request: IRequest) -> bytes:
        """The public keys every signature served here verifies with (never a private one)."""
        await self._gate.reader(request)
        return json_response(request, 200, await self._provenance.keys())

    async def attestations(self, request: IRequest) -> bytes:
        """A mirrored version's attestations, as the upstream sent them (stored: served offline too)."""
        identity = await self._gate.reader(request)
        name, version = parse_attestations_path(request.path)
        missing = f"no attestations for {name}@{version}"
        self._gate.hide_unreadable(name, identity, missing)
        body = await self._provenance.attestations(name, version)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body
