"""An Apache-compatible htpasswd file of users with bcrypt passwords.

Lines made by ``htpasswd -B`` work; ``{SHA}`` entries are read too. The file
is re-read when it changes on disk, so an admin's edit applies at once, and is
rewritten atomically. bcrypt runs through ``run_in_thread``, never on the
reactor thread.
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


class HtpasswdFile:
    """The users of the registry, kept in an htpasswd file."""

    def __init__(self, path: str, run_in_thread: RunInThread) -> None:
        self.path = path
        self._run = run_in_thread
        self._entries: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._write_lock = DeferredLock()
        # Credentials already checked, so Basic auth on every request does not
        # cost a bcrypt each; keyed by an HMAC under a per-process secret, and
        # by the stored hash, so a password change invalidates the entry.
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._secret = secrets.token_bytes(32)

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

    async def check(self, user: str, password: str) -> bool:
        """Whether ``user`` exists and ``password`` is theirs."""
        hashed = self._reload().get(user)
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
        hashed = await self._run(hash_password, password)
        async with _held(self._write_lock):
            entries = self._reload()
            if user in entries:
                raise Conflict(f"user {user} already exists")
            if max_users is not None and len(entries) >= max_users:
                raise Conflict("registration is closed")
            await self._run(_append_atomically, self.path, f"{user}:{hashed}\n")
            self._reload()


def replace_entry(path: str, user: str, hashed: str | None) -> bool:
    """Set ``user``'s hash in place (None: remove their line), keeping every other line; atomic.

    For nopard-admin. Returns False when that changes nothing.
    """
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        lines = []
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
        return False
    _write_atomically(path, "".join(line + "\n" for line in changed))
    return True


def _line_user(line: str) -> str | None:
    line = line.strip()
    if not line or line.startswith("#") or ":" not in line:
        return None
    return line.partition(":")[0]


def _append_atomically(path: str, line: str) -> None:
    try:
        with open(path, encoding="utf-8") as file:
            content = file.read()
    except FileNotFoundError:
        content = ""
    if content and not content.endswith("\n"):
        content += "\n"
    _write_atomically(path, content + line)


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


class _held:
    """``async with`` for a DeferredLock."""

    def __init__(self, lock: DeferredLock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


_DUMMY_HASH = "$2y$10$F7KkHVepBhANOlSfqWLLbuZQwNYt/eutjOfPdWdXZ78YZyOftz9pu"  # only to spend time on
