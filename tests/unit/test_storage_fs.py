"""The filesystem backend: the storage contract, plus what only files can show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from nopard.storage.fs import FilesystemStorage
from tests.unit.storage_contract import StorageContract


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(str(tmp_path / "store"), deferToThread)


class TestFilesystemContract(StorageContract):
    """The filesystem backend passes the storage contract."""


@pytest_twisted.ensureDeferred
async def test_layout_is_one_file_per_key(storage: FilesystemStorage) -> None:
    """A key is a path under the root, as the README documents."""
    await storage.write("packages/@s/n/package.json", b"{}")
    assert (Path(storage.root) / "packages" / "@s" / "n" / "package.json").read_bytes() == b"{}"


@pytest_twisted.ensureDeferred
async def test_no_temporary_files_remain(storage: FilesystemStorage) -> None:
    """Writes and refused creates leave no temporary file behind."""
    await storage.write("k/a", b"1")
    await storage.write("k/a", b"2")
    await storage.create("k/a", b"3")
    assert sorted(os.listdir(Path(storage.root) / "k")) == ["a"]


@pytest_twisted.ensureDeferred
async def test_failed_write_leaves_old_object_and_no_temp(storage: FilesystemStorage, monkeypatch) -> None:
    """A write that fails before its rename leaves the old object whole and no temp file."""
    await storage.write("k/doc", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        await storage.write("k/doc", b"new")
    monkeypatch.undo()
    assert await storage.read("k/doc") == b"old"
    assert os.listdir(Path(storage.root) / "k") == ["doc"]


@pytest_twisted.ensureDeferred
async def test_listing_skips_leftover_temporary_files(storage: FilesystemStorage) -> None:
    """A crash's leftover .tmp-* file is never listed as a key."""
    await storage.write("k/doc", b"x")
    (Path(storage.root) / "k" / ".tmp-crashed").write_bytes(b"half")
    assert await storage.list("k/") == ["k/doc"]
