"""Two-factor authentication: TOTP one-time passwords (RFC 6238, through pyotp) and recovery codes.

A user's second factor is kept in their profile record (``users/<name>.json``, mode 0600 like
every record but tarballs) under ``tfa``::

    {"mode": "auth-only" | "auth-and-writes", "secret": <base32>, "pending": bool,
     "recovery": [<sha256 of each unused recovery code>], "last_step": int, "last_by": str}

``npm profile enable-2fa`` asks for it (a pending secret, shown as an otpauth URL) and
confirms it with a first code, which turns it on and hands out the recovery codes once.
A code is accepted for its 30-second step and the one either side (clock drift). Replay:
once a code is accepted, no code of that step or an earlier one is accepted again, but from
the credential that used it (one npm command sends its ``--otp`` with each of its requests).
A recovery code (64 hex digits, as npm's OTP prompt takes them) stands in for a code, once.
Wrong codes count against the login limits (nopard.auth.limits), as wrong passwords do.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pyotp
from twisted.internet.defer import DeferredLock

from nopard.domain.errors import InvalidInput, NotFound, OneTimePasswordRequired, PermissionDenied
from nopard.storage import Storage, keys

MODES = ("auth-only", "auth-and-writes")
VALID_WINDOW = 1  # steps either side of now whose codes are accepted
RECOVERY_CODES = 5
ISSUER = "nopard"
WANTED = ("a one-time password is required (two-factor authentication is on for {user}): "
          "pass --otp=<code from your authenticator app>")
WRONG = "the one-time password is wrong or expired; use the current code from your authenticator app"
REPLAYED = "this one-time password was used already; wait for the next code of your authenticator app"


def matching_step(secret: str, code: str, now: float, window: int = VALID_WINDOW) -> int | None:
    """The time step whose TOTP code ``code`` is, within ``window`` steps of ``now``; None if none."""
    totp = pyotp.TOTP(secret)
    if len(code) != totp.digits or not code.isdigit():
        return None
    step = totp.timecode(datetime.fromtimestamp(now, tz=UTC))
    for offset in range(-window, window + 1):
        if hmac.compare_digest(totp.generate_otp(step + offset), code):
            return step + offset
    return None


def _recovery_hash(code: str) -> str:
    return hashlib.sha256(code.lower().encode()).hexdigest()


def accept(tfa: dict[str, Any], code: str, now: float, credential: str) -> tuple[dict[str, Any] | None, str]:
    """``tfa`` after ``code`` is used by ``credential`` (None: refused) and, when refused, why."""
    code = code.replace(" ", "")
    if len(code) == 64 and all(c in "0123456789abcdefABCDEF" for c in code):
        unused = list(tfa.get("recovery") or [])
        hashed = _recovery_hash(code)
        if hashed not in unused:
            return None, WRONG
        unused.remove(hashed)
        return {**tfa, "recovery": unused}, ""
    step = matching_step(str(tfa.get("secret", "")), code, now)
    if step is None:
        return None, WRONG
    last = int(tfa.get("last_step", -1))
    if step < last or (step == last and tfa.get("last_by") != credential):
        return None, REPLAYED
    return {**tfa, "last_step": step, "last_by": credential}, ""


def enabled_mode(profile: dict[str, Any]) -> str | None:
    """The mode of a profile's second factor once it is on; None when off or still pending."""
    tfa = profile.get("tfa")
    if isinstance(tfa, dict) and not tfa.get("pending") and tfa.get("mode") in MODES:
        return str(tfa["mode"])
    return None


def public_tfa(profile: dict[str, Any]) -> dict[str, Any] | None:
    """What npm is shown of a second factor (``npm profile get``): never the secret."""
    tfa = profile.get("tfa")
    if not isinstance(tfa, dict):
        return None
    return {"pending": bool(tfa.get("pending")), "mode": tfa.get("mode")}


def require_for_package(level: str | None, name: str, user: str | None, otp: bool, bypass: bool,
                        mode: str | None) -> None:
    """Refuse a change of package ``name`` whose document asks for two-factor authentication
    (``level``: ``publish``, or ``automation`` where a --bypass-2fa token also may) when the
    request proved none: 401 (OTP) when the user has a second factor, 403 when they have none."""
    if level not in ("publish", "automation") or otp or (level == "automation" and bypass):
        return
    if user is None or mode is None:
        raise PermissionDenied(f"publishing {name} requires two-factor authentication: turn it on first "
                               "(npm profile enable-2fa auth-and-writes)")
    raise OneTimePasswordRequired(f"publishing {name} requires a one-time password: pass --otp=<code>")


Limiter = Any  # nopard.auth.limits.LoginLimiter or SharedLoginLimiter (answers at once, or awaitables)


class TwoFactor:
    """Users' second factors in their profile records; ``seconds`` is the clock codes are judged by."""

    def __init__(self, storage: Storage, seconds: Callable[[], float], limiter: Limiter | None = None) -> None:
        self._storage = storage
        self._seconds = seconds
        self._limiter = limiter
        # One check at a time in this process: two requests sending the same code at once cannot both
        # read the record before either remembered the code's step (instances sharing a store can).
        self._lock = DeferredLock()

    async def profile(self, user: str) -> dict[str, Any]:
        """The stored profile of ``user`` ({} when they have none)."""
        raw = await self._storage.read(keys.user_key(user))
        try:
            profile = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            profile = {}
        return profile if isinstance(profile, dict) else {}

    async def save(self, user: str, profile: dict[str, Any]) -> None:
        """Replace ``user``'s profile record (a whole, atomic write)."""
        await self._storage.write(keys.user_key(user), orjson.dumps({"name": user, **profile}))

    async def mode(self, user: str) -> str | None:
        """``user``'s second factor mode when it is on, else None."""
        return enabled_mode(await self.profile(user))

    async def verify(self, user: str, code: str | None, credential: str, address: str | None,
                     pending: bool = False) -> dict[str, Any]:
        """Accept ``code`` as ``user``'s one-time password (``pending``: of the secret being set up),
        remembering its step; OneTimePasswordRequired when missing, wrong or replayed, TooManyAttempts
        after too many wrong ones. Returns the profile as saved."""
        await self._lock.acquire()
        try:
            return await self._verify(user, code, credential, address, pending)
        finally:
            self._lock.release()

    async def _verify(self, user: str, code: str | None, credential: str, address: str | None,
                      pending: bool) -> dict[str, Any]:
        profile = await self.profile(user)
        tfa = profile.get("tfa")
        if not isinstance(tfa, dict) or bool(tfa.get("pending")) != pending:
            raise InvalidInput("two-factor authentication is not being set up: run npm profile enable-2fa"
                               if pending else "two-factor authentication is not on")
        if not code:
            raise OneTimePasswordRequired(WANTED.format(user=user))
        if self._limiter is not None:
            await settle(self._limiter.check(user, address))
        changed, why = accept(tfa, code, self._seconds(), credential)
        if changed is None:
            if self._limiter is not None:
                await settle(self._limiter.failed(user, address))
            raise OneTimePasswordRequired(why)
        profile["tfa"] = changed
        await self.save(user, profile)
        return profile

    async def begin(self, user: str, mode: str) -> str:
        """A new pending secret for ``user`` in ``mode``: its otpauth URL, for the authenticator app."""
        if mode not in MODES:
            raise InvalidInput(f"invalid two-factor mode {mode!r}: use one of {', '.join(MODES)}")
        profile = await self.profile(user)
        secret = pyotp.random_base32()
        profile["tfa"] = {"mode": mode, "secret": secret, "pending": True}
        await self.save(user, profile)
        return pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name=ISSUER)

    async def confirm(self, user: str, code: str | None, address: str | None) -> list[str]:
        """Turn the pending second factor on with its first code; the recovery codes, shown once."""
        profile = await self.verify(user, code, "setup", address, pending=True)
        codes = [secrets.token_hex(32) for _ in range(RECOVERY_CODES)]
        profile["tfa"] = {**profile["tfa"], "pending": False, "recovery": [_recovery_hash(c) for c in codes]}
        await self.save(user, profile)
        return codes

    async def set_mode(self, user: str, mode: str) -> None:
        """Switch an enabled second factor to ``mode``."""
        if mode not in MODES:
            raise InvalidInput(f"invalid two-factor mode {mode!r}: use one of {', '.join(MODES)}")
        profile = await self.profile(user)
        if enabled_mode(profile) is None:
            raise NotFound("two-factor authentication is not on")
        profile["tfa"] = {**profile["tfa"], "mode": mode}
        await self.save(user, profile)

    async def disable(self, user: str) -> None:
        """Turn ``user``'s second factor off (a pending one is dropped too)."""
        profile = await self.profile(user)
        if profile.pop("tfa", None) is not None:
            await self.save(user, profile)


async def settle(result: Any) -> Any:
    """``result``, awaited first when it is awaitable."""
    return await result if inspect.isawaitable(result) else result
