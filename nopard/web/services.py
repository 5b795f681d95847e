"""What the routes need of the layers below, as Protocols.

Each route group names the few methods it calls; nopard.service hands it the
object that has them (the mirror, the operator status, the audits), so a change below the web
layer shows up here as a type error, not as a route failing at runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nopard.domain.prepared import PreparedDocument
from nopard.storage import Blob

RunInThread = Callable[..., Awaitable[Any]]


class PackageSource(Protocol):
    """Package documents and tarballs as clients are served them (local or mirrored)."""

    async def packument(self, name: str, base_url: str) -> tuple[PreparedDocument, str]:
        """The prepared document of ``name`` and how it was served (LOCAL, HIT, MISS, STALE...)."""

    async def served_document(self, name: str, base_url: str) -> dict[str, Any]:
        """The served document of ``name`` as a dict."""

    async def manifest(self, name: str, base_url: str, version_or_tag: str) -> dict[str, Any]:
        """One version's manifest as served (a withheld one refused with why)."""

    async def tarball(self, name: str, filename: str) -> tuple[Blob, str]:
        """The tarball ``filename`` of ``name``, opened, and how it was served."""

    async def stored_tarball(self, name: str, filename: str) -> tuple[str, str]:
        """The storage key of the tarball ``filename`` of ``name`` (fetched first if mirrored and
        missing), and how it was served."""

    def missing_answer(self, name: str, tarball: str | None = None) -> str | None:
        """What a name that does not exist would be told now; None: plain "not found"."""


class MirrorStatus(Protocol):
    """Upstream health and cache use, for operators."""

    def status(self) -> dict[str, Any]:
        """Cache, Redis and upstream states."""


class AuditAnswers(Protocol):
    """npm's audit requests, answered by the upstream and/or the stored advisories (nopard.advisories.audit)."""

    async def answer(self, path: str, body: bytes, headers: dict[str, str], base_url: str,
                     payload: Callable[[], Awaitable[Any]]) -> tuple[int, bytes, str]:
        """(status, body, content type) of the answer; ``payload()`` decodes the body when needed."""

    async def advisory(self, osv_id: str) -> list[Any]:
        """The stored advisories of one OSV record (one per package), for the ``url`` audits give."""


class UpstreamSearch(Protocol):
    """The forwarder's own search, for npm search (nopard.mirror.search)."""

    def forwards(self, name: str) -> bool:
        """Whether ``name`` is served from the forwarder."""

    async def search(self, text: str, offset: int, size: int) -> Any:
        """Its decoded answer for ``text``, or None when it is down, slow or has none to give."""


class ProvenanceSource(Protocol):
    """Signing keys and attestations (nopard.mirror.provenance)."""

    async def keys(self) -> dict[str, Any]:
        """``{keys: [...]}``: nopard's public keys and the upstreams'."""

    async def attestations(self, name: str, version: str) -> bytes:
        """The stored (else fetched) attestations of ``name@version``; NotFound when there are none."""


TarballSizes = Callable[[str, dict[str, Any]], Awaitable[dict[str, int | None]]]
"""(name, document) -> version -> stored tarball size, None when only upstream."""


class MirroredPages(PackageSource, Protocol):
    """What the browser pages show of a package beyond its document."""

    async def mirrored_meta(self, name: str) -> Any:
        """When the upstream copy was last confirmed (``fetched_at``), or None."""

    async def refresh(self, name: str) -> bool:
        """Revalidate ``name`` with the upstream now; True if it changed."""


class MirrorServices(MirroredPages, Protocol):
    """Everything the web layer asks of the mirror (what nopard.service passes in)."""


class Sessions(Protocol):
    """Records with a lifetime, shared between instances when Redis is configured."""

    async def admit(self, pool: str, key: str, value: dict[str, Any], ttl: float, owner: str,
                    per_owner: int, total: int) -> bool:
        """Store a new pending ``value`` for ``ttl`` seconds, evicting the oldest pending records of
        ``owner`` past ``per_owner`` and of ``pool`` past ``total``; True when stored."""

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds; False when the store is full."""

    async def get(self, key: str) -> dict[str, Any] | None:
        """The live record, or None."""

    async def take(self, key: str, pool: str | None = None) -> dict[str, Any] | None:
        """The live record, removed (from ``pool``'s counts too)."""

    async def ttl(self, key: str) -> float:
        """Seconds ``key`` has left."""


class ChangeListener(Protocol):
    """Told when a write changed a package's document (the search index)."""

    def changed(self, name: str) -> None:
        """``name``'s document changed."""
