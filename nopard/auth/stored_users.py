"""The users' htpasswd file kept in the store, so every instance and nopard-admin share it.

One object, ``users/htpasswd`` (keys.USERS_HTPASSWD), on the filesystem or in the S3
bucket like the rest of the registry. Each process keeps it parsed in memory and
reads it again:

- when another instance announces a change on the change feed (Redis, or the
  supervisor's keyspace under NOPARD_WORKERS): at once;
- when the copy in memory is older than POLL_SECONDS and someone is checked: so a
  change nopard-admin made without NOPARD_REDIS_URL (it announces nothing then, see
  cli/announce.py) applies within that long;
- before any answer that would refuse someone (an unknown name, a wrong password):
  so a user nopard-admin just added, or a password it just set, works at once.

Every change is a compare-and-swap of the whole object (read it, change one line,
``replace`` against the version read, again on a lost race), so concurrent sign-ups
through several instances never lose one another. ``adopt_local_file`` moves the
htpasswd file of older versions (``<registry_path>/htpasswd``) into the store once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from nopard.auth.htpasswd import HtpasswdFile, RunInThread, UserTable, held, merging, parse_htpasswd, with_entry
from nopard.domain.errors import Conflict
from nopard.storage import Storage, keys

KEY = keys.USERS_HTPASSWD
# Seconds a process trusts its copy before a check reads the object again (nopard-admin's changes).
POLL_SECONDS = 1.0
# Compare-and-swap attempts before a change gives up (only under a storm of concurrent sign-ups).
MAX_ATTEMPTS = 50
# The change feed's message for the users: no package can have this name.
NEWS = "-/users"
# What the adopted local file is renamed to, beside where it was.
ADOPTED_SUFFIX = ".moved-to-store"


@dataclass(frozen=True)
class Adoption:
    """What adopt_local_file did: the file moved, how many users it held, and how many the store kept as they were."""

    path: str
    renamed: str
    users: int
    kept: int

    def line(self) -> str:
        """The log line saying so."""
        kept = f" ({self.kept} of them already in the store with another password, kept as there)" if self.kept else ""
        return (f"moved {self.users} users from {self.path} into the store ({KEY}){kept}; "
                f"the file is renamed {self.renamed} and no longer read")


class StoredUsers(UserTable):
    """The users in the store's ``users/htpasswd``, cached in memory (see the module's docstring)."""

    def __init__(self, storage: Storage, seconds: Callable[[], float], run_in_thread: RunInThread) -> None:
        super().__init__(run_in_thread)
        self._storage = storage
        self._seconds = seconds
        self._version: str | None = None
        self._read_at: float | None = None  # when the last read began (None: never, or told of a change)
        self._begun = 0  # reads and changes begun, all under _lock (one at a time, in order)
        self._lock = DeferredLock()
        self.reads = 0  # reads of the object (tests, status)

    def where(self) -> str:
        """The store's key."""
        return f"the store's {KEY}"

    def changed(self) -> None:
        """Another process changed the users (the change feed said so): read them before the next use."""
        self._read_at = None

    async def fresh(self) -> dict[str, str]:
        """User -> hash, read again when older than POLL_SECONDS or when told of a change."""
        if self._due():
            async with held(self._lock):
                if self._due():  # not read meanwhile by whoever held the lock
                    await self._read()
        return self._entries

    async def reread(self) -> dict[str, str]:
        """User -> hash, from a read begun after this call (one already begun may predate a change)."""
        asked = self._begun
        async with held(self._lock):
            if self._begun == asked:
                await self._read()
        return self._entries

    def _due(self) -> bool:
        return self._read_at is None or self._seconds() - self._read_at >= POLL_SECONDS

    async def _read(self) -> None:
        self._begun += 1
        self._read_at = self._seconds()
        self.reads += 1
        found = await self._storage.read_versioned(KEY)
        if found is None:
            self._entries, self._version = {}, None
        elif found[1] != self._version:
            self._entries, self._version = parse_htpasswd(found[0].decode("utf-8", "replace")), found[1]

    async def _entries_now(self) -> dict[str, str]:
        """User -> hash as stored now (the caller holds _lock)."""
        await self._read()
        return self._entries

    async def _change(self, change: Callable[[dict[str, str]], dict[str, str] | None]) -> bool:
        async with held(self._lock):
            return await self._swap(change)

    async def _swap(self, change: Callable[[dict[str, str]], dict[str, str] | None]) -> bool:
        """Compare-and-swap ``change`` into the object (the caller holds _lock); whether it wrote."""
        for _attempt in range(MAX_ATTEMPTS):
            self._begun += 1
            found = await self._storage.read_versioned(KEY)
            text, version = (found[0].decode("utf-8", "replace"), found[1]) if found is not None else ("", None)
            entries = parse_htpasswd(text)
            self._read_at, self._entries, self._version = self._seconds(), entries, version
            wanted = change(dict(entries))
            if wanted is None:
                return False
            for user in sorted(set(entries) | set(wanted)):
                if entries.get(user) != wanted.get(user):
                    text = with_entry(text, user, wanted.get(user))
            if await self._storage.replace(KEY, text.encode("utf-8"), version):
                # What was just written; its version is read at the next poll.
                self._entries, self._version = parse_htpasswd(text), None
                if self.announce is not None:
                    await self.announce(NEWS)
                return True
        raise Conflict("the users changed too often at once: try again")

    async def adopt_local_file(self, path: str) -> Adoption | None:
        """Move the users of the local htpasswd file ``path`` into the store, then rename the file.

        None when there is no such file (moved before, or never made). A user the store
        has already is kept as the store has them. Safe to run in several processes at
        once: merging is idempotent, and only the one whose rename succeeds reports it.
        """
        async with held(self._lock):
            try:
                with open(path, encoding="utf-8") as file:
                    local = parse_htpasswd(file.read())
            except FileNotFoundError:
                return None
            here = await self._entries_now()
            await self._swap(merging(local, []))
            kept = [user for user in local if user in here and here[user] != local[user]]
            renamed = path + ADOPTED_SUFFIX
            try:
                os.rename(path, renamed)
            except FileNotFoundError:
                return None  # another process moved it at the same time, and says so
            return Adoption(path, renamed, len(local), len(kept))


def user_table(settings: Any, storage: Storage, seconds: Callable[[], float], run_in_thread: RunInThread) -> UserTable:
    """Where the users are: NOPARD_HTPASSWD's local file when it is set, else the store."""
    if settings.htpasswd:
        return HtpasswdFile(settings.htpasswd, run_in_thread)
    return StoredUsers(storage, seconds, run_in_thread)


def local_file_to_adopt(settings: Any) -> str | None:
    """The local htpasswd file to move into the store: ``<registry_path>/htpasswd`` unless NOPARD_HTPASSWD is set."""
    return None if settings.htpasswd else os.path.join(settings.registry_path, "htpasswd")


class UserAdoption(Service):
    """At start, moves an older version's local htpasswd file into the store (once; logged)."""

    def __init__(self, users: UserTable, path: str | None, log: Logger) -> None:
        self._users = users
        self._path = path
        self._log = log

    def startService(self) -> None:
        super().startService()
        if not isinstance(self._users, StoredUsers) or self._path is None:
            return
        # Holds the users' lock from its first step: no check reads the store before the move.
        moving = Deferred.fromCoroutine(self._users.adopt_local_file(self._path))
        moving.addCallbacks(self._moved, lambda failure: self._log.failure(
            "could not move the users of {path} into the store", failure, path=self._path))

    def _moved(self, adoption: Adoption | None) -> None:
        if adoption is not None:
            self._log.info("{line}", line=adoption.line(), event="users-moved", path=adoption.path,
                           renamed=adoption.renamed, users=adoption.users, kept=adoption.kept)
