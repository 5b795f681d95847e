"""The filesystem storage backend: one file per key under a root directory.

Writes go to a temporary file in the target's directory (its name starts with
a dot, which no key can), are fsynced, then renamed (replace) or hard-linked
(create-if-absent) into place, and the directory is fsynced. A crash leaves at
worst a ``.tmp-*`` file, never half an object.

``replace`` (compare-and-swap) must hold across processes sharing the
directory, so its compare and its rename happen under an exclusive ``flock``
on a lock file of the target's directory, kept under ``<root>/.locks/`` (one
per directory, left in place: removing a lock file someone may be waiting on
would let two holders in). The version ``read_versioned`` gives is a hash of the content, so it
needs no bookkeeping beside the object and no clock or inode can fool it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from stat import S_ISREG
from typing import Any, BinaryIO
from urllib.parse import quote

from twisted.internet.interfaces import IConsumer
from twisted.protocols.basic import FileSender

from nopard.storage import QUARANTINE, InvalidKey, Leftover, check_key, check_prefix, keys, leftover_kind

RunInThread = Callable[..., Awaitable[Any]]

# Stored files other than tarballs: for nopard's user alone.
PRIVATE_MODE = 0o600
TARBALL_KINDS = frozenset({keys.LOCAL_TARBALL, keys.MIRRORED_TARBALL})

# A dot name, like the temporary files: no key can address it, list() skips it,
# and fsck/gc leave it alone (it holds neither temporary files nor tarballs).
LOCK_DIRECTORY = ".locks"


class FileBlob:
    """An open stored file, streamed to a consumer with flow control."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self.size = size

    async def send_to(self, consumer: IConsumer) -> None:
        """Stream the file into ``consumer`` (a request, say), then close it."""
        try:
            await FileSender().beginFileTransfer(self._file, consumer)
        finally:
            self._file.close()

    def close(self) -> None:
        """Release the file without sending it."""
        self._file.close()


class FilesystemStorage:
    """Storage in a directory; blocking file work runs through ``run_in_thread``."""

    def __init__(self, root: str, run_in_thread: RunInThread) -> None:
        self.root = os.path.abspath(root)
        self._run = run_in_thread
        # Tarballs get the mode the umask gives (0640 under the systemd unit's UMask=0027), so
        # nginx in nopard's group can send them (NOPARD_ACCEL_REDIRECT); everything else (user
        # and token records, settings) keeps mkstemp's 0600, readable by nopard alone.
        self.tarball_mode = 0o666 & ~process_umask()

    def path_of(self, key: str) -> str:
        """The file that holds ``key``; never outside the root."""
        return _file_of(self.root, key)

    def mode_of(self, key: str) -> int:
        """The mode of ``key``'s file: tarballs readable by the group the umask allows, the rest 0600."""
        return self.tarball_mode if keys.key_kind(key) in TARBALL_KINDS else PRIVATE_MODE

    def relative_url(self, key: str) -> str:
        """``key``'s file as a URL path relative to the root, percent-quoted (for nginx's
        X-Accel-Redirect): derived from ``path_of``, so it names the same file and never leaves
        the root; nginx unquotes it and maps it onto the ``alias`` of the root. ``@`` (scopes) and
        ``+`` (build metadata) stay as they are, as URL paths allow: then no file a valid npm name
        makes is quoted at all, which the shipped nginx conf relies on (its ``map`` sends a quoted
        path back to nopard, as nginx's try_files does not unquote)."""
        relative = os.path.relpath(self.path_of(key), self.root)
        return "/".join(quote(part, safe="@+") for part in relative.split(os.sep))

    async def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        path = self.path_of(key)
        if _missing(path):
            return None
        return await self._run(_read_file, path)

    async def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there atomically."""
        await self._run(_write_file, self.path_of(key), data, True, self.mode_of(key))

    async def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` only if nothing is there; False if something was."""
        return await self._run(_write_file, self.path_of(key), data, False, self.mode_of(key))

    async def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and their hash as its version, or None when there is none."""
        path = self.path_of(key)
        if _missing(path):
            return None
        return await self._run(_read_versioned, path)

    async def replace(self, key: str, data: bytes, version: str | None) -> bool:
        """Store ``data`` at ``key`` only if the stored object still has ``version`` (None: only if absent).

        Atomic across processes: the compare and the rename run under the
        directory's exclusive lock; False, and nothing stored, if the object changed.
        """
        return await self._run(_replace_file, self.path_of(key), data, version, self.lock_path(key),
                               self.mode_of(key))

    def lock_path(self, key: str) -> str:
        """The lock file of ``key``'s directory (shared by every object in it)."""
        directory = key.rsplit("/", 1)[0] if "/" in key else ""
        return os.path.join(self.root, LOCK_DIRECTORY, hashlib.sha1(directory.encode()).hexdigest() + ".lock")

    async def create_from_file(self, key: str, path: str) -> bool:
        """Store local file ``path`` at ``key`` only if nothing is there (hard link or copy)."""
        return await self._run(_create_from_file, self.path_of(key), path, self.mode_of(key))

    async def delete(self, key: str) -> bool:
        """Remove the object; False if there was none."""
        return await self._run(_delete_file, self.path_of(key))

    async def delete_versioned(self, key: str, version: str) -> bool:
        """Remove the object only if it still has ``version``: the compare and the unlink under the lock."""
        return await self._run(_delete_versioned, self.path_of(key), version, self.lock_path(key))

    async def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size in bytes."""
        check_prefix(prefix)
        return await self._run(_sizes, self.root, prefix)

    async def usage(self) -> tuple[int, int]:
        """(bytes, files) under the root, from a walk in the thread pool."""
        return await self._run(directory_size, self.root)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``: one stat, made here (see ``_missing``)."""
        return not _missing(self.path_of(key))

    # For nopard-admin fsck and gc (storage.Maintained) ------------------------

    async def stats(self, prefix: str) -> dict[str, tuple[int, float]]:
        """Every key under ``prefix`` with (size, modification time) from its file."""
        check_prefix(prefix)
        return await self._run(_stats, self.root, prefix)

    async def leftovers(self) -> list[Leftover]:
        """Old ``.tmp-*``/``.fetch-*``/``.htpasswd-*`` files anywhere below the root, and the quarantine."""
        return await self._run(_leftovers, self.root)

    async def set_aside(self, key: str) -> str | None:
        """Rename ``key``'s file into ``.quarantine/`` (one atomic rename); where it went, None if gone."""
        return await self._run(_set_aside, self.root, self.path_of(key), key)

    async def remove_leftover(self, path: str) -> bool:
        """Unlink a temporary or quarantined file (and the quarantine's folders it empties)."""
        return await self._run(_remove_leftover, self.root, path)

    async def open(self, key: str) -> FileBlob | None:
        """Open the object for streaming, or None when there is none."""
        path = self.path_of(key)
        if _missing(path):
            return None
        return await self._run(_open_file, path)

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        check_prefix(prefix)
        return await self._run(_list_files, self.root, prefix)


@lru_cache(maxsize=16384)  # every store call asks it, often for the same few keys (the feed, hot packages)
def _file_of(root: str, key: str) -> str:
    """The file of ``key`` under ``root``, checked to stay inside it (a bad key raises, uncached)."""
    path = os.path.join(root, *check_key(key).split("/"))
    if os.path.commonpath([root, path]) != root:
        raise InvalidKey(f"invalid storage key: {key!r}")
    return path


def _missing(path: str) -> bool:
    """Whether no object's file is at ``path``, from one stat on the calling thread.

    A request for something never stored asks several keys that are not there (a
    cold tarball: its local copy, the local document, the mirrored copy and
    document, the firewall's blocks); a thread-pool hop each woke two threads
    for an answer a stat gives in microseconds, and on a busy machine those
    wake-ups preempted the very client being served. A stat is metadata only,
    as cheap as the stats the warm path makes on the reactor (storage/index.py);
    reading a file that is there still goes to the pool. An error other than
    "not there" says "maybe there", so the pool's read meets (and raises) it.
    """
    try:
        return not S_ISREG(os.stat(path).st_mode)  # a directory is no object, as _read_file says
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _open_file(path: str) -> FileBlob | None:
    try:
        file = open(path, "rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return FileBlob(file, os.fstat(file.fileno()).st_size)


def _read_versioned(path: str) -> tuple[bytes, str] | None:
    data = _read_file(path)
    return None if data is None else (data, _version_of(data))


def _version_of(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _has_version(path: str, version: str | None) -> bool:
    """Whether the object at ``path`` has ``version`` (None: whether there is no object)."""
    data = _read_file(path)
    if version is None or data is None:
        return data is None and version is None
    return _version_of(data) == version


def process_umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: set and restore, once, at start-up
    os.umask(mask)
    return mask


def _temporary_copy(directory: str, data: bytes, mode: int) -> str:
    """A fsynced ``.tmp-*`` file holding ``data`` in ``directory``, ready to be renamed into place."""
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _write_file(path: str, data: bytes, replace: bool, mode: int) -> bool:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = _temporary_copy(directory, data, mode)
    try:
        if replace:
            os.replace(temporary, path)
        else:
            # link() fails when the target exists: an atomic create-if-absent.
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return True


def _replace_file(path: str, data: bytes, version: str | None, lock_path: str, mode: int) -> bool:
    # A first look without the lock: an object already changed (or gone) is
    # refused before writing and fsyncing a temporary file for nothing. Saying
    # False on what it saw is correct even if the object changes right after.
    if not _has_version(path, version):
        return False
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    # The copy is written and fsynced before taking the lock, so the lock is
    # held only for the compare and the rename, never for a disk flush.
    temporary = _temporary_copy(directory, data, mode)
    try:
        with _lock(lock_path):
            replaced = _has_version(path, version)
            if replaced:
                os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    if replaced:
        _fsync_directory(directory)
    return replaced


@contextmanager
def _lock(path: str) -> Iterator[None]:
    """Hold the exclusive lock of file ``path`` (against other threads and processes alike).

    flock locks belong to an open file description, so each holder opens the
    file itself; closing it releases the lock, also when a process dies.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create_from_file(target: str, source: str, mode: int) -> bool:
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    with open(source, "rb") as file:
        os.fchmod(file.fileno(), mode)  # the link is the stored file: it gets the store's mode
        os.fsync(file.fileno())
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:
        # Another filesystem (or no hard links): copy into a temp file beside
        # the target, then link that into place.
        fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as out, open(source, "rb") as file:
                shutil.copyfileobj(file, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, target)
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
    _fsync_directory(directory)
    return True


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete_file(path: str) -> bool:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _delete_versioned(path: str, version: str, lock_path: str) -> bool:
    with _lock(lock_path):  # the lock replace() takes: no swap lands between compare and unlink
        if not _has_version(path, version):
            return False
        deleted = _delete_file(path)
    if deleted:
        _fsync_directory(os.path.dirname(path))
    return deleted


def _sizes(root: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for key in _list_files(root, prefix):
        try:
            sizes[key] = os.path.getsize(os.path.join(root, *key.split("/")))
        except OSError:
            continue  # removed since the listing
    return sizes


def _stats(root: str, prefix: str) -> dict[str, tuple[int, float]]:
    stats = {}
    for key in _list_files(root, prefix):
        try:
            stat = os.stat(os.path.join(root, *key.split("/")))
        except OSError:
            continue  # removed since the listing
        stats[key] = (stat.st_size, stat.st_mtime)
    return stats


def _leftovers(root: str) -> list[Leftover]:
    found = []
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root).replace(os.sep, "/")
        base = "" if relative == "." else relative + "/"
        subdirectories[:] = [d for d in subdirectories if base or d != LOCK_DIRECTORY]
        for name in files:
            path = base + name
            kind = leftover_kind(path)
            if kind is None:
                continue
            try:
                stat = os.stat(os.path.join(directory, name))
            except OSError:
                continue  # finished or removed meanwhile
            found.append(Leftover(kind, path, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda leftover: leftover.path)


def _set_aside(root: str, path: str, key: str) -> str | None:
    target = f"{QUARANTINE}/{key}"
    suffix = 0
    while os.path.exists(os.path.join(root, *(target if not suffix else f"{target}.{suffix}").split("/"))):
        suffix += 1
    target = target if not suffix else f"{target}.{suffix}"
    file = os.path.join(root, *target.split("/"))
    os.makedirs(os.path.dirname(file), exist_ok=True)
    try:
        os.rename(path, file)
    except FileNotFoundError:
        return None
    return target


def _remove_leftover(root: str, path: str) -> bool:
    kind = leftover_kind(path)
    file = os.path.join(root, *path.split("/"))
    if kind is None or os.path.commonpath([root, file]) != root:
        raise InvalidKey(f"not a temporary or quarantined file: {path!r}")
    if not _delete_file(file):
        return False
    top = os.path.join(root, QUARANTINE)
    directory = os.path.dirname(file)
    while kind == "quarantined" and os.path.commonpath([top, directory]) == top:
        try:
            os.rmdir(directory)  # only when empty: a quarantine emptied by gc is gone
        except OSError:
            break
        directory = os.path.dirname(directory)
    return True


def _list_files(root: str, prefix: str) -> list[str]:
    top = os.path.join(root, *prefix.strip("/").split("/")) if prefix else root
    keys: list[str] = []
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        relative = os.path.relpath(directory, root)
        base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        keys.extend(base + name for name in files if not name.startswith("."))
    return sorted(keys)


def directory_size(root: str) -> tuple[int, int]:
    """(bytes, files) under ``root``, not following symlinks."""
    total, count = 0, 0
    pending = [root]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    count += 1
            except OSError:
                continue  # removed while we walked
    return total, count
