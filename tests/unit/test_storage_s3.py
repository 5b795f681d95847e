"""The S3 backend against a real S3 API (moto's standalone server): the storage
contract, plus the object layout and streaming with bounded memory.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IConsumer
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from nopard.storage.s3 import S3Client, S3Storage, s3_client
from tests.s3_server import MotoServer
from tests.unit.storage_contract import StorageContract

BIG = 20 * 1024 * 1024


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the whole run."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; boto3 finds the server and credentials the standard way (AWS_* variables)."""
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    return moto_server.new_bucket()


# nopard's own s3_client, made once per endpoint: each new one loads botocore's models again
# (~0.5 s), which was most of every test's time here; the bucket is still new for each test.
_clients: dict[str, S3Client] = {}


def make_storage(bucket: str, prefix: str = "", **options: int) -> S3Storage:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    if endpoint not in _clients:
        _clients[endpoint] = s3_client(max_connections=16)
    return S3Storage(_clients[endpoint], bucket, prefix, deferToThread, **options)


@pytest.fixture
def storage(bucket: str) -> S3Storage:
    return make_storage(bucket, "registry")


class TestS3Contract(StorageContract):
    """The S3 backend passes the storage contract."""


class TestS3ContractWithoutPrefix(StorageContract):
    """... also with objects at the bucket's top level."""

    @pytest.fixture
    def storage(self, bucket: str) -> S3Storage:
        return make_storage(bucket, "")


@pytest_twisted.ensureDeferred
async def test_objects_live_under_the_prefix_only(bucket: str, moto_server: MotoServer) -> None:
    """Keys are object keys ``<prefix>/<key>``; listings are relative and ignore other prefixes."""
    storage = make_storage(bucket, "team/npm")
    other = make_storage(bucket, "team/npm-old")
    await storage.write("packages/@s/n/package.json", b"{}")
    await storage.create("tokens/t.json", b"{}")
    await other.write("packages/x/package.json", b"{}")
    objects = moto_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(item["Key"] for item in objects) == [
        "team/npm-old/packages/x/package.json",
        "team/npm/packages/@s/n/package.json",
        "team/npm/tokens/t.json",
    ]
    assert await storage.list("") == ["packages/@s/n/package.json", "tokens/t.json"]
    assert await storage.list("packages/") == ["packages/@s/n/package.json"]


@pytest_twisted.ensureDeferred
async def test_listing_follows_pagination(storage: S3Storage) -> None:
    """More keys than one ListObjectsV2 page (1000) are all listed, sorted."""
    from twisted.internet import defer

    keys = [f"many/k{n:04d}" for n in range(1100)]
    for start in range(0, len(keys), 100):
        await defer.gatherResults([
            defer.Deferred.fromCoroutine(storage.write(key, b"")) for key in keys[start:start + 100]
        ])
    assert await storage.list("many/") == keys


@implementer(IConsumer)
class SlowConsumer:
    """Counts bytes, pausing its producer after every write and resuming it a turn later."""

    def __init__(self) -> None:
        self.received = 0
        self.writes = 0
        self.producer = None

    def registerProducer(self, producer, streaming) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.received += len(data)
        self.writes += 1
        self.producer.pauseProducing()
        reactor.callLater(0, self.producer.resumeProducing)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("threshold", [64 * 1024 * 1024, 8 * 1024 * 1024], ids=["put", "multipart"])
async def test_big_objects_stream_with_bounded_memory(bucket: str, tmp_path: Path, threshold: int) -> None:
    """A 20 MB file goes up (one PutObject, or in 5 MB parts) and comes back in chunks,
    honouring pauses, never held whole in memory."""
    # A client of its own: what botocore loads at its first calls is counted, as in a fresh nopard.
    storage = S3Storage(s3_client(max_connections=16), bucket, "r", deferToThread,
                        multipart_threshold=threshold, part_size=5 * 1024 * 1024)
    source = tmp_path / "big.tgz"
    with open(source, "wb") as file:
        for n in range(BIG // (1024 * 1024)):
            file.write(bytes([n]) * (1024 * 1024))

    tracemalloc.start()
    try:
        assert await storage.create_from_file("packages/big/tarballs/big-1.0.0.tgz", str(source)) is True
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        blob = await storage.open("packages/big/tarballs/big-1.0.0.tgz")
        assert blob.size == BIG
        consumer = SlowConsumer()
        await blob.send_to(consumer)
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert consumer.received == BIG
    assert consumer.writes >= BIG // (256 * 1024)
    assert consumer.producer is None
    assert upload_peak < BIG * 0.4, upload_peak
    assert download_peak < BIG * 0.1, download_peak
    assert await storage.create_from_file("packages/big/tarballs/big-1.0.0.tgz", str(source)) is False


@pytest_twisted.ensureDeferred
async def test_stop_producing_ends_the_transfer(storage: S3Storage) -> None:
    """A consumer that goes away (client disconnect) stops the stream and releases the object."""
    from nopard.storage.s3 import ProducerStopped

    await storage.write("k/blob", b"x" * (2 * 1024 * 1024))
    blob = await storage.open("k/blob")

    @implementer(IConsumer)
    class Vanishing(SlowConsumer):
        def write(self, data: bytes) -> None:
            self.received += len(data)
            self.producer.stopProducing()

    consumer = Vanishing()
    with pytest.raises(ProducerStopped):
        await blob.send_to(consumer)
    assert 0 < consumer.received < 2 * 1024 * 1024
    assert consumer.producer is None


def test_settings_choose_and_check_s3() -> None:
    """NOPARD_STORAGE=s3 needs a bucket; the prefix loses its slashes; bad values are refused."""
    from nopard.settings.config import ConfigError, load_settings

    settings = load_settings({}, {"NOPARD_STORAGE": "S3", "NOPARD_S3_BUCKET": "npm-data",
                                  "NOPARD_S3_PREFIX": "/team/npm/"}, cwd="/srv")
    assert (settings.storage, settings.s3_bucket, settings.s3_prefix) == ("s3", "npm-data", "team/npm")
    assert load_settings({}, {}, cwd="/srv").storage == "fs"
    for environ, message in [
        ({"NOPARD_STORAGE": "s3"}, "NOPARD_S3_BUCKET: must be set"),
        ({"NOPARD_STORAGE": "gcs"}, "NOPARD_STORAGE"),
        ({"NOPARD_S3_BUCKET": "Bad_Bucket"}, "NOPARD_S3_BUCKET"),
        ({"NOPARD_S3_PREFIX": "a/../b"}, "NOPARD_S3_PREFIX"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings({}, environ, cwd="/srv")


@pytest_twisted.ensureDeferred
async def test_presigned_get_fetches_the_object_without_credentials(bucket: str) -> None:
    """The presigned URL GETs the object's bytes with no Authorization of its own; the object
    URL under a CDN base is the base + prefix + quoted key."""
    import urllib.request

    store = make_storage(bucket, "npm/main")
    key = "packages/@acme/lib/tarballs/lib-1.0.0.tgz"
    await store.write(key, b"tarball bytes")
    url = await store.presigned_get(key, 60)
    assert "X-Amz-" in url or "Signature=" in url
    body = await deferToThread(lambda: urllib.request.urlopen(url, timeout=10).read())
    assert body == b"tarball bytes"
    assert store.object_url("http://cdn.invalid/base/", key) == (
        "http://cdn.invalid/base/npm/main/packages/%40acme/lib/tarballs/lib-1.0.0.tgz")
