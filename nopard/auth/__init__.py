"""Users and who is asking: login and registration, tokens, and the read/write policy."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from nopard.auth.htpasswd import UserTable, validate_user_name
from nopard.auth.limits import LoginLimiter, SharedLoginLimiter
from nopard.auth.tokens import TokenStore
from nopard.auth.twofactor import WANTED, TwoFactor, settle
from nopard.domain.errors import (
    AuthenticationRequired,
    BadCredentials,
    Conflict,
    InvalidInput,
    OneTimePasswordRequired,
    PermissionDenied,
)
from nopard.domain.names import validate_name
from nopard.domain.times import iso_time
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
MAX_PASSWORD_LENGTH = 72  # bcrypt ignores what comes after
MAX_TOKEN_DAYS = 365  # npm token create --expires
MAX_CIDRS = 32
MAX_LABEL = 200  # characters of a token's name or description


@dataclass(frozen=True)
class Identity:
    """Who made a request: a user name, or None for anonymous, and what their credential allows."""

    user: str | None = None
    readonly: bool = False
    # What proved it ("token:<key>", "basic:<address>"): a one-time password is bound to it.
    credential: str = field(default="", compare=False)
    otp: bool = False  # a right one-time password came with the request
    bypass_2fa: bool = False  # a token made with --bypass-2fa
    packages: tuple[str, ...] | None = None  # the packages and scopes the token may write (None: any)
    tfa: str | None = None  # the user's two-factor mode, once a write looked it up


ANONYMOUS = Identity()


class Accounts:
    """Logging in, registering, and authenticating requests."""

    def __init__(
        self,
        settings: LiveSettings,
        users: UserTable,
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
        self.twofactor = TwoFactor(storage, tokens.seconds, limiter)

    async def check_password(self, name: str, password: str, address: str | None = None) -> bool:
        """Whether ``password`` is ``name``'s, counting failures against brute force.

        Raises TooManyAttempts, without checking, while the account failed too
        often lately from this address, or the address did for any account.
        """
        if self.limiter is None:
            return await self.users.check(name, password)
        # LoginLimiter answers at once, SharedLoginLimiter (Redis) with awaitables.
        await settle(self.limiter.check(name, address))
        if await self.users.check(name, password):
            await settle(self.limiter.succeeded(name, address))
            return True
        await settle(self.limiter.failed(name, address))
        return False

    async def second_factor(self, name: str, otp: str | None, credential: str, address: str | None) -> None:
        """After a right password: ``name``'s one-time password, when their second factor is on."""
        if await self.twofactor.mode(name) is not None:
            await self.twofactor.verify(name, otp, credential, address)

    async def login(self, name: Any, password: Any, email: Any = None, address: str | None = None,
                    otp: str | None = None, session: bool = False) -> str:
        """A new token for ``name``, registering them while registration is open.

        Raises BadCredentials on a wrong password and, once registration is
        closed, for an unknown user too, with the same message after the same
        bcrypt work (so no answer tells whether a name exists); TooManyAttempts
        after too many failures (``address``: the client's, for that count);
        OneTimePasswordRequired, after a right password only, when the user's
        second factor is on and ``otp`` is not its code. ``session``: a web login's
        token, which lives NOPARD_SESSION_TOKEN_TTL seconds.
        """
        validate_user_name(name)
        if not isinstance(password, str) or not password:
            raise InvalidInput("a password is required")
        if len(password.encode()) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(f"passwords are at most {MAX_PASSWORD_LENGTH} bytes")
        # Known as of now (a check reads again before refusing, known and unknown names alike).
        # A name registered meanwhile through another instance (news not here yet) logs in instead.
        if (name in await self.users.fresh() or self.registration_closed()
                or not await self._register(name, password, email)):
            # An unknown name gets UserTable's equal-time dummy check, and is counted alike.
            if not await self.check_password(name, password, address):
                raise BadCredentials(self._refusal())
            await self.second_factor(name, otp, f"login:{address}", address)
        if not session:
            return await self.tokens.create(name, self._now())
        expires = iso_time(self.tokens.seconds() + self._settings.current.session_token_ttl)
        token, _record = await self.tokens.create_record(name, self._now(), name="npm login (web)", expires=expires)
        return token

    async def has_user(self, name: str) -> bool:
        """Whether ``name`` is a registered user (read again before saying no)."""
        return await self.users.known(name)

    def registration_closed(self) -> bool:
        """Whether new users can no longer register (NOPARD_MAX_USERS reached, or 0), as last read."""
        return len(self.users.users()) >= self._settings.current.max_users

    def _refusal(self) -> str:
        """The one answer to a failed login, the same for a known and an unknown name."""
        if self.registration_closed():
            return "incorrect user name or password (registration of new users is closed)"
        return "incorrect user name or password"

    async def _register(self, name: str, password: str, email: Any) -> bool:
        """Register ``name``; False when they exist already (registered by a concurrent request)."""
        if email is not None and (not isinstance(email, str) or not _EMAIL.fullmatch(email)):
            raise InvalidInput("invalid email address")
        max_users = self._settings.current.max_users
        try:
            await self.users.add(name, password, max_users=max_users)
        except Conflict:
            if name in self.users:  # the add read the users: they are there now
                return False
            # Registration closed by concurrent sign-ups: answered as any failed login (add
            # already spent a bcrypt hash's time).
            raise BadCredentials(self._refusal()) from None
        profile = {"name": name, "email": email or "", "created": self._now()}
        await self._storage.write(keys.user_key(name), orjson.dumps(profile))
        return True

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

    async def create_token(self, identity: Identity, body: dict, address: str | None = None) -> dict:
        """A new token for the caller once their password (and one-time password, when their second
        factor is on) is checked (npm token create, ``body`` as it sends it): its API object."""
        user = identity.user
        assert user is not None  # the route refused anonymous callers
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise InvalidInput("a password is required")
        limits = token_limits(body, self.tokens.seconds())
        if not await self.check_password(user, password, address):
            raise BadCredentials("incorrect password")
        if not identity.otp and await self.twofactor.mode(user) is not None:
            raise OneTimePasswordRequired(WANTED.format(user=user))
        readonly = body.get("readonly") is True or body.get("packages_and_scopes_permission") in (
            "read-only", "no-access")
        token, record = await self.tokens.create_record(user, self._now(), readonly, **limits)
        return record.public(token)

    async def identify(self, authorization: str | None, address: str | None = None,
                       otp: str | None = None) -> Identity:
        """The identity an Authorization header proves; BadCredentials if it proves none.

        A token past its expiry is refused (401, and its record removed), one used from outside its
        cidr_whitelist too (403). ``otp`` (npm's ``npm-otp`` header) is checked when the user's
        second factor is on: Basic credentials of such a user need it on every request.
        """
        if not authorization:
            return ANONYMOUS
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer":
            record = await self.tokens.lookup(credentials)
            if record is None or not await self.users.known(record.user):
                raise BadCredentials("invalid or revoked token", scheme="Bearer")
            if record.expired(self.tokens.seconds()):
                await self.tokens.revoke(credentials)
                raise BadCredentials(f"this token expired at {record.expires}: log in again (npm login)",
                                     scheme="Bearer")
            if not record.admits_address(address):
                raise PermissionDenied(f"this token may be used only from {', '.join(record.cidr_whitelist or [])}"
                                       f", not from {address or 'a local socket'}")
            identity = Identity(record.user, record.readonly, f"token:{record.key}", bypass_2fa=record.bypass_2fa,
                                packages=tuple(record.packages) if record.packages is not None else None)
            if otp and await self.twofactor.mode(record.user) is not None:
                await self.twofactor.verify(record.user, otp, identity.credential, address)
                identity = replace(identity, otp=True)
            return identity
        if scheme == "basic":
            name, password = _basic_credentials(credentials)
            if not await self.check_password(name, password, address):
                raise BadCredentials("incorrect user name or password")
            # Basic credentials are a login on each request: with a second factor, each needs its code.
            await self.second_factor(name, otp, f"basic:{address}", address)
            return Identity(name, credential=f"basic:{address}", otp=bool(otp))
        raise BadCredentials(f"unsupported authorization scheme {scheme!r}")

    async def writing(self, identity: Identity) -> Identity:
        """``identity`` about to write: refused without a one-time password when the user's second
        factor covers writes (auth-and-writes) and the token cannot bypass it; knows the user's mode."""
        if identity.user is None:
            return identity
        mode = await self.twofactor.mode(identity.user)
        if mode == "auth-and-writes" and not identity.otp and not identity.bypass_2fa:
            raise OneTimePasswordRequired(WANTED.format(user=identity.user))
        return replace(identity, tfa=mode)

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


def token_limits(body: dict, now: float) -> dict[str, Any]:
    """The TokenRecord fields ``npm token create``'s body asks for; InvalidInput when one is malformed."""
    limits: dict[str, Any] = {}
    for label in ("name", "description"):
        value = body.get(label)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_LABEL):
            raise InvalidInput(f"{label} must be a string of at most {MAX_LABEL} characters")
        limits[label] = value.strip() or None if isinstance(value, str) else None
    expires = body.get("expires")
    if expires is not None:
        if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= MAX_TOKEN_DAYS:
            raise InvalidInput(f"expires must be a number of days from 1 to {MAX_TOKEN_DAYS}")
        limits["expires"] = iso_time(now + expires * 86400)
    cidrs = body.get("cidr_whitelist")
    if cidrs:
        if not isinstance(cidrs, list) or len(cidrs) > MAX_CIDRS or not all(isinstance(c, str) for c in cidrs):
            raise InvalidInput(f"cidr_whitelist must be a list of at most {MAX_CIDRS} address ranges")
        try:
            limits["cidr_whitelist"] = [str(ipaddress.ip_network(c.strip(), strict=False)) for c in cidrs]
        except ValueError as error:
            raise InvalidInput(f"invalid cidr_whitelist entry: {error}") from None
    packages = [*(body.get("packages") or []), *(body.get("scopes") or [])]
    if packages:
        if len(packages) > 100 or not all(isinstance(p, str) for p in packages):
            raise InvalidInput("packages and scopes must be lists of at most 100 names")
        for entry in packages:
            if not (entry.startswith("@") and "/" not in entry):
                validate_name(entry)
            else:
                validate_name(entry + "/x")
        limits["packages"] = packages
    limits["bypass_2fa"] = body.get("bypass_2fa") is True
    return limits


def _basic_credentials(encoded: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadCredentials("malformed Basic credentials") from None
    name, separator, password = decoded.partition(":")
    if not separator or not name:
        raise BadCredentials("malformed Basic credentials")
    return name, password
