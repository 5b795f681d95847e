"""Users with bcrypt passwords in Apache's htpasswd format, and the checks of their passwords.

Lines made by ``htpasswd -B`` work; ``{SHA}`` entries are read too. The users are
kept in the store (nopard/auth/stored_users.py) or, with NOPARD_HTPASSWD, in a local
file kept by hand (``HtpasswdFile`` here). bcrypt runs through ``run_in_thread``,
never on the reactor thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import bcrypt
from twisted.internet.defer import DeferredLock

from nopard.domain.errors import Conflict, InvalidInput

RunInThread = Callable[..., Awaitable[Any]]
BCRYPT_ROUNDS = 10
_VERIFIED_CACHE_SIZE = 1024
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_user_name(name: Any) -> str:
    """Return ``name`` if it can be a user name, else raise InvalidInput."""
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise InvalidInput(
            "invalid user name: use letters, digits, '.', '_' or '-' (at most 64 characters)"
        )
    return name


def parse_htpasswd(text: str) -> dict[str, str]:
    """Map user name to password hash; blank lines and comments are skipped."""
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, hashed = line.partition(":")
        entries[user] = hashed.split(":", 1)[0]
    return entries


def hash_password(password: str) -> str:
    """A bcrypt hash in the ``$2y$`` form ``htpasswd -B`` writes."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    return "$2y$" + hashed[4:]


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches an htpasswd hash (bcrypt or {SHA})."""
    if hashed.startswith(("$2y$", "$2a$", "$2b$")):
        try:
            return bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
        except ValueError:
            return False
    if hashed.startswith("{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
        return hmac.compare_digest(digest, hashed[5:])
    return False


class UserTable:
    """Users and their password hashes, wherever they are kept; the checks every kind shares.

    Subclasses say how the entries are read (``fresh``: as they are now, read again
    when due; ``reread``: read again at once) and changed (``_change``).
    ``users()`` and ``in`` answer from what was last read.
    """

    # Tells the other processes of a change (the change feed's announce, when there is one).
    announce: Callable[[str], Awaitable[None]] | None = None

    def __init__(self, run_in_thread: RunInThread) -> None:
        self._run = run_in_thread
        self._entries: dict[str, str] = {}
        # Credentials already checked, so Basic auth on every request does not
        # cost a bcrypt each; keyed by an HMAC under a per-process secret, and
        # by the stored hash, so a password change invalidates the entry.
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._secret = secrets.token_bytes(32)

    async def fresh(self) -> dict[str, str]:
        """User -> hash, as kept now (read again when it may have changed)."""
        raise NotImplementedError

    async def reread(self) -> dict[str, str]:
        """User -> hash, read again now: before an answer that would refuse someone."""
        return await self.fresh()

    async def _change(self, change: Callable[[dict[str, str]], dict[str, str] | None]) -> bool:
        """Apply ``change`` (current entries -> new entries, None: no change) atomically; whether it wrote."""
        raise NotImplementedError

    def changed(self) -> None:
        """Another process changed the users: read them again before the next use."""

    def where(self) -> str:
        """Where the users are kept, for messages."""
        raise NotImplementedError

    def users(self) -> list[str]:
        """Every user name, as last read."""
        return sorted(self._entries)

    def __contains__(self, user: str) -> bool:
        return user in self._entries

    async def known(self, user: str) -> bool:
        """Whether ``user`` exists, reading again before saying no."""
        return user in await self.fresh() or user in await self.reread()

    async def check(self, user: str, password: str) -> bool:
        """Whether ``user`` exists and ``password`` is theirs (read again before saying no)."""
        before = (await self.fresh()).get(user)
        if await self._matches(before, user, password):
            return True
        after = (await self.reread()).get(user)
        # Only a hash that changed meanwhile is worth another bcrypt.
        return after is not None and after != before and await self._matches(after, user, password)

    async def _matches(self, hashed: str | None, user: str, password: str) -> bool:
        if hashed is None:
            # Spend the same time as a real check, so timing tells no names.
            await self._run(verify_password, password, _DUMMY_HASH)
            return False
        fingerprint = hmac.digest(self._secret, f"{user}\0{password}\0{hashed}".encode(), "sha256")
        if fingerprint in self._verified:
            self._verified.move_to_end(fingerprint)
            return True
        if not await self._run(verify_password, password, hashed):
            return False
        self._verified[fingerprint] = None
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return True

    async def add(self, user: str, password: str, max_users: int | None = None) -> None:
        """Add ``user``; Conflict if they exist or ``max_users`` would be exceeded."""
        validate_user_name(user)
        await self.add_hashed(user, await self._run(hash_password, password), max_users)

    async def add_hashed(self, user: str, hashed: str, max_users: int | None = None) -> None:
        """Add ``user`` with a hash already made; Conflict as ``add``."""

        def added(entries: dict[str, str]) -> dict[str, str]:
            if user in entries:
                raise Conflict(f"user {user} already exists")
            if max_users is not None and len(entries) >= max_users:
                raise Conflict("registration is closed")
            return {**entries, user: hashed}

        await self._change(added)

    async def merge(self, entries: dict[str, str]) -> list[str]:
        """Add every user of ``entries`` not here yet (a user here is kept as they are); those added."""
        added: list[str] = []
        await self._change(merging(entries, added))
        return added

    async def set_hash(self, user: str, hashed: str | None) -> bool:
        """Set ``user``'s hash (None: remove them); False when that changes nothing."""

        def replaced(entries: dict[str, str]) -> dict[str, str] | None:
            if entries.get(user) == hashed:
                return None
            kept = dict(entries)
            if hashed is None:
                kept.pop(user)
            else:
                kept[user] = hashed
            return kept

        return await self._change(replaced)


def merging(entries: dict[str, str], added: list[str]) -> Callable[[dict[str, str]], dict[str, str] | None]:
    """A change adding the users of ``entries`` missing from the current ones, naming them in ``added``."""

    def merged(current: dict[str, str]) -> dict[str, str] | None:
        added[:] = [user for user in entries if user not in current]
        return {**current, **{user: entries[user] for user in added}} if added else None

    return merged


class HtpasswdFile(UserTable):
    """The users of the registry in a local htpasswd file kept by hand (NOPARD_HTPASSWD).

    The file is re-read when it changes on disk, so an admin's edit applies at once, and
    is rewritten atomically, every other line (comments) kept.
    """

    def __init__(self, path: str, run_in_thread: RunInThread) -> None:
        super().__init__(run_in_thread)
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._write_lock = DeferredLock()

    def where(self) -> str:
        """The file's path."""
        return self.path

    def _reload(self) -> dict[str, str]:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return self._entries
        stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
        if stamp != self._stamp:
            with open(self.path, encoding="utf-8") as file:
                self._entries = parse_htpasswd(file.read())
            self._stamp = stamp
        return self._entries

    def users(self) -> list[str]:
        """Every user name, as the file is now."""
        return sorted(self._reload())

    def __contains__(self, user: str) -> bool:
        return user in self._reload()

    async def fresh(self) -> dict[str, str]:
        """User -> hash, as the file is now (a stat, and a read when it changed)."""
        return self._reload()

    async def _change(self, change: Callable[[dict[str, str]], dict[str, str] | None]) -> bool:
        async with held(self._write_lock):
            entries = self._reload()
            wanted = change(dict(entries))
            if wanted is None:
                return False
            for user in set(entries) | set(wanted):
                if entries.get(user) != wanted.get(user):
                    await self._run(replace_entry, self.path, user, wanted.get(user))
            self._reload()
            return True


def replace_entry(path: str, user: str, hashed: str | None) -> bool:
    """Set ``user``'s hash in place (None: remove their line), keeping every other line; atomic.

    Returns False when that changes nothing.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        text = ""
    changed = with_entry(text, user, hashed)
    if changed == text:
        return False
    _write_atomically(path, changed)
    return True


def with_entry(text: str, user: str, hashed: str | None) -> str:
    """htpasswd ``text`` with ``user``'s hash set (None: their line removed), every other line kept."""
    lines = text.splitlines()
    entry = None if hashed is None else f"{user}:{hashed}"
    changed: list[str] = []
    for line in lines:
        if _line_user(line) != user:
            changed.append(line)
        elif entry is not None:
            changed.append(entry)
            entry = None
    if entry is not None:
        changed.append(entry)
    if changed == lines:
        return text
    return "".join(line + "\n" for line in changed)


def _line_user(line: str) -> str | None:
    line = line.strip()
    if not line or line.startswith("#") or ":" not in line:
        return None
    return line.partition(":")[0]


def _write_atomically(path: str, content: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".htpasswd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class held:
    """``async with`` for a DeferredLock."""

    def __init__(self, lock: DeferredLock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


_DUMMY_HASH = "$2y$10$F7KkHVepBhANOlSfqWLLbuZQwNYt/eutjOfPdWdXZ78YZyOftz9pu"  # only to spend time on
