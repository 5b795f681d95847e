"""The filesystem storage backend: one file per key under a root directory.

Writes go to a temporary file in the target's directory (its name starts with
a dot, which no key can), are fsynced, then renamed (replace) or hard-linked
(create-if-absent) into place, and the directory is fsynced. A crash leaves at
worst a ``.tmp-*`` file, never half an object.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Awaitable, Callable, BinaryIO

from twisted.internet.interfaces import IConsumer
from twisted.protocols.basic import FileSender

from nopard.storage import InvalidKey, check_key, check_prefix

RunInThread = Callable[..., Awaitable[Any]]


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

    def path_of(self, key: str) -> str:
        """The file that holds ``key``; never outside the root."""
        path = os.path.join(self.root, *check_key(key).split("/"))
        if os.path.commonpath([self.root, path]) != self.root:
            raise InvalidKey(f"invalid storage key: {key!r}")
        return path

    async def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        return await self._run(_read_file, self.path_of(key))

    async def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there atomically."""
        await self._run(_write_file, self.path_of(key), data, True)

    async def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` only if nothing is there; False if something was."""
        return await self._run(_write_file, self.path_of(key), data, False)

    async def create_from_file(self, key: str, path: str) -> bool:
        """Store local file ``path`` at ``key`` only if nothing is there (hard link or copy)."""
        return await self._run(_create_from_file, self.path_of(key), path)

    async def delete(self, key: str) -> bool:
        """Remove the object; False if there was none."""
        return await self._run(_delete_file, self.path_of(key))

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        return await self._run(os.path.isfile, self.path_of(key))

    async def open(self, key: str) -> FileBlob | None:
        """Open the object for streaming, or None when there is none."""
        return await self._run(_open_file, self.path_of(key))

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        check_prefix(prefix)
        return await self._run(_list_files, self.root, prefix)


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


def _write_file(path: str, data: bytes, replace: bool) -> bool:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
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


def _create_from_file(target: str, source: str) -> bool:
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    with open(source, "rb") as file:
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


def _list_files(root: str, prefix: str) -> list[str]:
    top = os.path.join(root, *prefix.strip("/").split("/")) if prefix else root
    keys = []
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        relative = os.path.relpath(directory, root)
        base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        keys.extend(base + name for name in files if not name.startswith("."))
    return sorted(keys)
