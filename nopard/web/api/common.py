"""What every route group does with a request: check who may do what, and mount routes.

``Gate`` answers who is asking and refuses what they may not do;
``add_route`` mounts a group's bound methods into the one Klein app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.auth import Accounts, Identity
from nopard.auth.operator import OPERATOR_HEADER, OperatorCredential
from nopard.auth.tokens import may_write
from nopard.auth.twofactor import require_for_package
from nopard.domain import package_flags
from nopard.domain.errors import AuthenticationRequired, NotFound, PermissionDenied
from nopard.settings.acl import Policy
from nopard.web.responses import client_address, header
from nopard.web.services import PackageSource
from nopard.web.site import log_user

OPERATOR_NAME = "(operator)"  # the access log's user for the operator token: no user name has parentheses


def _every_name(name: str) -> bool:
    return True


def add_route(app: Klein, group: str, path: str, methods: list[str] | None, handler: Callable[..., Any],
              branch: bool = False) -> None:
    """Route ``path`` to ``handler`` (a bound method); endpoints are named by group, handler and path."""
    endpoint = f"{group}.{getattr(handler, '__name__', 'handler')}:{path}"
    app.route(path, methods=methods, branch=branch, endpoint=endpoint)(handler)


class Gate:
    """Who is asking, and NOPARD_CONFIG's rules for what they may do."""

    def __init__(self, accounts: Accounts, policy: Policy, packages: PackageSource,
                 operator: OperatorCredential | None = None) -> None:
        self._accounts = accounts
        self.policy = policy
        self._packages = packages
        self._operator = operator or OperatorCredential()

    async def identify(self, request: IRequest) -> Identity:
        """Who is asking; the access log learns it too."""
        identity = await self._accounts.identify(header(request, "authorization"), client_address(request),
                                                 header(request, "npm-otp"))
        log_user(request, identity.user)
        return identity

    async def reader(self, request: IRequest) -> Identity:
        """Who is asking, refused when reads need a login (NOPARD_AUTH_READ) and there is none."""
        identity = await self.identify(request)
        self._accounts.require_read(identity)
        return identity

    async def writer(self, request: IRequest) -> str | None:
        """The user who may write, or None when anonymous writes are allowed."""
        return (await self.writing(request)).user

    async def writing(self, request: IRequest) -> Identity:
        """Who may write (user None: anonymous, when anonymous writes are allowed); a user whose
        second factor covers writes must have sent its one-time password."""
        identity = await self.identify(request)
        self._accounts.require_write(identity)
        return await self._accounts.writing(identity)

    async def logged_in(self, request: IRequest, refusal: str) -> Identity:
        """Who is asking, who must be a user: else 401 with ``refusal``."""
        identity = await self.identify(request)
        if identity.user is None:
            raise AuthenticationRequired(refusal)
        return identity

    def holds_operator_token(self, request: IRequest) -> bool:
        """Whether the request carries nopard-admin's operator token; a wrong one is 401.

        The operator is whoever can read the token file on the registry's machine (root or the
        service user): where a request comes from grants nothing, since behind a reverse proxy
        every request comes from 127.0.0.1.
        """
        presented = header(request, OPERATOR_HEADER)
        if presented is None:
            return False
        if not self._operator.admits(presented):
            raise AuthenticationRequired(f"the {OPERATOR_HEADER} sent is not this nopard's: nopard-admin reads it "
                                         "from NOPARD_ADMIN_TOKEN_FILE (default <registry>/.nopard-admin-token)")
        log_user(request, OPERATOR_NAME)
        return True

    async def operator(self, request: IRequest) -> Callable[[str], bool]:
        """The operator routes (sync, prefetch): nopard-admin's operator token, or an admin's login.

        Answers which package names the caller may read. Anonymous is 401, other users and
        read-only tokens are 403.
        """
        if self.holds_operator_token(request):
            return _every_name
        identity = await self.admin(request, "log in as an admin, or run nopard-admin on the registry's machine "
                                             "(it sends the operator token nopard writes at start)")
        if identity.readonly:
            raise PermissionDenied("a read-only token cannot run sync jobs")
        return self.may_read(identity.user)

    async def names_readable(self, request: IRequest) -> Callable[[str], bool]:
        """Which package names a reader may see: all with the operator token, else the access rules."""
        if self.holds_operator_token(request):
            return _every_name
        return self.may_read((await self.reader(request)).user)

    async def admin(self, request: IRequest, refusal: str) -> Identity:
        """An admin (Policy.is_admin): 401 with ``refusal`` when anonymous, 403 for other users."""
        identity = await self.logged_in(request, refusal)
        if not self.policy.is_admin(identity.user):
            raise PermissionDenied(f"{identity.user} is not an admin (see admins in NOPARD_CONFIG)")
        return identity

    def may_read(self, user: str | None) -> Callable[[str], bool]:
        """Whether ``user`` may read a package name (for listings)."""
        return lambda name: self.policy.allows("access", name, user)

    def hide_unreadable(self, name: str, identity: Identity, missing: str, tarball: str | None = None) -> None:
        """A package the caller may not read answers exactly as one that does not exist."""
        if not self.policy.allows("access", name, identity.user):
            raise NotFound(self._packages.missing_answer(name, tarball) or missing)

    def require_rule(self, action: str, name: str, user: str | None) -> None:
        """NOPARD_CONFIG's rule for a write: unreadable names are missing, else 403."""
        if not self.policy.allows("access", name, user):
            raise NotFound(f"{name} is not published on this registry (mirrored packages cannot be changed)")
        if not self.policy.allows(action, name, user):
            raise PermissionDenied(f"{user or 'anonymous'} may not {action} {name} on this registry")

    def require_change(self, action: str, document: dict[str, Any] | None, name: str, identity: Identity) -> None:
        """Everything one change of ``name`` by ``identity`` must pass, judged on the stored document
        inside the compare-and-swap: the access rules, the token's packages, the package's 2FA."""
        self.require_rule(action, name, identity.user)
        if action == "access":
            return  # stars: each reader's own
        if identity.packages is not None and not may_write(identity.packages, name):
            raise PermissionDenied(f"this token may write only {', '.join(identity.packages)}, not {name}")
        require_for_package(package_flags.mfa_level(document), name, identity.user, identity.otp, identity.bypass_2fa,
                            identity.tfa)
