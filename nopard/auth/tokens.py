"""Access tokens: random and URL-safe, stored only as their SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import asdict, dataclass

import orjson

from nopard.domain.tokens import TOKEN_PREFIX
from nopard.storage import Storage, keys

SHOWN_CHARS = 8  # how much of a token its record keeps, so `npm token list` can show it


@dataclass(frozen=True)
class TokenRecord:
    """What is stored of a token: never the token itself."""

    key: str
    user: str
    created: str
    readonly: bool = False
    shown: str = TOKEN_PREFIX  # the token's first SHOWN_CHARS characters (older records: the prefix)
    name: str | None = None
    updated: str | None = None  # when the record last changed (None: never since it was created)
    cidr_whitelist: list[str] | None = None  # the addresses it may be used from (None: any)

    def public(self, token: str | None = None) -> dict:
        """The token object of the npm tokens API (``token``: the whole token, on creation only)."""
        return {
            "token": token or self.shown,
            "key": self.key,
            "name": self.name,
            "cidr_whitelist": self.cidr_whitelist,
            "readonly": self.readonly,
            "created": self.created,
            "updated": self.updated or self.created,
        }


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
        return keys.token_key(token_hash(token))

    async def create(self, user: str, created: str, readonly: bool = False) -> str:
        """A new token for ``user``; the caller hands it out, nopard keeps only its hash."""
        token, _record = await self.create_record(user, created, readonly)
        return token

    async def create_record(
        self, user: str, created: str, readonly: bool = False, name: str | None = None
    ) -> tuple[str, TokenRecord]:
        """A new token for ``user`` and its record (which keeps only the token's first characters)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            key=str(uuid.uuid4()), user=user, created=created, readonly=readonly,
            shown=token[:SHOWN_CHARS], name=name,
        )
        await self._storage.write(self._key(token), orjson.dumps(asdict(record)))
        return token, record

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

    async def revoke_owned(self, user: str, key_or_token: str) -> bool:
        """Revoke one of ``user``'s tokens, named by its key or by the token itself; False if none."""
        if looks_like_token(key_or_token):
            record = await self.lookup(key_or_token)
            if record is not None and record.user == user:
                return await self.revoke(key_or_token)
        for storage_key, record in await self._stored():
            if record.user == user and record.key == key_or_token:
                return await self._storage.delete(storage_key)
        return False

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
        for storage_key in await self._storage.list(keys.TOKENS):
            raw = await self._storage.read(storage_key)
            try:
                stored.append((storage_key, TokenRecord(**orjson.loads(raw or b""))))
            except (orjson.JSONDecodeError, TypeError):
                continue
        return stored
