"""Package routes: documents, versions and tarballs; publish and unpublish; dist-tags,
owners, visibility and stars.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

from klein import Klein
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IRequest
from werkzeug.exceptions import NotFound as RouteNotFound

from nopard.auth import Accounts, Identity
from nopard.domain import names, package_flags, packument
from nopard.domain.errors import AuthenticationRequired, InvalidInput, NopardError, NotFound, PermissionDenied
from nopard.domain.publication import parse_publication
from nopard.local.packages import Registry
from nopard.settings.config import LiveSettings
from nopard.storage import Blob
from nopard.web.api.common import Gate, add_route
from nopard.web.browser import package_location, root_path, wants_html
from nopard.web.errors import raise_unsupported
from nopard.web.redirects import TarballRedirects
from nopard.web.responses import Requests, json_response, send_prepared
from nopard.web.services import ChangeListener, PackageSource, RunInThread
from nopard.web.site import log_route

PRIVATE_DOCUMENT_CACHE = "private, no-cache"
TARBALL_CACHE = "private, max-age=31536000, immutable"

Handler = Callable[["PackageRoutes", IRequest, names.PackagePath], Awaitable[bytes]]


class PackageRoutes:
    """Every path naming a package, and ``/-/package/...`` (tags, collaborators, visibility)."""

    def __init__(self, requests: Requests, gate: Gate, settings: LiveSettings, accounts: Accounts,
                 registry: Registry, packages: PackageSource, changes: ChangeListener, run_cpu: RunInThread,
                 redirects: TarballRedirects | None = None) -> None:
        self._requests = requests
        self._gate = gate
        self._settings = settings
        self._accounts = accounts
        self._registry = registry
        self._packages = packages
        self._changes = changes
        self._run_cpu = run_cpu
        self._redirects = redirects or TarballRedirects(settings)

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "packages", "/-/_view/starredByUser", ["GET"], self.starred_by_user)
        add_route(app, "packages", "/-/package/<path:ignored>", ["GET", "PUT", "POST", "DELETE"], self.package_action)
        add_route(app, "packages", "/<path:ignored>", ["GET", "PUT", "DELETE"], self.package)

    # Stars, tags, collaborators -------------------------------------------

    async def starred_by_user(self, request: IRequest) -> bytes:
        """The packages a user starred (npm stars): ``?key="<user>"``."""
        identity = await self._gate.reader(request)
        key = (request.args.get(b"key") or [b""])[0].decode("utf-8", "replace")
        user = key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key
        readable = self._gate.may_read(identity.user)
        rows = []
        for name in await self._registry.local_names():
            if not readable(name):
                continue
            document = await self._registry.document(name)
            if document is not None and package_flags.starred_by(document, user):
                rows.append({"value": name})
        return json_response(request, 200, {"rows": rows})

    async def package_action(self, request: IRequest, ignored: str) -> bytes:
        """dist-tags, collaborators and visibility of a package; its 2FA requirement (POST access)."""
        target = names.parse_package_action(request.path)
        method = request.method.decode("ascii")
        if (method, target.kind) == ("POST", "access"):
            return await self.set_access(request, target)
        if method not in ("GET", "PUT", "DELETE") or (method != "GET" and target.kind != "dist-tags"):
            raise_unsupported(method, target.kind)
        if method == "GET":
            if target.kind == "access":
                raise_unsupported(method, target.kind)
            return await self.package_facts(request, target)
        if target.argument is None:
            raise_unsupported(method, "dist-tags list")
        identity = await self._gate.writing(request)
        self._gate.require_rule("publish", target.name, identity.user)
        tag = target.argument
        if method == "PUT":
            version = await self._requests.json_body(request)  # a JSON string: "1.2.3"
            change = partial(packument.set_dist_tag, tag=tag, version=version)
        else:
            change = partial(packument.remove_dist_tag, tag=tag)
        await self._registry.change(target.name, identity.user, None, change,
                                    authorize=self.rules_for(target.name, identity))
        self._changes.changed(target.name)
        return json_response(request, 200, {"ok": True})

    async def set_access(self, request: IRequest, target: names.PackagePath) -> bytes:
        """npm access set mfa=none|publish|automation: whether publishing needs a one-time password."""
        identity = await self._gate.writing(request)
        self._gate.require_rule("publish", target.name, identity.user)
        body = await self._requests.json_body(request)
        await self._registry.change(target.name, identity.user, None, partial(package_flags.set_mfa, body=body),
                                    authorize=self.rules_for(target.name, identity))
        return json_response(request, 200, {"ok": True})

    async def package_facts(self, request: IRequest, target: names.PackagePath) -> bytes:
        """GET dist-tags (any package served), collaborators and visibility (local ones)."""
        identity = await self._gate.reader(request)
        if target.kind == "dist-tags":
            if target.argument is not None:
                raise_unsupported("GET", "dist-tag")
            self._gate.hide_unreadable(target.name, identity, f"package not found: {target.name}")
            document = await self._packages.served_document(target.name, self._requests.base_url(request))
            return json_response(request, 200, document.get("dist-tags", {}))
        self._gate.hide_unreadable(target.name, identity, f"{target.name} is not published on this registry")
        local = await self._registry.document(target.name)
        if local is None:
            raise NotFound(f"{target.name} is not published on this registry")
        if target.kind == "visibility":
            # npm's "public": anyone may install it, no login needed (NOPARD_AUTH_READ, the access rules).
            anonymous = not self._settings.current.auth_read and self._gate.policy.allows("access", target.name, None)
            return json_response(request, 200, {"public": anonymous})
        return json_response(request, 200, self.collaborators(target.name, local))

    def collaborators(self, name: str, document: dict) -> dict[str, str]:
        """The maintainers, each ``read-write`` if the access rules let them publish, else ``read-only``."""
        policy, found = self._gate.policy, {}
        for maintainer in document.get("maintainers", []):
            user = maintainer.get("name") if isinstance(maintainer, dict) else None
            if isinstance(user, str) and policy.allows("access", name, user):
                found[user] = "read-write" if policy.allows("publish", name, user) else "read-only"
        return found

    # Package paths ----------------------------------------------------------

    async def package(self, request: IRequest, ignored: str) -> bytes | None:
        """Every package path; which one is parsed from the raw path."""
        if request.path.startswith(b"/-/"):
            raise RouteNotFound()
        target = names.parse_package_path(request.path)
        if target.kind != "document":  # a document's route also depends on its Accept (route_of)
            log_route(request, target.kind)
        method = request.method.decode("ascii")
        if method == "HEAD":
            method = "GET"
        handler = _HANDLERS.get((method, target.kind))
        if handler is None:
            raise_unsupported(method, target.kind)
            return None
        return await handler(self, request, target)

    def served_as(self, request: IRequest, status: str) -> None:
        """Tell the client and the access log how the answer was served."""
        request.cache_status = status  # type: ignore[attr-defined]  # a NopardRequest attribute
        request.setHeader(b"X-Nopard-Cache", status)

    def document_cache_control(self, status: str) -> str:
        """Private documents are revalidated each time; mirrored ones kept for META_TTL."""
        if status == "LOCAL":
            return PRIVATE_DOCUMENT_CACHE
        current = self._settings.current
        visibility = "private" if current.auth_read else "public"
        return f"{visibility}, max-age={int(current.meta_ttl)}"

    async def get_document(self, request: IRequest, target: names.PackagePath) -> bytes:
        """A package document (full or abbreviated); a browser is sent to the package's page."""
        base_url = self._requests.base_url(request)
        if wants_html(request):
            request.setResponseCode(302)
            request.setHeader(b"Location", package_location(root_path(base_url), target.name).encode())
            return b""
        identity = await self._gate.reader(request)
        self._gate.hide_unreadable(target.name, identity, f"package not found: {target.name}")
        prepared, status = await self._packages.packument(target.name, base_url)
        self.served_as(request, status)
        return send_prepared(request, prepared, self.document_cache_control(status))

    async def get_version(self, request: IRequest, target: names.PackagePath) -> bytes:
        """One version's manifest, by version or dist-tag."""
        identity = await self._gate.reader(request)
        self._gate.hide_unreadable(target.name, identity, f"package not found: {target.name}")
        assert target.argument is not None  # a version path names the version or tag
        manifest = await self._packages.manifest(target.name, self._requests.base_url(request), target.argument)
        return json_response(request, 200, manifest)

    async def get_tarball(self, request: IRequest, target: names.PackagePath) -> bytes:
        """A tarball, streamed from storage (HEAD: its headers only)."""
        if self._redirects.is_decision(request):
            return await self.decide_tarball(request, target)
        identity = await self._gate.reader(request)
        self._gate.hide_unreadable(
            target.name, identity, f"tarball not found: {target.name}/-/{target.argument}", target.argument
        )
        assert target.argument is not None  # a tarball path names the file
        if request.method == b"GET" and self._redirects.active:
            # nginx or the bucket sends the bytes; access was decided above, as for every tarball.
            key, status = await self._packages.stored_tarball(target.name, target.argument)
            self.served_as(request, status)
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Cache-Control", TARBALL_CACHE)
            return await self._redirects.answer(request, key)
        blob, status = await self._packages.tarball(target.name, target.argument)
        return await self.send_tarball(request, blob, status)

    async def decide_tarball(self, request: IRequest, target: names.PackagePath) -> bytes:
        """nginx's auth_request for a tarball (deploy/nginx/nopard.conf): yes with the stored file
        nginx sends (X-Accel-Redirect, kept for NOPARD_ACCEL_CACHE_TTL), yes with none (204: nginx
        asks again for the bytes), or no. auth_request knows only 2xx, 401 and 403, so every
        refusal is a 403 here; nginx then asks again without the decision header and passes
        nopard's real answer on (a hidden package's 404, a blocked version's 451, a challenge)."""
        assert target.argument is not None  # a tarball path names the file
        try:
            identity = await self._gate.reader(request)
            self._gate.hide_unreadable(
                target.name, identity, f"tarball not found: {target.name}/-/{target.argument}", target.argument
            )
            if not self._redirects.sends_files:
                return self._redirects.send_it_yourself(request)
            key, status = await self._packages.stored_tarball(target.name, target.argument)
        except NopardError as refusal:
            raise PermissionDenied(refusal.message) from refusal
        self.served_as(request, status)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Cache-Control", TARBALL_CACHE)
        return await self._redirects.answer(request, key)

    async def send_tarball(self, request: IRequest, blob: Blob, status: str) -> bytes:
        """How a located tarball is sent: the one place that decides (headers, HEAD, the bytes).

        ``blob`` is the stored tarball opened (from memory, its file, or the store); ``status``
        says how it was found (LOCAL, HIT, MISS...). Whatever is not sent is closed.
        """
        self.served_as(request, status)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % blob.size)
        request.setHeader(b"Cache-Control", TARBALL_CACHE)
        if request.method == b"HEAD":
            blob.close()
            return b""
        await blob.send_to(cast(IConsumer, request))  # a Request is a consumer; IRequest does not say so
        return b""

    async def put_document(self, request: IRequest, target: names.PackagePath) -> bytes:
        """Publish (a body with _attachments), else star, owner change or a document sent back."""
        identity = await self._gate.writing(request)
        user = identity.user
        body = await self._requests.json_body(request)
        if isinstance(body, dict) and "_attachments" in body:
            return await self.publish(request, target, identity, body)
        kind = packument.change_kind(body)
        revision = target.argument if target.kind == "revision" else None
        if kind == "star":
            self._gate.require_rule("access", target.name, user)
            document = await self.star(target.name, identity, revision, body)
        elif kind == "owners":
            self._gate.require_rule("publish", target.name, user)
            document = await self.change_owners(target.name, identity, revision, body)
        else:
            # Deprecate (publish) or drop versions (unpublish): the Registry decides which on the
            # document it changes, so a publish landing meanwhile cannot be dropped by a publisher.
            self._gate.require_rule("access", target.name, user)
            document = await self._registry.unpublish_versions(
                target.name, user, revision, body, authorize=self.rules_for(target.name, identity)
            )
        self._changes.changed(target.name)
        return json_response(
            request, 200, {"ok": True, "success": True, "id": target.name, "rev": document["_rev"]}
        )

    async def publish(self, request: IRequest, target: names.PackagePath, identity: Identity, body: dict) -> bytes:
        """Store a new version (npm publish)."""
        user = identity.user
        if not self._gate.policy.allows("publish", target.name, user):
            raise PermissionDenied(f"{user or 'anonymous'} may not publish {target.name} on this registry")
        publication = await self._run_cpu(parse_publication, target.name, body)
        publisher = await self._accounts.profile(user) if user else {"name": "anonymous", "email": ""}
        document = await self._registry.publish(
            publication, publisher, check_owner=user is not None, authorize=self.rules_for(target.name, identity),
            grace=self._settings.current.unpublish_grace, admin=self._gate.policy.is_admin(user),
        )
        self._changes.changed(target.name)
        return json_response(
            request, 201, {"ok": True, "success": True, "id": target.name, "rev": document["_rev"]}
        )

    async def star(self, name: str, identity: Identity, revision: str | None, body: dict) -> dict:
        """Star or unstar for the caller only; any reader who is logged in may."""
        user = identity.user
        if user is None:
            raise AuthenticationRequired("log in to star packages")
        return await self._registry.change(
            name, user, revision, lambda d: package_flags.set_star(d, user, body), maintainer=False,
            authorize=self.rules_for(name, identity),
        )

    async def change_owners(self, name: str, identity: Identity, revision: str | None, body: dict) -> dict:
        """Replace the maintainers (npm owner add/rm); each must be a registered user."""
        user = identity.user
        unknown = [n for n in packument.maintainer_names(body) if not await self._accounts.has_user(n)]
        if unknown:
            raise InvalidInput(f"no such user: {', '.join(unknown)}")
        profiles = [await self._accounts.profile(n) for n in packument.maintainer_names(body)]
        return await self._registry.change(
            name, user, revision, lambda d: packument.set_maintainers(d, profiles),
            authorize=self.rules_for(name, identity),
        )

    def rules_for(self, name: str, identity: Identity) -> Callable[[str, dict | None], None]:
        """The check of one change to ``name`` by ``identity`` (Gate.require_change), run by the
        Registry inside the compare-and-swap with the action the change needs
        (packument.required_action) and the document it changes."""
        return partial(self._gate.require_change, name=name, identity=identity)

    async def delete_revision(self, request: IRequest, target: names.PackagePath) -> bytes:
        """Unpublish a whole package (npm unpublish --force)."""
        identity = await self._gate.writing(request)
        self._gate.require_rule("unpublish", target.name, identity.user)
        await self._registry.unpublish(target.name, identity.user, target.argument,
                                       authorize=self.rules_for(target.name, identity))
        self._changes.changed(target.name)
        return json_response(request, 200, {"ok": True, "success": True})

    async def delete_tarball(self, request: IRequest, target: names.PackagePath) -> bytes:
        """The last step of a one-version unpublish: the removed version's tarball."""
        user = await self._gate.writer(request)
        self._gate.require_rule("unpublish", target.name, user)
        assert target.argument is not None  # a tarball-revision path names the file
        await self._registry.remove_tarball(target.name, user, target.argument)
        return json_response(request, 200, {"ok": True, "success": True})


_HANDLERS: dict[tuple[str, str], Handler] = {
    ("GET", "document"): PackageRoutes.get_document,
    ("GET", "version"): PackageRoutes.get_version,
    ("GET", "tarball"): PackageRoutes.get_tarball,
    ("PUT", "document"): PackageRoutes.put_document,
    ("PUT", "revision"): PackageRoutes.put_document,
    ("DELETE", "revision"): PackageRoutes.delete_revision,
    ("DELETE", "tarball-revision"): PackageRoutes.delete_tarball,
}
