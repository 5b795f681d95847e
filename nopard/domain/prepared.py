"""Prepared responses: a document's bytes encoded once, then served many times.

A PreparedDocument holds the full and abbreviated forms, each as identity and
gzip bytes with an ETag, so a read never re-encodes JSON or re-compresses.
PreparedCache keeps them in memory, bounded by total bytes (LRU).
"""

from __future__ import annotations

import gzip
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from nopard.domain import packument
from nopard.domain.firewall import QUARANTINED, Hidden

UNKNOWN_VERSION = Hidden(QUARANTINED, "quarantined: a version nopard has no publish time for yet counts as new")


@dataclass(frozen=True)
class PreparedBody:
    """One form of a document: JSON bytes, their gzip, and a weak ETag."""

    identity: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, value: Any) -> PreparedBody:
        """Encode ``value`` once as JSON and gzip."""
        body = orjson.dumps(value)
        # Weak: the identity and gzip bytes differ but mean the same document.
        etag = 'W/"' + hashlib.sha256(body).hexdigest()[:40] + '"'
        return cls(body, gzip.compress(body, compresslevel=6, mtime=0), etag)

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self.identity) + len(self.gzipped)


@dataclass(frozen=True)
class PreparedDocument:
    """A document ready to serve in every form clients ask for.

    ``withheld``: the versions the firewall keeps out of it (quarantined or
    blocked), with why; ``files``: their tarball files, to the version;
    ``expires``: when the next one leaves quarantine, so it is prepared again then.
    """

    full: PreparedBody
    abbreviated: PreparedBody
    last_modified: str
    withheld: Mapping[str, Hidden] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    expires: float | None = None
    strict: bool = False  # under quarantine: ``files`` names every version's, and a file it lacks is young

    def expired(self, now: float) -> bool:
        """Whether a withheld version has left quarantine since it was prepared."""
        return self.expires is not None and now >= self.expires

    def withheld_file(self, filename: str) -> Hidden | None:
        """Why the tarball ``filename`` is withheld, if it is.

        Under quarantine, a file of no version this document knows has no
        time known here: young (a version published since it was read).
        """
        version = self.files.get(filename)
        if version is None:
            return UNKNOWN_VERSION if self.strict else None
        return self.withheld.get(version)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self.full.size + self.abbreviated.size


def prepare(document: dict[str, Any], base_url: str, withheld: Mapping[str, Hidden] | None = None,
            files: Mapping[str, str] | None = None, expires: float | None = None,
            strict: bool = False) -> PreparedDocument:
    """Prepare ``document`` (as served: the withheld versions already out) for ``base_url``."""
    served = packument.for_clients(document, base_url)
    return PreparedDocument(
        full=PreparedBody.of(served),
        abbreviated=PreparedBody.of(packument.abbreviate(served)),
        last_modified=document.get("time", {}).get("modified", ""),
        withheld=withheld or {}, files=files or {}, expires=expires, strict=strict,
    )


@dataclass
class CachedDocument:
    """A prepared document and where it came from.

    ``origin`` is ``local``, ``upstream`` or ``merged``; for mirrored documents
    ``fetched_at`` and ``etag`` say when the upstream last confirmed them.
    """

    prepared: PreparedDocument
    origin: str = "local"
    fetched_at: float | None = None
    etag: str | None = None
    stamp: str | None = None  # the package's stamp when loaded (nopard.cluster.coordination)
    loaded_at: float | None = None  # when it was read from storage and prepared

    @property
    def size(self) -> int:
        """Bytes held."""
        return self.prepared.size


class LoadTicket:
    """Taken before loading a document from storage; void if the name changes meanwhile."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.valid = True


class PreparedCache:
    """Prepared documents by (package name, base URL), bounded by a byte budget (LRU)."""

    def __init__(self, max_bytes: Callable[[], int]) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], CachedDocument] = OrderedDict()
        self._keys_by_name: dict[str, set[tuple[str, str]]] = {}
        self._loads: dict[str, set[LoadTicket]] = {}
        self._changes: dict[str, int] = {}
        self._cleared = 0
        self.bytes_held = 0

    def changes(self, name: str) -> tuple[int, int]:
        """Moves with every invalidate(name) and clear(): a load started before one is not joined after it."""
        return self._cleared, self._changes.get(name, 0)

    def stats(self) -> dict[str, int]:
        """Entries and bytes held, and the budget."""
        return {"entries": len(self._entries), "bytes": self.bytes_held, "limit": self._max_bytes()}

    def get(self, name: str, base_url: str) -> CachedDocument | None:
        """The cached document, marking it recently used; None on a miss."""
        entry = self._entries.get((name, base_url))
        if entry is not None:
            self._entries.move_to_end((name, base_url))
        return entry

    @contextmanager
    def loading(self, name: str) -> Iterator[LoadTicket]:
        """Hold a ticket while loading ``name`` from storage; pass it to put().

        invalidate() voids the tickets of loads in flight, so a document read
        before a change is never cached after it.
        """
        ticket = LoadTicket(name)
        self._loads.setdefault(name, set()).add(ticket)
        try:
            yield ticket
        finally:
            tickets = self._loads[name]
            tickets.discard(ticket)
            if not tickets:
                del self._loads[name]

    def put(self, name: str, base_url: str, entry: CachedDocument, ticket: LoadTicket) -> None:
        """Keep ``entry`` unless its ticket was voided; evict LRU entries to stay in budget."""
        if not ticket.valid:
            return
        self._remove((name, base_url))
        if entry.size > self._max_bytes():
            return
        self._entries[(name, base_url)] = entry
        self._keys_by_name.setdefault(name, set()).add((name, base_url))
        self.bytes_held += entry.size
        self.trim()

    def trim(self) -> None:
        """Evict LRU entries until within the budget, which what else shares it may have shrunk."""
        while self.bytes_held > self._max_bytes() and self._entries:
            self._remove(next(iter(self._entries)))

    def entries_of(self, name: str) -> list[CachedDocument]:
        """The prepared forms of ``name`` held (one per base URL), not marked used."""
        return [self._entries[key] for key in self._keys_by_name.get(name, ())]

    def invalidate(self, name: str, keep: LoadTicket | None = None) -> None:
        """Forget every prepared form of package ``name`` and void loads in flight.

        ``keep``: the ticket of the load that made the change, which stays valid.
        """
        self._changes[name] = self._changes.get(name, 0) + 1
        for ticket in self._loads.get(name, ()):
            if ticket is not keep:
                ticket.valid = False
        for key in list(self._keys_by_name.get(name, ())):
            self._remove(key)

    def clear(self) -> None:
        """Forget every document and void every load in flight (Redis came back: trust nothing held)."""
        for tickets in self._loads.values():
            for ticket in tickets:
                ticket.valid = False
        self._cleared += 1
        self._entries.clear()
        self._keys_by_name.clear()
        self.bytes_held = 0

    def touch(self, name: str, fetched_at: float, etag: str | None) -> None:
        """Record that the upstream confirmed ``name``'s document at ``fetched_at``."""
        for key in self._keys_by_name.get(name, ()):
            entry = self._entries[key]
            entry.fetched_at, entry.etag = fetched_at, etag

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes_held -= entry.size
        keys = self._keys_by_name[key[0]]
        keys.discard(key)
        if not keys:
            del self._keys_by_name[key[0]]
