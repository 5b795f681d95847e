"""nopard's own signing keys: made on first use, kept in the store, rotated by nopard-admin.

The keyring is one stored object (``keys.SIGNING_KEYS``): every key nopard
signed with, the newest last, each with its private key (never served), its
creation time and, once rotated out, ``expires`` (the rotation time). Several
instances sharing a store use the same key: the first one creates the ring
with create-if-absent and the others read the winner's. A publish reads the
ring each time, so a rotation by nopard-admin (or another instance) applies to
the next publish everywhere, and no version is signed with an expired key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from nopard.domain import signatures
from nopard.domain.errors import Conflict
from nopard.domain.times import iso_time
from nopard.storage import Storage, keys

# Compare-and-swap rounds of a rotation before it gives up.
ROTATE_ATTEMPTS = 20


@dataclass(frozen=True)
class SigningKey:
    """One key of the ring: its keyid, private key (PEM), DER public key, creation and expiry times."""

    keyid: str
    private: str
    public: bytes
    created: str
    expires: str | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SigningKey:
        """A key from its stored record (the public part is derived again, never trusted from the store)."""
        private = str(record["private"])
        public = signatures.public_der(private)
        return cls(signatures.keyid_of(public), private, public, str(record.get("created") or ""),
                   record.get("expires"))

    def record(self) -> dict[str, Any]:
        """What is stored of the key."""
        return {"keyid": self.keyid, "private": self.private, "created": self.created, "expires": self.expires}

    def public_entry(self) -> dict[str, Any]:
        """The key as ``/-/npm/v1/keys`` lists it (no private part)."""
        return signatures.public_entry(self.public, self.expires)


def _new_key(now: float) -> SigningKey:
    private = signatures.new_private_key()
    public = signatures.public_der(private)
    return SigningKey(signatures.keyid_of(public), private, public, iso_time(now), None)


def _encode(ring: list[SigningKey]) -> bytes:
    return orjson.dumps({"keys": [key.record() for key in ring]})


def _decode(raw: bytes) -> list[SigningKey]:
    return [SigningKey.from_record(record) for record in orjson.loads(raw)["keys"]]


class SigningKeys:
    """The keyring in ``storage``; ``now`` gives the time (seconds) keys are created and expired at."""

    def __init__(self, storage: Storage, now: Any) -> None:
        self._storage = storage
        self._now = now

    async def ring(self) -> list[SigningKey]:
        """Every key, oldest first; the ring is made (one new key) when the store has none."""
        raw = await self._storage.read(keys.SIGNING_KEYS)
        if raw is not None:
            return _decode(raw)
        fresh = [_new_key(self._now())]
        if await self._storage.create(keys.SIGNING_KEYS, _encode(fresh)):
            return fresh
        # Another instance made it first: everyone signs with the winner's key.
        raw = await self._storage.read(keys.SIGNING_KEYS)
        assert raw is not None
        return _decode(raw)

    async def current(self) -> SigningKey:
        """The key new versions are signed with."""
        return (await self.ring())[-1]

    async def public_keys(self) -> list[dict[str, Any]]:
        """Every key as ``/-/npm/v1/keys`` lists it, the rotated ones with their ``expires``."""
        return [key.public_entry() for key in await self.ring()]

    async def rotate(self) -> tuple[SigningKey, SigningKey]:
        """Expire the current key now and add a new one; (the old key, the new key).

        Signatures made before stay valid: npm accepts a key for versions
        published before its ``expires``.
        """
        await self.ring()  # made if missing, so there is something to rotate
        for _attempt in range(ROTATE_ATTEMPTS):
            stored = await self._storage.read_versioned(keys.SIGNING_KEYS)
            assert stored is not None
            ring = _decode(stored[0])
            now = self._now()
            old = ring[-1]
            expired = SigningKey(old.keyid, old.private, old.public, old.created, iso_time(now))
            new = _new_key(now)
            if await self._storage.replace(keys.SIGNING_KEYS, _encode([*ring[:-1], expired, new]), stored[1]):
                return expired, new
        raise Conflict("the signing keys kept changing during the rotation; try again")

    async def sign_versions(self, document: dict[str, Any], versions: list[str]) -> dict[str, Any]:
        """``document`` with ``dist.signatures`` by the current key on each of ``versions``."""
        key = await self.current()
        name = document["name"]
        for version in versions:
            manifest = document["versions"][version]
            dist = manifest.get("dist")
            if isinstance(dist, dict):
                manifest["dist"] = signatures.signed_dist(name, version, dist, key.keyid, key.private)
        return document
