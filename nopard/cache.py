"""Prepared responses: a document's bytes encoded once, then served many times.

A PreparedDocument holds the full and abbreviated forms, each as identity and
gzip bytes with an ETag, so a read never re-encodes JSON or re-compresses.
PreparedCache keeps them in memory, bounded by total bytes (LRU).
"""

from __future__ import annotations

import gzip
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from nopard import packument


@dataclass(frozen=True)
class PreparedBody:
    """One form of a document: JSON bytes, their gzip, and a weak ETag."""

    identity: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, value: Any) -> "PreparedBody":
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
    """A document ready to serve in every form clients ask for."""

    full: PreparedBody
    abbreviated: PreparedBody
    last_modified: str

    @property
    def size(self) -> int:
        """Bytes held."""
        return self.full.size + self.abbreviated.size


def prepare(document: dict[str, Any], base_url: str) -> PreparedDocument:
    """Prepare ``document`` for clients reaching this registry at ``base_url``."""
    served = packument.for_clients(document, base_url)
    return PreparedDocument(
        full=PreparedBody.of(served),
        abbreviated=PreparedBody.of(packument.abbreviate(served)),
        last_modified=document.get("time", {}).get("modified", ""),
    )


class PreparedCache:
    """Prepared documents by (package name, base URL), bounded by a byte budget."""

    def __init__(self, max_bytes: Callable[[], int]) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], PreparedDocument] = OrderedDict()
        self._generations: dict[str, int] = {}
        self.bytes_held = 0

    def generation(self, name: str) -> int:
        """A number that changes whenever ``name`` is invalidated.

        Read it before loading a document from storage and pass it to put(),
        so a document loaded before a publish is never cached after it.
        """
        return self._generations.get(name, 0)

    def get(self, name: str, base_url: str) -> PreparedDocument | None:
        """The prepared document, marking it recently used; None on a miss."""
        entry = self._entries.get((name, base_url))
        if entry is not None:
            self._entries.move_to_end((name, base_url))
        return entry

    def put(self, name: str, base_url: str, prepared: PreparedDocument, generation: int) -> None:
        """Keep ``prepared`` (loaded at ``generation``), evicting LRU entries to stay in budget."""
        if generation != self.generation(name):
            return
        self._remove((name, base_url))
        if prepared.size > self._max_bytes():
            return
        self._entries[(name, base_url)] = prepared
        self.bytes_held += prepared.size
        while self.bytes_held > self._max_bytes():
            self._remove(next(iter(self._entries)))

    def invalidate(self, name: str) -> None:
        """Forget every prepared form of package ``name``."""
        self._generations[name] = self.generation(name) + 1
        for key in [key for key in self._entries if key[0] == name]:
            self._remove(key)

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_held -= entry.size
