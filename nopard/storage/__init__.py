"""The storage interface every backend implements, and the key rules they share.

A key is a ``/``-separated path of safe segments, made by ``nopard.storage.keys``.
Backends check keys again (defence in depth): a key can never address
anything outside the store, nor a backend's temporary files, whose names
start with a dot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IConsumer

_SEGMENT = re.compile(r"[A-Za-z0-9@~!'()*+_-][A-Za-z0-9@.~!'()*+_-]*")
MAX_KEY_LENGTH = 1024
# Beside the keys, where no key can reach (a dot name): what fsck set aside, on every backend.
QUARANTINE = ".quarantine"
# Names of the temporary files nopard's writers make (atomic writes, downloads, the htpasswd file).
TEMPORARY_PREFIXES = (".tmp-", ".fetch-", ".htpasswd-")


class InvalidKey(ValueError):
    """A key that no name could have produced."""


def check_key(key: str) -> str:
    """Return ``key`` if every segment is safe, else raise InvalidKey."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"invalid storage key: {key!r}")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"invalid storage key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key followed by ``/``."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise InvalidKey(f"a listing prefix ends with '/': {prefix!r}")
    check_key(prefix[:-1])
    return prefix


class Blob(Protocol):
    """A stored object opened for streaming."""

    size: int

    async def send_to(self, consumer: IConsumer) -> None:
        """Write the whole object to ``consumer``, with flow control; close afterwards."""

    def close(self) -> None:
        """Release the object without sending it."""


class Storage(Protocol):
    """Documents and blobs by key. Every write is atomic: readers see all or nothing."""

    async def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    async def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there atomically."""

    async def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` only if nothing is there; False if something was."""

    async def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and an opaque version string, or None when there is none.

        The version is what ``replace`` compares against. It identifies the
        content: an object that changes and then goes back to the same bytes
        may show the same version again, which is harmless for read-merge-write
        (a merge made from those bytes is still a merge of what is stored).
        """

    async def replace(self, key: str, data: bytes, version: str | None) -> bool:
        """Store ``data`` at ``key`` only if the stored object still has ``version``.

        Compare-and-swap, atomically: with ``version`` None, only if there is
        no object. False, and nothing stored, when the object changed since
        ``read_versioned`` gave ``version`` (or exists when ``version`` is
        None, or is gone when it is not); the caller reads again, merges, and
        retries. Readers see all or nothing, as with ``write``. Several
        processes sharing one store lose no update as long as every writer of
        the key goes through ``replace``: a plain ``write``, ``create`` or
        ``delete`` is not ordered against a ``replace`` in flight on every
        backend.
        """

    async def create_from_file(self, key: str, path: str) -> bool:
        """Store the content of local file ``path`` at ``key`` only if nothing is there.

        For big objects (tarballs streamed from the upstream): the backend reads
        the file in chunks or links it, never holding it whole. The caller
        removes ``path`` afterwards.
        """

    async def delete(self, key: str) -> bool:
        """Remove the object; False if there was none."""

    async def delete_versioned(self, key: str, version: str) -> bool:
        """Remove the object only if it still has ``version`` (from ``read_versioned``).

        Compare-and-delete, atomically, as ``replace`` is compare-and-swap:
        False, and nothing removed, when the object changed since (or is gone).
        """

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    async def open(self, key: str) -> Blob | None:
        """Open the object for streaming, or None when there is none."""

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (``""`` or ending in ``/``), sorted."""

    async def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size in bytes (one listing, not one request per key)."""

    async def usage(self) -> tuple[int, int]:
        """(bytes, objects) the store holds, the backend's own files included: for metrics and status."""


@dataclass(frozen=True)
class Leftover:
    """Something a backend holds beside its keys: a temporary file, or an object fsck set aside.

    ``kind`` is "temporary" or "quarantined"; ``path`` is relative to the store (the
    directory, or the bucket's prefix), as fsck prints it; ``modified`` is in epoch seconds.
    """

    kind: str
    path: str
    size: int
    modified: float


class Maintained(Storage, Protocol):
    """What ``nopard-admin fsck`` and ``gc`` need beyond Storage: ages, and what lies beside the keys."""

    async def stats(self, prefix: str) -> dict[str, tuple[int, float]]:
        """Every key under ``prefix`` with (size, last modified in epoch seconds), from one listing."""

    async def leftovers(self) -> list[Leftover]:
        """Temporary files left by writes and everything in the quarantine, sorted by path."""

    async def set_aside(self, key: str) -> str | None:
        """Move the object to ``.quarantine/<key>`` (a suffix keeps earlier copies); its path, None if gone."""

    async def remove_leftover(self, path: str) -> bool:
        """Remove a leftover ``path`` named (never a key); False if it was gone."""


def leftover_kind(path: str) -> str | None:
    """"quarantined" or "temporary" for a path beside the keys, else None (a key, or nothing of nopard's)."""
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    if segments[0] == QUARANTINE and len(segments) > 1:
        return "quarantined"
    return "temporary" if segments[-1].startswith(TEMPORARY_PREFIXES) else None
