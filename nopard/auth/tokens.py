"""Access tokens: random and URL-safe, stored only as their SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import asdict, dataclass

import orjson

from nopard.storage import Storage

TOKEN_PREFIX = "npd_"


@dataclass(frozen=True)
class TokenRecord:
    """What is stored of a token: never the token itself."""

    key: str
    user: str
    created: str
    readonly: bool = False


def token_hash(token: str) -> str:
    """The hex SHA-256 a token is stored under (tokens carry 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    """Whether ``token`` has the shape of a nopard token (cheap check before a lookup)."""
    return (
        token.startswith(TOKEN_PREFIX)
        and 20 < len(token) < 200
        and all(c.isalnum() or c in "-_" for c in token)
    )


class TokenStore:
    """Tokens in storage under ``tokens/<sha256>.json``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def _key(self, token: str) -> str:
        return f"tokens/{token_hash(token)}.json"

    async def create(self, user: str, created: str, readonly: bool = False) -> str:
        """A new token for ``user``; the caller hands it out, nopard keeps only its hash."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(key=str(uuid.uuid4()), user=user, created=created, readonly=readonly)
        await self._storage.write(self._key(token), orjson.dumps(asdict(record)))
        return token

    async def lookup(self, token: str) -> TokenRecord | None:
        """The record of a live token, or None."""
        if not looks_like_token(token):
            return None
        raw = await self._storage.read(self._key(token))
        return TokenRecord(**orjson.loads(raw)) if raw is not None else None

    async def revoke(self, token: str) -> bool:
        """Revoke ``token``; False if it was not a live token."""
        if not looks_like_token(token):
            return False
        return await self._storage.delete(self._key(token))

    async def records(self, user: str | None = None) -> list[TokenRecord]:
        """The records of every live token (of ``user``, when given), oldest first."""
        found = [record for _key, record in await self._stored() if user is None or record.user == user]
        return sorted(found, key=lambda record: (record.created, record.key))

    async def revoke_key(self, key: str) -> TokenRecord | None:
        """Revoke the token whose record has ``key`` (not the token: its public id); None if none has."""
        for storage_key, record in await self._stored():
            if record.key == key:
                await self._storage.delete(storage_key)
                return record
        return None

    async def revoke_user(self, user: str) -> int:
        """Revoke every token of ``user``; how many there were."""
        revoked = 0
        for storage_key, record in await self._stored():
            if record.user == user and await self._storage.delete(storage_key):
                revoked += 1
        return revoked

    async def _stored(self) -> list[tuple[str, TokenRecord]]:
        """(storage key, record) of every readable token record; a damaged file is skipped."""
        stored = []
        for storage_key in await self._storage.list("tokens/"):
            raw = await self._storage.read(storage_key)
            try:
                stored.append((storage_key, TokenRecord(**orjson.loads(raw or b""))))
            except (orjson.JSONDecodeError, TypeError):
                continue
        return stored
