"""Packages published here: their stored documents, and publishing.

The per-package lock makes a publish a read-merge-write that no concurrent
publish of the same package can interleave with; the tarball is stored with
create-if-absent before the document that names it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from twisted.internet.interfaces import IReactorTime

from nopard.cluster.coordination import InProcessCoordination
from nopard.domain import changes, names, packument
from nopard.domain.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from nopard.domain.prepared import PreparedCache
from nopard.domain.publication import Publication
from nopard.domain.times import iso_time
from nopard.local.signing import SigningKeys
from nopard.storage import Storage, keys

if TYPE_CHECKING:
    from nopard.catalog.changes import ChangeLog

# Compare-and-swap rounds before a change gives up (each lost round means another writer won).
UPDATE_ATTEMPTS = 20

# The access rules' check of one change: given the action the change needs
# (packument.required_action: access, publish, unpublish) and the stored document
# it applies to (None: a first publish), raise PermissionDenied (or NotFound, for a
# name the user may not see, or OneTimePasswordRequired, for a package asking for
# two-factor authentication) when the user may not. The routes hand one in; None:
# no rules apply.
Authorize = Callable[[str, dict[str, Any] | None], None]


class PackageLocks(Protocol):
    """What publishing shares with other instances (nopard.cluster: Redis, or this process alone)."""

    async def bump(self, name: str) -> str | None:
        """Tell every instance that ``name`` changed."""

    def lock(self, key: str, wait: float = 60.0) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` against every instance."""


class Registry:
    """The packages published to this registry."""

    def __init__(
        self, storage: Storage, cache: PreparedCache, clock: IReactorTime, coordination: PackageLocks | None = None,
        signing: SigningKeys | None = None, changes: ChangeLog | None = None,
    ) -> None:
        self._storage = storage
        self.changes = changes  # the changes feed every change is recorded in (None: none)
        # nopard's own key: every version published here is signed (None: unsigned, as before).
        self.signing = signing
        self._cache = cache
        self._clock = clock
        # One instance at a time changes a package (a Redis lock when instances share one).
        self._coordination: PackageLocks = coordination or InProcessCoordination()

    async def document(self, name: str) -> dict[str, Any] | None:
        """The stored document of ``name``, or None if it was never published here."""
        raw = await self._storage.read(keys.local_document_key(name))
        return orjson.loads(raw) if raw is not None else None

    async def has_document(self, name: str) -> bool:
        """Whether ``name`` is published here (its document stored), without reading it."""
        return await self._storage.exists(keys.local_document_key(name))

    async def publish(
        self, publication: Publication, publisher: dict[str, str], check_owner: bool = True,
        authorize: Authorize | None = None, grace: float = 0.0, admin: bool = False,
    ) -> dict[str, Any]:
        """Store the publication's tarballs, then the merged document; return the document.

        Raises VersionExists for a version already published, PermissionDenied
        when the publisher does not maintain an existing package (unless
        ``check_owner`` is off: anonymous writes), when the whole package was
        unpublished less than ``grace`` seconds ago and the publisher was not
        one of its maintainers (nor an ``admin``), or when ``authorize``
        refuses; Conflict when different bytes are already stored for a
        version's tarball.
        """
        name = publication.name

        async def merge(document: dict[str, Any] | None) -> dict[str, Any]:
            record = await self._unpublished(name)
            if document is None:
                reserved = packument.name_reserved(record, publisher["name"], self._clock.seconds(), grace)
                if reserved is not None and check_owner and not admin:
                    raise PermissionDenied(reserved)
            owned = document is None or not check_owner or _maintains(document, publisher["name"])
            if not owned:
                raise PermissionDenied(f"{publisher['name']} is not a maintainer of {name}")
            now = iso_time(self._clock.seconds())
            retired = packument.retired_versions(record)
            merged = packument.merge_publication(document, publication, publisher, now, retired)
            if self.signing is not None:
                await self.signing.sign_versions(merged, list(publication.versions))
            _authorized(name, document, merged, publisher["name"] if check_owner else None, authorize)
            for version, data in publication.tarballs.items():
                await self._store_tarball(name, names.tarball_filename(name, version), data)
            merged["_rev"] = packument.next_revision(merged, orjson.dumps(merged))
            return merged

        async with self._coordination.lock("doc:" + name):
            return await self._update(name, merge)

    async def change(
        self, name: str, user: str | None, revision: str | None,
        apply: Callable[[dict[str, Any]], dict[str, Any]], maintainer: bool = True,
        authorize: Authorize | None = None,
    ) -> dict[str, Any]:
        """Store ``apply(document)`` with a new ``_rev``; return it.

        ``user`` must maintain the package when ``maintainer``, or whenever the
        change is more than stars (None: anonymous writes allowed); ``revision``,
        when given, must be the stored one; ``authorize`` must allow what the
        change needs, judged on the document it is applied to. Raises NotFound
        when the package was not published here.
        """
        async def changed(document: dict[str, Any] | None) -> dict[str, Any]:
            before = self._writable(name, document, user, revision, maintainer)
            after = apply(before)
            _authorized(name, before, after, user, authorize)
            return self._revised(after)

        async with self._coordination.lock("doc:" + name):
            return await self._update(name, changed)

    async def unpublish_versions(
        self, name: str, user: str | None, revision: str | None, body: dict[str, Any],
        authorize: Authorize | None = None,
    ) -> dict[str, Any]:
        """Apply a document sent back (deprecations, removed versions); removed tarballs go too.

        Whether it is an unpublish (versions dropped) or a deprecation is
        decided against the document it is applied to, inside the swap.
        """
        removed: list[str] = []

        async def applied(document: dict[str, Any] | None) -> dict[str, Any]:
            before = self._writable(name, document, user, revision, True)
            changed, gone = packument.apply_document(before, body)
            _authorized(name, before, changed, user, authorize)
            removed[:] = gone
            return self._revised(changed)

        async with self._coordination.lock("doc:" + name):
            changed = await self._update(name, applied)
            for version in removed:
                await self._storage.delete(keys.tarball_key(name, names.tarball_filename(name, version)))
            return changed

    async def remove_tarball(self, name: str, user: str | None, filename: str) -> None:
        """Delete the tarball of a version already removed from the document (npm unpublish's last step)."""
        async with self._coordination.lock("doc:" + name):
            document = self._writable(name, await self.document(name), user, None, True)
            if packument.find_version_by_file(document, filename) is not None:
                raise InvalidInput(f"{filename} belongs to a published version: unpublish the version first")
            await self._storage.delete(keys.tarball_key(name, filename))

    async def unpublish(
        self, name: str, user: str | None, revision: str | None, authorize: Authorize | None = None,
    ) -> None:
        """Remove a whole package: record its versions, then the document, then its tarballs.

        Read, record, compare-and-delete: a version published meanwhile (by an
        instance that could not have the lock) makes the delete fail and the
        round start again, so it is judged, recorded as unpublished and removed
        with the rest, never deleted unrecorded.
        """
        key = keys.local_document_key(name)
        async with self._coordination.lock("doc:" + name):
            for _attempt in range(UPDATE_ATTEMPTS):
                stored = await self._storage.read_versioned(key)
                document = self._writable(name, orjson.loads(stored[0]) if stored else None, user, revision, True)
                assert stored is not None  # _writable raised NotFound otherwise
                _authorized(name, document, None, user, authorize)
                now = iso_time(self._clock.seconds())
                record = packument.unpublished_record(await self._unpublished(name), document, user, now)
                await self._storage.write(keys.unpublished_key(name), orjson.dumps(record))
                if await self._storage.delete_versioned(key, stored[1]):
                    break
            else:
                raise Conflict(f"{name} kept changing while it was unpublished; try again")
            await self._changed(name)
            if self.changes is not None:
                await self.changes.record(name, changes.UNPUBLISH, deleted=True)
            for tarball in await self._storage.list(keys.local_tarballs_prefix(name)):
                await self._storage.delete(tarball)

    async def local_names(self) -> list[str]:
        """The names of every package published here."""
        return keys.names_of(await self._storage.list(keys.PACKAGES), keys.LOCAL_DOCUMENT)

    def _writable(
        self, name: str, document: dict[str, Any] | None, user: str | None, revision: str | None,
        maintainer: bool,
    ) -> dict[str, Any]:
        if document is None:
            raise NotFound(f"{name} is not published on this registry (mirrored packages cannot be changed)")
        if maintainer and user is not None and not _maintains(document, user):
            raise PermissionDenied(f"{user} is not a maintainer of {name}")
        if revision not in (None, "undefined") and revision != document.get("_rev"):
            raise Conflict(f"revision {revision} of {name} is not the current one; fetch it again")
        return document

    def _revised(self, document: dict[str, Any]) -> dict[str, Any]:
        document.setdefault("time", {})["modified"] = iso_time(self._clock.seconds())
        document["_rev"] = packument.next_revision(document, orjson.dumps(document))
        return document

    async def _update(
        self, name: str, compute: Callable[[dict[str, Any] | None], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Read, compute, compare-and-swap: a document another instance changed meanwhile is read again.

        The lock held by the callers makes a retry rare; the swap makes a lost
        update impossible even when the lock could not be had (Redis down).
        """
        key = keys.local_document_key(name)
        for _attempt in range(UPDATE_ATTEMPTS):
            stored = await self._storage.read_versioned(key)
            document = orjson.loads(stored[0]) if stored is not None else None
            changed = await compute(document)
            if await self._storage.replace(key, orjson.dumps(changed), stored[1] if stored else None):
                await self._changed(name)
                if self.changes is not None:
                    await self.changes.record(name, changes.kind_of(document, changed), changed.get("_rev"))
                return changed
        raise Conflict(f"{name} kept changing while this change was applied; try again")

    async def _changed(self, name: str) -> None:
        """Forget prepared forms of ``name``, here and (through its stamp) on every instance."""
        self._cache.invalidate(name)
        await self._coordination.bump(name)

    async def _unpublished(self, name: str) -> dict[str, Any] | None:
        raw = await self._storage.read(keys.unpublished_key(name))
        return orjson.loads(raw) if raw is not None else None

    async def _store_tarball(self, name: str, filename: str, data: bytes) -> None:
        key = keys.tarball_key(name, filename)
        if await self._storage.create(key, data):
            return
        # Left by a publish whose document write never happened: the same
        # bytes may be published again, different bytes never replace them.
        if await self._storage.read(key) != data:
            raise Conflict(f"a different tarball is already stored as {name}/-/{filename}")


def _authorized(
    name: str, before: dict[str, Any] | None, after: dict[str, Any] | None, user: str | None,
    authorize: Authorize | None,
) -> None:
    """Refuse the change from ``before`` to ``after`` unless ``user`` may make it (inside the swap)."""
    action = packument.required_action(before, after)
    if authorize is not None:
        authorize(action, before)
    if action != "access" and user is not None and before is not None and not _maintains(before, user):
        raise PermissionDenied(f"{user} is not a maintainer of {name}")


def _maintains(document: dict[str, Any], user: str) -> bool:
    maintainers = document.get("maintainers") or []
    return any(isinstance(m, dict) and m.get("name") == user for m in maintainers)
