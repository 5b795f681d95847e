"""Users and who is asking: login and registration, tokens, and the read/write policy."""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from nopard.auth.htpasswd import HtpasswdFile, validate_user_name
from nopard.auth.limits import LoginLimiter, SharedLoginLimiter
from nopard.auth.tokens import TokenStore
from nopard.domain.errors import (
    AuthenticationRequired,
    BadCredentials,
    Conflict,
    InvalidInput,
    PermissionDenied,
)
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
MAX_PASSWORD_LENGTH = 72  # bcrypt ignores what comes after


@dataclass(frozen=True)
class Identity:
    """Who made a request: a user name, or None for anonymous."""

    user: str | None = None
    readonly: bool = False


ANONYMOUS = Identity()


class Accounts:
    """Logging in, registering, and authenticating requests."""

    def __init__(
        self,
        settings: LiveSettings,
        users: HtpasswdFile,
        tokens: TokenStore,
        storage: Storage,
        now: Callable[[], str],
        limiter: LoginLimiter | SharedLoginLimiter | None = None,
    ) -> None:
        self._settings = settings
        self.users = users
        self.tokens = tokens
        self._storage = storage
        self._now = now
        self.limiter = limiter

    async def check_password(self, name: str, password: str, address: str | None = None) -> bool:
        """Whether ``password`` is ``name``'s, counting failures against brute force.

        Raises TooManyAttempts, without checking, while the account failed too
        often lately from this address, or the address did for any account.
        """
        if self.limiter is None:
            return await self.users.check(name, password)
        # LoginLimiter answers at once, SharedLoginLimiter (Redis) with awaitables.
        await _settle(self.limiter.check(name, address))
        if await self.users.check(name, password):
            await _settle(self.limiter.succeeded(name, address))
            return True
        await _settle(self.limiter.failed(name, address))
        return False

    async def login(self, name: Any, password: Any, email: Any = None, address: str | None = None) -> str:
        """A new token for ``name``, registering them while registration is open.

        Raises BadCredentials on a wrong password and, once registration is
        closed, for an unknown user too, with the same message after the same
        bcrypt work (so no answer tells whether a name exists); TooManyAttempts
        after too many failures (``address``: the client's, for that count).
        """
        validate_user_name(name)
        if not isinstance(password, str) or not password:
            raise InvalidInput("a password is required")
        if len(password.encode()) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(f"passwords are at most {MAX_PASSWORD_LENGTH} bytes")
        if name in self.users or self.registration_closed():
            # An unknown name gets HtpasswdFile's equal-time dummy check, and is counted alike.
            if not await self.check_password(name, password, address):
                raise BadCredentials(self._refusal())
        else:
            await self._register(name, password, email)
        return await self.tokens.create(name, self._now())

    def registration_closed(self) -> bool:
        """Whether new users can no longer register (NOPARD_MAX_USERS reached, or 0)."""
        return len(self.users.users()) >= self._settings.current.max_users

    def _refusal(self) -> str:
        """The one answer to a failed login, the same for a known and an unknown name."""
        if self.registration_closed():
            return "incorrect user name or password (registration of new users is closed)"
        return "incorrect user name or password"

    async def _register(self, name: str, password: str, email: Any) -> None:
        if email is not None and (not isinstance(email, str) or not _EMAIL.fullmatch(email)):
            raise InvalidInput("invalid email address")
        max_users = self._settings.current.max_users
        try:
            await self.users.add(name, password, max_users=max_users)
        except Conflict:
            # Registered, or registration closed, by a concurrent request: answered as any failed
            # login (add already spent a bcrypt hash's time).
            raise BadCredentials(self._refusal()) from None
        profile = {"name": name, "email": email or "", "created": self._now()}
        await self._storage.write(keys.user_key(name), orjson.dumps(profile))

    async def profile(self, name: str) -> dict[str, str]:
        """``{name, email}`` of a user, as maintainers lists carry them."""
        raw = await self._storage.read(keys.user_key(validate_user_name(name)))
        email = orjson.loads(raw).get("email", "") if raw else ""
        return {"name": name, "email": email}

    async def revision(self, name: str) -> str | None:
        """The CouchDB-style ``rev`` of a user's stored profile (``1-<md5>``; written once), None without one."""
        raw = await self._storage.read(keys.user_key(validate_user_name(name)))
        return f"1-{hashlib.md5(raw, usedforsecurity=False).hexdigest()}" if raw is not None else None

    async def logout(self, token: str) -> bool:
        """Revoke ``token``; False if it was not a live token."""
        return await self.tokens.revoke(token)

    async def create_token(
        self, user: str, password: Any, readonly: bool = False, name: Any = None, address: str | None = None
    ) -> dict:
        """A new token for ``user`` once their password is checked (npm token create): its API object."""
        if not isinstance(password, str) or not password:
            raise InvalidInput("a password is required")
        if not await self.check_password(user, password, address):
            raise BadCredentials("incorrect password")
        label = name if isinstance(name, str) and name.strip() else None
        token, record = await self.tokens.create_record(user, self._now(), readonly, label)
        return record.public(token)

    async def identify(self, authorization: str | None, address: str | None = None) -> Identity:
        """The identity an Authorization header proves; BadCredentials if it proves none."""
        if not authorization:
            return ANONYMOUS
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer":
            record = await self.tokens.lookup(credentials)
            if record is None or record.user not in self.users:
                raise BadCredentials("invalid or revoked token", scheme="Bearer")
            return Identity(record.user, record.readonly)
        if scheme == "basic":
            name, password = _basic_credentials(credentials)
            if not await self.check_password(name, password, address):
                raise BadCredentials("incorrect user name or password")
            return Identity(name)
        raise BadCredentials(f"unsupported authorization scheme {scheme!r}")

    def require_read(self, identity: Identity) -> None:
        """Raise AuthenticationRequired if reads need a user and there is none."""
        if self._settings.current.auth_read and identity.user is None:
            raise AuthenticationRequired("log in to read from this registry")

    def require_write(self, identity: Identity) -> str | None:
        """The user writing (None: anonymous, when NOPARD_AUTH_WRITE is off); raise if not allowed."""
        if identity.user is None:
            if not self._settings.current.auth_write:
                return None
            raise AuthenticationRequired("log in to publish to this registry (npm login)")
        if identity.readonly:
            raise PermissionDenied("this token is read-only")
        return identity.user


async def _settle(result: Any) -> Any:
    """``result``, awaited first when it is awaitable."""
    return await result if inspect.isawaitable(result) else result


def _basic_credentials(encoded: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadCredentials("malformed Basic credentials") from None
    name, separator, password = decoded.partition(":")
    if not separator or not name:
        raise BadCredentials("malformed Basic credentials")
    return name, password
