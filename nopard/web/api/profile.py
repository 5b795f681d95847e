"""``/-/npm/v1/user``: npm profile get / set, and two-factor authentication (npm profile
enable-2fa / disable-2fa), as npm-profile sends them. The logic is nopard.auth.twofactor's."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.auth import Accounts, Identity
from nopard.auth.twofactor import MODES, enabled_mode, public_tfa
from nopard.domain.errors import BadCredentials, InvalidInput, OneTimePasswordRequired, PermissionDenied
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import Requests, client_address, json_response

# What npm profile set may change here, and what npm shows (nopard keeps no more about a user).
TEXT_FIELDS = ("fullname", "homepage", "freenode", "twitter", "github")
MAX_FIELD = 200


class ProfileRoutes:
    """The caller's own profile."""

    def __init__(self, requests: Requests, gate: Gate, accounts: Accounts) -> None:
        self._requests = requests
        self._gate = gate
        self._accounts = accounts

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "profile", "/-/npm/v1/user", ["GET"], self.get)
        add_route(app, "profile", "/-/npm/v1/user", ["POST"], self.set)

    async def caller(self, request: IRequest) -> tuple[Identity, str]:
        """The logged-in caller and their name."""
        identity = await self._gate.logged_in(request, "log in to see your profile (npm login)")
        assert identity.user is not None  # logged_in refused anonymous callers
        return identity, identity.user

    async def get(self, request: IRequest) -> bytes:
        """npm profile get: name, email, created, two-factor state (never its secret)."""
        _identity, user = await self.caller(request)
        return json_response(request, 200, await self.shown(user))

    async def shown(self, user: str) -> dict[str, Any]:
        """The profile as npm shows it."""
        profile = await self._accounts.twofactor.profile(user)
        shown = {"name": user, "email": profile.get("email", ""), "email_verified": False,
                 "tfa": public_tfa(profile), "created": profile.get("created"),
                 "updated": profile.get("updated", profile.get("created")), "cidr_whitelist": None}
        shown.update({field: profile.get(field) for field in TEXT_FIELDS})
        return shown

    async def set(self, request: IRequest) -> bytes:
        """npm profile set and enable-2fa / disable-2fa (``tfa`` in the body)."""
        identity, user = await self.caller(request)
        if identity.readonly:
            raise PermissionDenied("a read-only token cannot change the profile")
        body = await self._requests.json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        if "tfa" in body:
            return json_response(request, 200, await self.two_factor(request, identity, user, body["tfa"]))
        if body.get("password") is not None:
            raise InvalidInput("passwords are changed by the registry's operator here (nopard-admin user passwd)")
        await self._accounts.writing(identity)  # auth-and-writes: a one-time password first
        twofactor = self._accounts.twofactor
        profile = await twofactor.profile(user)
        for field in ("email", *TEXT_FIELDS):
            if field in body:
                profile[field] = _text(field, body[field])
        await twofactor.save(user, profile)
        return json_response(request, 200, await self.shown(user))

    async def two_factor(self, request: IRequest, identity: Identity, user: str, tfa: Any) -> Any:
        """Start (a pending secret: its otpauth URL), confirm (a first code: the recovery codes),
        switch or turn off the caller's second factor."""
        twofactor, address = self._accounts.twofactor, client_address(request)
        if isinstance(tfa, list):  # the first code of the pending secret
            if len(tfa) != 1 or not isinstance(tfa[0], str):
                raise InvalidInput("send the one code from the authenticator app: {\"tfa\": [\"123456\"]}")
            return {"tfa": await twofactor.confirm(user, tfa[0].strip(), address)}
        if not isinstance(tfa, dict) or tfa.get("mode") not in (*MODES, "disable"):
            raise InvalidInput(f"tfa.mode must be one of {', '.join(MODES)} or disable")
        password = tfa.get("password")
        if not isinstance(password, str) or not await self._accounts.check_password(user, password, address):
            raise BadCredentials("incorrect password")
        mode = enabled_mode(await twofactor.profile(user))
        if mode is not None and not identity.otp:
            raise OneTimePasswordRequired(
                f"changing two-factor authentication needs a one-time password of {user}: pass --otp=<code>")
        if tfa["mode"] == "disable":
            await twofactor.disable(user)
        elif mode is not None:
            await twofactor.set_mode(user, tfa["mode"])
        else:
            return {"tfa": await twofactor.begin(user, tfa["mode"])}
        return await self.shown(user)


def _text(field: str, value: Any) -> str:
    """A profile field as npm profile set sends it (null: cleared)."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_FIELD:
        raise InvalidInput(f"{field} must be a string of at most {MAX_FIELD} characters")
    if field == "email" and value and ("@" not in value or any(c.isspace() for c in value)):
        raise InvalidInput("invalid email address")
    return value.strip()
