"""Access tokens: random and URL-safe, stored only as their SHA-256 hashes.

A token may carry limits, as ``npm token create`` asks for them: an expiry (refused with 401
once past, and its record removed then or by the hourly sweep), the address ranges it may be
used from (``cidr_whitelist``: 403 from elsewhere), read-only, and the packages and scopes it
may write.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nopard.domain.times import parse_time
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
    expires: str | None = None  # when it stops working (None: never)
    description: str | None = None
    packages: list[str] | None = None  # the packages and scopes (``@scope``) it may write (None: any)
    bypass_2fa: bool = False  # writes without a one-time password (npm's automation tokens)

    def public(self, token: str | None = None) -> dict:
        """The token object of the npm tokens API (``token``: the whole token, on creation only)."""
        return {
            "token": token or self.shown,
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "cidr_whitelist": self.cidr_whitelist,
            "readonly": self.readonly,
            "packages": self.packages,
            "bypass_2fa": self.bypass_2fa,
            "expires": self.expires,
            "created": self.created,
            "updated": self.updated or self.created,
        }

    def expired(self, now: float) -> bool:
        """Whether the token's lifetime is over at ``now`` (epoch seconds)."""
        until = parse_time(self.expires)
        return until is not None and now >= until

    def admits_address(self, address: str | None) -> bool:
        """Whether the token may be used from ``address`` (the peer's), as its cidr_whitelist says."""
        if not self.cidr_whitelist:
            return True
        try:
            peer = ipaddress.ip_address(address or "")
        except ValueError:
            return False  # a UNIX socket has no address any range could hold
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in ipaddress.ip_network(cidr, strict=False) for cidr in self.cidr_whitelist)



def may_write(packages: list[str] | tuple[str, ...], name: str) -> bool:
    """Whether a token limited to ``packages`` (names, and scopes as ``@scope``) may change ``name``."""
    scope = name.split("/", 1)[0] if name.startswith("@") else None
    return name in packages or (scope is not None and scope in packages)


def record_of(raw: bytes) -> TokenRecord:
    """A stored record (fields it does not know are left out); TypeError or orjson.JSONDecodeError
    when it is not one."""
    stored = orjson.loads(raw)
    if not isinstance(stored, dict):
        raise TypeError("not a token record")
    return TokenRecord(**{name: value for name, value in stored.items() if name in TokenRecord.__dataclass_fields__})


def stored_form(record: TokenRecord) -> bytes:
    """What is stored of ``record``."""
    return orjson.dumps(asdict(record))


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

    def __init__(self, storage: Storage, seconds: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self.seconds = seconds  # the clock expiry is judged by

    def _key(self, token: str) -> str:
        return keys.token_key(token_hash(token))

    async def create(self, user: str, created: str, readonly: bool = False) -> str:
        """A new token for ``user``; the caller hands it out, nopard keeps only its hash."""
        token, _record = await self.create_record(user, created, readonly)
        return token

    async def create_record(
        self, user: str, created: str, readonly: bool = False, name: str | None = None, **limits: object
    ) -> tuple[str, TokenRecord]:
        """A new token for ``user`` and its record (which keeps only the token's first characters);
        ``limits``: more TokenRecord fields (expires, cidr_whitelist, description, packages, bypass_2fa)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            key=str(uuid.uuid4()), user=user, created=created, readonly=readonly,
            shown=token[:SHOWN_CHARS], name=name, **limits,  # type: ignore[arg-type]
        )
        await self._storage.write(self._key(token), stored_form(record))
        return token, record

    async def lookup(self, token: str) -> TokenRecord | None:
        """The record of a live token, or None."""
        if not looks_like_token(token):
            return None
        raw = await self._storage.read(self._key(token))
        return record_of(raw) if raw is not None else None

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
                stored.append((storage_key, record_of(raw or b"")))
            except (orjson.JSONDecodeError, TypeError):
                continue
        return stored

    async def sweep(self) -> int:
        """Remove every expired token's record; how many there were."""
        now, removed = self.seconds(), 0
        for storage_key, record in await self._stored():
            if record.expired(now) and await self._storage.delete(storage_key):
                removed += 1
        return removed


SWEEP_SECONDS = 3600.0


class TokenSweep(TimerService):
    """Removes expired tokens' records every SWEEP_SECONDS (a used expired token goes at once)."""

    def __init__(self, tokens: TokenStore, log: Logger, clock: object = None) -> None:
        super().__init__(SWEEP_SECONDS, self._sweep)
        if clock is not None:
            self.clock = clock
        self._tokens = tokens
        self._log = log

    def _sweep(self) -> Deferred:
        def swept(removed: int) -> None:
            if removed:
                self._log.info("removed {count} expired tokens", count=removed, event="tokens-swept")

        def failed(failure: object) -> None:
            self._log.failure("the expired tokens could not be swept", failure)  # type: ignore[arg-type]

        return Deferred.fromCoroutine(self._tokens.sweep()).addCallbacks(swept, failed)
