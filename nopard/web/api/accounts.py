"""Account routes: login and registration (CouchDB style), whoami, user profiles, tokens."""

from __future__ import annotations

from urllib.parse import unquote

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.auth import Accounts, Identity
from nopard.domain.errors import InvalidInput, NotFound, PermissionDenied
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import Requests, client_address, header, json_response
from nopard.web.site import log_user

USER_PREFIX = "org.couchdb.user:"


class AccountRoutes:
    """``/-/user/...``, ``/-/whoami`` and the tokens API (the logic is nopard.auth's)."""

    def __init__(self, requests: Requests, gate: Gate, accounts: Accounts) -> None:
        self._requests = requests
        self._gate = gate
        self._accounts = accounts

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "accounts", "/-/whoami", ["GET"], self.whoami)
        add_route(app, "accounts", "/-/user/<userid>", ["PUT"], self.login)
        add_route(app, "accounts", "/-/user/<userid>", ["GET"], self.user_profile)
        add_route(app, "accounts", "/-/user/token/<token>", ["DELETE"], self.logout)
        add_route(app, "accounts", "/-/npm/v1/tokens", ["GET"], self.list_tokens)
        add_route(app, "accounts", "/-/npm/v1/tokens", ["POST"], self.create_token)
        add_route(app, "accounts", "/-/npm/v1/tokens/token/<path:key>", ["DELETE"], self.revoke_token)

    async def whoami(self, request: IRequest) -> bytes:
        """The caller's user name (npm whoami)."""
        identity = await self._gate.logged_in(request, "not logged in")
        return json_response(request, 200, {"username": identity.user})

    async def login(self, request: IRequest, userid: str) -> bytes:
        """Legacy (CouchDB-style) login, which also registers while registration is open."""
        if not userid.startswith(USER_PREFIX):
            raise NotFound("not found")
        name = userid[len(USER_PREFIX) :]
        body = await self._requests.json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        if body.get("name", name) != name:
            raise InvalidInput("the body's name does not match the URL's user")
        token = await self._accounts.login(name, body.get("password"), body.get("email"), client_address(request),
                                           otp=header(request, "npm-otp"))
        log_user(request, name)
        answer = {"ok": True, "id": userid, "token": token}
        revision = await self._accounts.revision(name)
        if revision is not None:  # a user only in the htpasswd file has no stored profile, so no rev
            answer["rev"] = revision
        return json_response(request, 201, answer)

    async def logout(self, request: IRequest, token: str) -> bytes:
        """Revoke a token (npm logout). Idempotent: a gone token is logged out too."""
        await self._accounts.logout(unquote(token))
        return json_response(request, 200, {"ok": True})

    async def user_profile(self, request: IRequest, userid: str) -> bytes:
        """``{name, email}`` of a registered user (npm owner add checks the user exists)."""
        await self._gate.logged_in(request, "log in to look up users")
        name = userid[len(USER_PREFIX) :] if userid.startswith(USER_PREFIX) else None
        if name is None or not await self._accounts.has_user(name):
            raise NotFound("no such user")
        return json_response(request, 200, await self._accounts.profile(name))

    async def token_owner(self, request: IRequest) -> Identity:
        """The logged-in caller whose tokens a request manages."""
        return await self._gate.logged_in(request, "log in to manage tokens (npm login)")

    async def list_tokens(self, request: IRequest) -> bytes:
        """The caller's tokens (npm token list): only their first characters."""
        identity = await self.token_owner(request)
        objects = [record.public() for record in await self._accounts.tokens.records(identity.user)]
        return json_response(request, 200, {"objects": objects, "total": len(objects), "urls": {}})

    async def create_token(self, request: IRequest) -> bytes:
        """A new token for the caller, once their password is checked (npm token create)."""
        identity = await self.token_owner(request)
        body = await self._requests.json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        created = await self._accounts.create_token(identity, body, client_address(request))
        return json_response(request, 200, created)

    async def revoke_token(self, request: IRequest, key: str) -> bytes:
        """Revoke one of the caller's tokens, by key or by the token itself (npm token revoke)."""
        identity = await self.token_owner(request)
        if identity.readonly:
            raise PermissionDenied("a read-only token cannot revoke tokens")
        assert identity.user is not None  # token_owner refused anonymous callers
        if not await self._accounts.tokens.revoke_owned(identity.user, unquote(key)):
            raise NotFound("no such token of yours")
        request.setResponseCode(204)
        return b""
