"""The filesystem backend: the storage contract, plus what only files can show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from nopard.cli.maintenance import collect, scan
from nopard.storage import InvalidKey
from nopard.storage.fs import LOCK_DIRECTORY, FilesystemStorage
from tests.unit.route_harness import run_now
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


@pytest_twisted.ensureDeferred
async def test_replace_lock_file_is_the_backends_own(storage: FilesystemStorage) -> None:
    """replace() keeps its lock files under .locks/: never listed, left alone by fsck and gc."""
    await storage.replace("packages/a/package.json", b'{"name":"a","versions":{}}', None)
    _data, version = await storage.read_versioned("packages/a/package.json")
    assert await storage.replace("packages/a/package.json", b'{"name":"a","versions":{}}', "stale") is False
    assert await storage.replace("packages/a/package.json", b'{"name":"a","versions":{"1":{}}}', version) is True
    directory = Path(storage.root) / "packages" / "a"
    assert sorted(os.listdir(directory)) == ["package.json"]
    locks = Path(storage.root) / LOCK_DIRECTORY
    assert [p.name for p in locks.iterdir()] == [Path(storage.lock_path("packages/a/package.json")).name]
    assert await storage.list("") == ["packages/a/package.json"]
    report = await scan(storage, now=time.time() + 10 ** 6)
    assert report.findings == []
    assert await collect(storage, report) == []
    assert locks.exists() and len(list(locks.iterdir())) == 1


APPENDER = textwrap.dedent("""
    import json, os, sys, time
    from nopard.cli.maintenance import open_storage, run_now

    root, tag, go = sys.argv[1], sys.argv[2], sys.argv[3]
    storage = open_storage(root)
    while not os.path.exists(go):  # start together with the other process
        time.sleep(0.001)
    retries = 0
    for n in range(20):
        while True:
            current = run_now(storage.read_versioned("shared/list.json"))
            items, version = ([], None) if current is None else (json.loads(current[0]), current[1])
            if run_now(storage.replace("shared/list.json", json.dumps(items + [f"{tag}-{n}"]).encode(), version)):
                break
            retries += 1
    print(retries)
""")


def test_two_processes_lose_no_update(tmp_path: Path) -> None:
    """Two OS processes appending 20 items each to one document through read/replace retries: all 40 stay."""
    root, go = tmp_path / "store", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    processes = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(root), tag, str(go)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    go.touch()
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    items = json.loads((root / "shared" / "list.json").read_bytes())
    assert sorted(items) == sorted(f"{tag}-{n}" for tag in ("a", "b") for n in range(20))
    assert sorted(os.listdir(root / "shared")) == ["list.json"]


def test_relative_url_names_the_keys_file_quoted_and_inside_the_root(tmp_path: Path) -> None:
    """The URL nginx is sent to is the key's file under the root, percent-quoted except for ``@``
    and ``+``, so no tarball of a valid npm name needs unquoting (deploy/nginx/nopard.conf's map
    relies on it); a key that would leave the root has none."""
    store = FilesystemStorage(str(tmp_path), run_now)
    key = "packages/@acme/lib/tarballs/lib-1.0.0+build.tgz"
    url = store.relative_url(key)
    assert url == "packages/@acme/lib/tarballs/lib-1.0.0+build.tgz"
    assert os.path.join(str(tmp_path), unquote(url)) == store.path_of(key)
    for bad in ("../etc/passwd", "packages/../../x", "/etc/passwd", "packages/.tmp-x"):
        with pytest.raises(InvalidKey):
            store.relative_url(bad)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
@pytest_twisted.ensureDeferred
async def test_tarballs_get_the_umask_mode_and_other_files_stay_private(
        tmp_path: Path, umask: int, mode: int) -> None:
    """Tarballs written, replaced or linked in are 0666 less the umask (0640 under the systemd
    unit's 0027), not mkstemp's 0600, so nginx in nopard's group can send them; user and token
    records, documents and settings stay 0600."""
    previous = os.umask(umask)
    try:
        store = FilesystemStorage(str(tmp_path / "store"), run_now)
    finally:
        os.umask(previous)
    await store.create("packages/a/tarballs/a-1.0.0.tgz", b"tgz")
    await store.replace("packages/b/tarballs/b-1.0.0.tgz", b"tgz", None)
    spool = tmp_path / "spool"
    spool.write_bytes(b"tgz")
    spool.chmod(0o600)
    await store.create_from_file("packages/c/upstream/tarballs/c-1.0.0.tgz", str(spool))
    private = ("users/alice.json", f"tokens/{'a' * 64}.json", "settings/overrides.json", "packages/a/package.json")
    for key in private:
        await store.write(key, b"{}")
    for key in ("packages/a/tarballs/a-1.0.0.tgz", "packages/b/tarballs/b-1.0.0.tgz",
                "packages/c/upstream/tarballs/c-1.0.0.tgz"):
        assert oct(os.stat(store.path_of(key)).st_mode & 0o777) == oct(mode), key
    for key in private:
        assert oct(os.stat(store.path_of(key)).st_mode & 0o777) == "0o600", key


@pytest_twisted.ensureDeferred
async def test_a_missing_key_is_answered_without_a_thread_hop(tmp_path: Path) -> None:
    """read, read_versioned, open and exists of a key not stored (or a directory, which no key
    is) answer from a stat made by the caller; an object that is there is read in the pool."""
    hops: list[str] = []

    def counted(function, *args):
        hops.append(function.__name__)
        return run_now(function, *args)

    storage = FilesystemStorage(str(tmp_path / "store"), counted)
    os.makedirs(Path(storage.root) / "k" / "directory")
    for key in ("k/missing", "k/directory", "no/such/folder"):
        assert await storage.read(key) is None and await storage.read_versioned(key) is None
        assert await storage.open(key) is None and not await storage.exists(key)
    assert hops == []
    await storage.write("k/there", b"bytes")
    assert await storage.exists("k/there") and await storage.read("k/there") == b"bytes"
    assert (await storage.read_versioned("k/there"))[0] == b"bytes"
    opened = await storage.open("k/there")
    assert opened is not None and opened.size == 5
    opened.close()
    assert hops == ["_write_file", "_read_file", "_read_versioned", "_open_file"]
