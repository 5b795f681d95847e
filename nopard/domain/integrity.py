"""Checking bytes against the checksums a manifest declares (dist.integrity, dist.shasum).

Works on whole byte strings (publish) and on streams (Digests, for tarballs
fetched from the upstream chunk by chunk).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from nopard.domain.errors import IntegrityMismatch, InvalidInput

KNOWN_ALGORITHMS = ("sha512", "sha384", "sha256", "sha1")


class Digests:
    """Hashes a stream with every algorithm a dist block needs."""

    def __init__(self, dist: dict[str, Any]) -> None:
        wanted = {"sha1"} if dist.get("shasum") else set()
        for entry in str(dist.get("integrity") or "").split():
            algorithm = entry.partition("-")[0]
            if algorithm in KNOWN_ALGORITHMS:
                wanted.add(algorithm)
        self._hashes = {algorithm: hashlib.new(algorithm) for algorithm in wanted}
        self.size = 0

    def update(self, data: bytes) -> None:
        """Feed the next chunk."""
        self.size += len(data)
        for digest in self._hashes.values():
            digest.update(data)

    def digest(self, algorithm: str) -> bytes:
        """The digest of everything fed so far."""
        return self._hashes[algorithm].digest()

    def matches(self, dist: dict[str, Any]) -> bool:
        """Whether the stream matches dist.integrity, else dist.shasum (at least one must exist)."""
        integrity = dist.get("integrity")
        if isinstance(integrity, str) and integrity.strip():
            return _sri_matches(integrity, self.digest)
        shasum = dist.get("shasum")
        return bool(shasum) and self.digest("sha1").hex() == str(shasum).lower()


def _sri_matches(integrity: str, digest_of: Any) -> bool:
    checked = False
    for entry in integrity.split():
        algorithm, _, expected = entry.partition("-")
        if algorithm not in KNOWN_ALGORITHMS:
            continue
        if base64.b64encode(digest_of(algorithm)).decode() != expected.split("?", 1)[0]:
            return False
        checked = True
    return checked


def check_integrity(data: bytes, dist: dict[str, Any], what: str) -> None:
    """Raise IntegrityMismatch unless ``data`` matches dist.integrity and dist.shasum."""
    shasum = dist.get("shasum")
    if shasum is not None and hashlib.sha1(data).hexdigest() != str(shasum).lower():
        raise IntegrityMismatch(f"{what}: sha1 does not match dist.shasum")
    integrity = dist.get("integrity")
    if integrity is not None:
        if not isinstance(integrity, str):
            raise InvalidInput(f"{what}: dist.integrity must be a string")
        if not integrity_matches(data, integrity):
            raise IntegrityMismatch(f"{what}: sha512 does not match dist.integrity")


def integrity_matches(data: bytes, integrity: str) -> bool:
    """Whether ``data`` matches an SRI string; every known hash in it must agree.

    An SRI string with no hash algorithm nopard knows does not match.
    """
    return _sri_matches(integrity, lambda algorithm: hashlib.new(algorithm, data).digest())


def integrity_of(data: bytes) -> str:
    """The sha512 SRI string of ``data``, as npm writes it."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
