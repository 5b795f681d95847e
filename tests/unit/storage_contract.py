"""The contract every storage backend passes. A backend's test module subclasses
StorageContract and provides a ``storage`` fixture.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from nopard.storage import InvalidKey

HOSTILE_KEYS = [
    "", "..", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", ".tmp-x", "a/.hidden",
    "a\\b", "a\x00b", "a/b/", "x" * 2000, "a b", "é",
]


@implementer(IConsumer)
class CollectingConsumer:
    """Collects what a blob streams, honouring the producer protocol."""

    def __init__(self) -> None:
        self.data = b""
        self.producer = None

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer
        if not streaming:
            reactor.callLater(0, self._pull)

    def _pull(self) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()
            reactor.callLater(0, self._pull)

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data


class StorageContract:
    """Behaviour shared by every backend."""

    @pytest_twisted.ensureDeferred
    async def test_missing_key_reads_none(self, storage) -> None:
        """Reading, opening or checking a key never written gives None/False."""
        assert await storage.read("packages/none/package.json") is None
        assert await storage.open("packages/none/package.json") is None
        assert await storage.exists("packages/none/package.json") is False

    @pytest_twisted.ensureDeferred
    async def test_set_aside_quarantines_beside_the_keys(self, storage) -> None:
        """set_aside() (fsck) moves an object to .quarantine/<key>, out of every key's reach; a second
        copy gets a suffix; leftovers() lists both; remove_leftover() removes them, never a key."""
        key = "packages/a/tarballs/a-1.0.0.tgz"
        for data in (b"bad one", b"bad two"):
            await storage.write(key, data)
            assert (await storage.stats("packages/"))[key][0] == len(data)
        assert await storage.set_aside(key) == f".quarantine/{key}"
        await storage.write(key, b"bad two")
        assert await storage.set_aside(key) == f".quarantine/{key}.1"
        assert await storage.set_aside(key) is None
        assert await storage.read(key) is None and await storage.list("") == []
        aside = await storage.leftovers()
        assert [(x.kind, x.path, x.size) for x in aside] == [
            ("quarantined", f".quarantine/{key}", 7), ("quarantined", f".quarantine/{key}.1", 7)]
        await storage.write("packages/a/package.json", b"{}")
        with pytest.raises(InvalidKey):
            await storage.remove_leftover("packages/a/package.json")
        for leftover in aside:
            assert await storage.remove_leftover(leftover.path) is True
        assert await storage.remove_leftover(aside[0].path) is False
        assert await storage.leftovers() == [] and await storage.list("") == ["packages/a/package.json"]

    @pytest_twisted.ensureDeferred
    async def test_usage_counts_bytes_and_objects(self, storage) -> None:
        """usage() adds up what the store holds (for the store-size metric and the status page)."""
        assert await storage.usage() == (0, 0)
        await storage.write("packages/a/package.json", b"12345")
        await storage.create("packages/a/tarballs/a-1.0.0.tgz", b"1234567")
        assert await storage.usage() == (12, 2)

    @pytest_twisted.ensureDeferred
    async def test_sizes_of_keys_under_a_prefix(self, storage) -> None:
        """sizes() lists keys under a prefix with their sizes, as list() would, nothing outside it."""
        await storage.write("packages/a/tarballs/a-1.0.0.tgz", b"x" * 10)
        await storage.write("packages/a/tarballs/a-1.1.0.tgz", b"x" * 3)
        await storage.write("packages/ab/tarballs/ab-1.0.0.tgz", b"x")
        assert await storage.sizes("packages/a/tarballs/") == {
            "packages/a/tarballs/a-1.0.0.tgz": 10, "packages/a/tarballs/a-1.1.0.tgz": 3}
        assert await storage.sizes("packages/none/") == {}
        with pytest.raises(InvalidKey):
            await storage.sizes("../")

    @pytest_twisted.ensureDeferred
    async def test_write_then_read(self, storage) -> None:
        """What is written is read back byte for byte."""
        await storage.write("packages/a/package.json", b'{"name":"a"}')
        assert await storage.read("packages/a/package.json") == b'{"name":"a"}'
        assert await storage.exists("packages/a/package.json") is True

    @pytest_twisted.ensureDeferred
    async def test_write_replaces_whole_object(self, storage) -> None:
        """A second write replaces the first entirely, even when shorter."""
        await storage.write("k/doc", b"a long first version")
        await storage.write("k/doc", b"short")
        assert await storage.read("k/doc") == b"short"

    @pytest_twisted.ensureDeferred
    async def test_create_never_replaces(self, storage) -> None:
        """create() stores only where nothing is, and says whether it did."""
        assert await storage.create("k/tarball.tgz", b"first") is True
        assert await storage.create("k/tarball.tgz", b"second") is False
        assert await storage.read("k/tarball.tgz") == b"first"

    @pytest_twisted.ensureDeferred
    async def test_concurrent_creates_have_one_winner(self, storage) -> None:
        """Many concurrent create()s of one key: exactly one succeeds, its bytes stay."""
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(storage.create("k/race", b"%d" % n)) for n in range(10)]
        )
        assert results.count(True) == 1
        assert await storage.read("k/race") == b"%d" % results.index(True)

    @pytest_twisted.ensureDeferred
    async def test_create_from_file(self, storage, tmp_path) -> None:
        """create_from_file() stores a local file's bytes once, and never replaces them."""
        first, second = tmp_path / "first", tmp_path / "second"
        first.write_bytes(b"streamed tarball " * 1000)
        second.write_bytes(b"other")
        assert await storage.create_from_file("k/file.tgz", str(first)) is True
        assert await storage.create_from_file("k/file.tgz", str(second)) is False
        assert await storage.read("k/file.tgz") == b"streamed tarball " * 1000
        first.unlink()
        assert await storage.read("k/file.tgz") == b"streamed tarball " * 1000

    @pytest_twisted.ensureDeferred
    async def test_delete(self, storage) -> None:
        """delete() removes an object and says whether there was one."""
        await storage.write("k/gone", b"x")
        assert await storage.delete("k/gone") is True
        assert await storage.delete("k/gone") is False
        assert await storage.read("k/gone") is None

    @pytest_twisted.ensureDeferred
    async def test_list_by_prefix(self, storage) -> None:
        """list() gives every key under a prefix, sorted, and nothing outside it."""
        for key in ("packages/b/package.json", "packages/a/tarballs/a-1.0.0.tgz",
                    "packages/@s/n/package.json", "tokens/t.json"):
            await storage.write(key, b"x")
        assert await storage.list("packages/") == [
            "packages/@s/n/package.json", "packages/a/tarballs/a-1.0.0.tgz", "packages/b/package.json",
        ]
        assert await storage.list("packages/@s/") == ["packages/@s/n/package.json"]
        assert await storage.list("nothing/") == []

    @pytest_twisted.ensureDeferred
    async def test_open_streams_the_bytes(self, storage) -> None:
        """open() gives the exact size and streams every byte to a consumer."""
        data = bytes(range(256)) * 1000
        await storage.write("k/big.tgz", data)
        blob = await storage.open("k/big.tgz")
        assert blob.size == len(data)
        consumer = CollectingConsumer()
        await blob.send_to(consumer)
        assert consumer.data == data

    @pytest_twisted.ensureDeferred
    async def test_read_versioned_missing_key_is_none(self, storage) -> None:
        """read_versioned() of a key never written gives None."""
        assert await storage.read_versioned("packages/none/package.json") is None

    @pytest_twisted.ensureDeferred
    async def test_replace_with_the_version_read(self, storage) -> None:
        """replace() from the version just read stores the new bytes, which then have another version."""
        await storage.write("k/doc", b"first")
        data, version = await storage.read_versioned("k/doc")
        assert data == b"first"
        assert isinstance(version, str)
        assert await storage.replace("k/doc", b"second", version) is True
        data, newer = await storage.read_versioned("k/doc")
        assert data == b"second"
        assert newer != version
        assert await storage.read("k/doc") == b"second"

    @pytest_twisted.ensureDeferred
    async def test_replace_with_a_stale_version_is_refused(self, storage) -> None:
        """replace() from a version someone has since replaced says False and leaves their bytes."""
        await storage.write("k/doc", b"first")
        _data, stale = await storage.read_versioned("k/doc")
        assert await storage.replace("k/doc", b"theirs", stale) is True
        assert await storage.replace("k/doc", b"mine", stale) is False
        assert await storage.read("k/doc") == b"theirs"
        await storage.write("k/doc", b"written over")
        assert await storage.replace("k/doc", b"mine", stale) is False
        assert await storage.read("k/doc") == b"written over"

    @pytest_twisted.ensureDeferred
    async def test_replace_without_a_version_only_creates(self, storage) -> None:
        """replace(version=None) stores only where nothing is."""
        assert await storage.replace("k/new", b"first", None) is True
        assert await storage.replace("k/new", b"second", None) is False
        assert await storage.read("k/new") == b"first"

    @pytest_twisted.ensureDeferred
    async def test_replace_of_a_deleted_object_is_refused(self, storage) -> None:
        """replace() from a version of an object deleted since says False and stores nothing."""
        await storage.write("k/doc", b"first")
        _data, version = await storage.read_versioned("k/doc")
        assert await storage.delete("k/doc") is True
        assert await storage.replace("k/doc", b"second", version) is False
        assert await storage.read_versioned("k/doc") is None
        assert await storage.replace("k/never", b"x", version) is False
        assert await storage.read("k/never") is None

    @pytest_twisted.ensureDeferred
    async def test_delete_versioned_with_the_version_read(self, storage) -> None:
        """delete_versioned() from the version just read removes the object."""
        await storage.write("k/doc", b"mine")
        _data, version = await storage.read_versioned("k/doc")
        assert await storage.delete_versioned("k/doc", version) is True
        assert await storage.read("k/doc") is None

    @pytest_twisted.ensureDeferred
    async def test_delete_versioned_of_a_changed_object_is_refused(self, storage) -> None:
        """delete_versioned() from a version someone has since replaced says False and leaves their bytes."""
        await storage.write("k/doc", b"mine")
        _data, stale = await storage.read_versioned("k/doc")
        assert await storage.replace("k/doc", b"theirs", stale) is True
        assert await storage.delete_versioned("k/doc", stale) is False
        assert await storage.read("k/doc") == b"theirs"

    @pytest_twisted.ensureDeferred
    async def test_delete_versioned_of_a_missing_object_is_false(self, storage) -> None:
        """delete_versioned() of an object deleted since (or never stored) says False."""
        await storage.write("k/doc", b"mine")
        _data, version = await storage.read_versioned("k/doc")
        assert await storage.delete("k/doc") is True
        assert await storage.delete_versioned("k/doc", version) is False
        assert await storage.delete_versioned("k/never", version) is False

    @pytest_twisted.ensureDeferred
    async def test_concurrent_replaces_have_one_winner(self, storage) -> None:
        """Many concurrent replace()s from one version: exactly one succeeds, its bytes stay."""
        await storage.write("k/race", b"start")
        _data, version = await storage.read_versioned("k/race")
        results = await defer.gatherResults([
            defer.Deferred.fromCoroutine(storage.replace("k/race", b"%d" % n, version)) for n in range(10)
        ])
        assert results.count(True) == 1
        assert await storage.read("k/race") == b"%d" % results.index(True)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_read_merge_replace_loses_no_update(self, storage) -> None:
        """Concurrent writers each appending to one JSON list through read/replace retries: none is lost."""

        async def append(item: int) -> None:
            while True:
                current = await storage.read_versioned("k/list.json")
                items, version = ([], None) if current is None else (json.loads(current[0]), current[1])
                if await storage.replace("k/list.json", json.dumps(items + [item]).encode(), version):
                    return

        await defer.gatherResults([defer.Deferred.fromCoroutine(append(n)) for n in range(10)])
        assert sorted(json.loads(await storage.read("k/list.json"))) == list(range(10))

    @pytest.mark.parametrize("key", HOSTILE_KEYS)
    @pytest_twisted.ensureDeferred
    async def test_hostile_keys_are_refused(self, storage, key) -> None:
        """Keys that could leave the store or hit temporary files are refused by every operation."""
        for operation in (storage.read, storage.read_versioned, storage.exists, storage.open, storage.delete):
            with pytest.raises(InvalidKey):
                await operation(key)
        for operation in (storage.write, storage.create):
            with pytest.raises(InvalidKey):
                await operation(key, b"x")
        with pytest.raises(InvalidKey):
            await storage.create_from_file(key, "/dev/null")
        for version in (None, "v"):
            with pytest.raises(InvalidKey):
                await storage.replace(key, b"x", version)
        with pytest.raises(InvalidKey):
            await storage.delete_versioned(key, "v")

    @pytest.mark.parametrize("prefix", ["../", "a", "/", "a/../"])
    @pytest_twisted.ensureDeferred
    async def test_hostile_prefixes_are_refused(self, storage, prefix) -> None:
        """list() refuses prefixes that are not a key followed by '/'."""
        with pytest.raises(InvalidKey):
            await storage.list(prefix)
