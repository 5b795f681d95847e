"""The S3 storage backend: one object per key, ``<prefix>/<key>`` in a bucket.

The key layout is the filesystem backend's (README, Storage layout). Every
boto3 call is blocking, so each runs through ``run_in_thread`` (a bounded
thread pool), never on the reactor.

- ``write`` is one PutObject, which S3 applies atomically: readers see the
  old object or the new one.
- ``create`` and ``create_from_file`` are conditional writes
  (``If-None-Match: *`` on PutObject or CompleteMultipartUpload): the server
  refuses them with 412 when an object exists, so create-if-absent holds
  across processes and machines.
- ``replace`` is compare-and-swap on the ETag ``read_versioned`` gave: a
  PutObject with ``If-Match: <etag>`` (``If-None-Match: *`` for "only if
  absent"), which S3 checks and applies atomically, so it also holds across
  processes and machines; ``delete_versioned`` is the same for DeleteObject.
- Big objects are streamed: files are uploaded from disk (one streamed
  PutObject, or a multipart upload holding one part at a time), and ``open``
  hands out a producer that reads the next chunk of GetObject's body in the
  thread pool only when the consumer wants more.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol
from urllib.parse import quote

from botocore.exceptions import ClientError
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from nopard.storage import QUARANTINE, InvalidKey, Leftover, check_key, check_prefix, leftover_kind

RunInThread = Callable[..., Awaitable[Any]]

CHUNK_SIZE = 256 * 1024
# Files up to this size go up in one streamed PutObject; bigger ones in parts.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
_MISSING = ("NoSuchKey", "404", "NotFound")
_EXISTS = ("PreconditionFailed", "412")
# S3 answers 409 when two conditional writes of one key overlap: try again.
_CONFLICT = ("ConditionalRequestConflict", "409")
_CONFLICT_RETRIES = 8


class ProducerStopped(Exception):
    """The consumer asked the blob to stop before the object was sent."""


class ObjectBody(Protocol):
    """A GetObject body (botocore's StreamingBody): read in chunks, then closed."""

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` more bytes (all the rest when None); b"" at the end."""

    def close(self) -> None:
        """Release the connection."""


class Paginator(Protocol):
    """A boto3 paginator: the pages of one listing."""

    def paginate(self, **kwargs: Any) -> Iterable[dict[str, Any]]:
        """Each page of the answer, requested as they are iterated."""


class S3Client(Protocol):
    """The calls of a boto3 S3 client that S3Storage makes (boto3 ships no types of its own)."""

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        """PutObject."""

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        """GetObject."""

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        """HeadObject."""

    def delete_object(self, **kwargs: Any) -> dict[str, Any]:
        """DeleteObject."""

    def copy_object(self, **kwargs: Any) -> dict[str, Any]:
        """CopyObject."""

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        """CreateMultipartUpload."""

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        """UploadPart."""

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        """CompleteMultipartUpload."""

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        """AbortMultipartUpload."""

    def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int) -> str:  # noqa: N803
        """A presigned URL (boto3's names)."""

    def get_paginator(self, operation_name: str) -> Paginator:
        """The paginator of ``operation_name``."""


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _conditional(put: Callable[[], Any], refused: tuple[str, ...] = _EXISTS) -> bool:
    """Run a conditional write: True if it was applied, False if S3 refused it with a ``refused`` code."""
    for attempt in range(_CONFLICT_RETRIES):
        try:
            put()
        except ClientError as error:
            code = _code(error)
            if code in refused:
                return False
            if code in _CONFLICT and attempt + 1 < _CONFLICT_RETRIES:
                time.sleep(0.05 * (attempt + 1))
                continue
            raise
        return True
    raise AssertionError("unreachable")


def _abort(client: S3Client, bucket: str, name: str, upload: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload)
    except ClientError:
        pass  # a refused complete may already have ended it; the bucket's lifecycle rule cleans up


@implementer(IPushProducer)
class S3Blob:
    """An object's GetObject body, streamed to a consumer chunk by chunk with flow control."""

    def __init__(self, body: ObjectBody, size: int, run_in_thread: RunInThread, chunk_size: int = CHUNK_SIZE) -> None:
        self._body = body
        self.size = size
        self._run = run_in_thread
        self._chunk_size = chunk_size
        self._paused = False
        self._stopped = False
        self._resumed: defer.Deferred[None] | None = None

    async def send_to(self, consumer: IConsumer) -> None:
        """Write the whole object to ``consumer``, pausing when it is full; close afterwards."""
        consumer.registerProducer(self, True)
        try:
            while True:
                while self._paused and not self._stopped:
                    self._resumed = defer.Deferred()
                    await self._resumed
                if self._stopped:
                    raise ProducerStopped("the consumer asked us to stop producing")
                chunk = await self._run(self._body.read, self._chunk_size)
                if not chunk or self._stopped:
                    break
                consumer.write(chunk)
        finally:
            consumer.unregisterProducer()
            await self._run(self._body.close)
        if self._stopped:
            raise ProducerStopped("the consumer asked us to stop producing")

    def close(self) -> None:
        """Release the object without sending it (drops its connection)."""
        self._body.close()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        waiting, self._resumed = self._resumed, None
        if waiting is not None:
            waiting.callback(None)


class S3Storage:
    """Storage in an S3 bucket (or any S3-compatible server) under an optional prefix."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, run_in_thread: RunInThread,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._run = run_in_thread
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size

    def object_key(self, key: str) -> str:
        """The object key that holds ``key``: ``<prefix>/<key>``."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def presigned_get(self, key: str, seconds: int) -> str:
        """A URL that GETs ``key``'s object without credentials for ``seconds``.

        boto3 signs locally (no request to S3), but finding its credentials the first time may
        read files or ask an instance-metadata endpoint, so it runs in the thread pool.
        """
        name = self.object_key(key)
        url: str = await self._run(lambda: self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=seconds))
        return url

    def object_url(self, base: str, key: str) -> str:
        """``key``'s object under ``base`` (a CDN in front of the bucket): base + quoted object key."""
        return base.rstrip("/") + "/" + quote(self.object_key(key), safe="/")

    async def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        return await self._run(self._read, self.object_key(key))

    async def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there atomically (one PutObject)."""
        name = self.object_key(key)
        await self._run(lambda: self._client.put_object(Bucket=self.bucket, Key=name, Body=data))

    async def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` only if nothing is there; False if something was."""
        name = self.object_key(key)
        return await self._run(_conditional, lambda: self._client.put_object(
            Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*"))

    async def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and its ETag as the version (one GetObject), or None when there is none."""
        return await self._run(self._read_versioned, self.object_key(key))

    async def replace(self, key: str, data: bytes, version: str | None) -> bool:
        """Store ``data`` at ``key`` only if the object still has ETag ``version`` (None: only if absent).

        One conditional PutObject: S3 refuses it with 412 when the ETag differs
        (or an object exists, for None) and 404 when the object is gone: False.
        """
        name = self.object_key(key)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        return await self._run(_conditional, lambda: self._client.put_object(
            Bucket=self.bucket, Key=name, Body=data, **condition), _EXISTS + _MISSING)

    async def create_from_file(self, key: str, path: str) -> bool:
        """Upload local file ``path`` to ``key`` only if nothing is there, streamed from disk."""
        return await self._run(self._create_from_file, self.object_key(key), path)

    async def delete(self, key: str) -> bool:
        """Remove the object; False if there was none."""
        return await self._run(self._delete, self.object_key(key))

    async def delete_versioned(self, key: str, version: str) -> bool:
        """Remove the object only if it still has ETag ``version``: one DeleteObject with ``If-Match``.

        S3 refuses it with 412 when the ETag differs and 404 when the object is gone: False.
        """
        name = self.object_key(key)
        return await self._run(_conditional, lambda: self._client.delete_object(
            Bucket=self.bucket, Key=name, IfMatch=version), _EXISTS + _MISSING)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        return await self._run(self._exists, self.object_key(key))

    async def open(self, key: str) -> S3Blob | None:
        """Open the object for streaming, or None when there is none."""
        answer = await self._run(self._get, self.object_key(key))
        if answer is None:
            return None
        return S3Blob(answer["Body"], answer["ContentLength"], self._run)

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, relative to the store's prefix, sorted."""
        check_prefix(prefix)
        return await self._run(self._list, prefix)

    async def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size, from a listing (one request per 1000 keys)."""
        check_prefix(prefix)
        return await self._run(self._sizes, prefix)

    async def usage(self) -> tuple[int, int]:
        """(bytes, objects) under the store's prefix, from a listing (one request per 1000 objects)."""
        return await self._run(self._usage)

    # For nopard-admin fsck and gc (storage.Maintained) ------------------------

    async def stats(self, prefix: str) -> dict[str, tuple[int, float]]:
        """Every key under ``prefix`` with (size, LastModified), from a listing."""
        check_prefix(prefix)
        return await self._run(self._stats, prefix)

    async def leftovers(self) -> builtins.list[Leftover]:
        """The objects under ``<prefix>/.quarantine/`` (S3 writes leave no temporary objects: a
        multipart upload never completed is the bucket's lifecycle rule's to clean up)."""
        return await self._run(self._leftovers)

    async def set_aside(self, key: str) -> str | None:
        """Copy the object to ``.quarantine/<key>`` then delete it; where it went, None if gone."""
        name = self.object_key(key)
        return await self._run(self._set_aside, name, key)

    async def remove_leftover(self, path: str) -> bool:
        """Delete an object of the quarantine."""
        if leftover_kind(path) != "quarantined":
            raise InvalidKey(f"not a quarantined object: {path!r}")
        return await self._run(self._delete, self._base() + path)

    # Blocking parts, run in the thread pool -----------------------------------

    def _base(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _objects(self, prefix: str) -> Iterable[dict[str, Any]]:
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", ())

    def _stats(self, prefix: str) -> dict[str, tuple[int, float]]:
        base, stats = self._base(), {}
        for item in self._objects(base + prefix):
            try:
                stats[check_key(item["Key"][len(base):])] = (int(item.get("Size", 0)), item["LastModified"].timestamp())
            except ValueError:
                continue  # an object no key could name
        return stats

    def _leftovers(self) -> builtins.list[Leftover]:
        base = self._base()
        found = [Leftover("quarantined", item["Key"][len(base):], int(item.get("Size", 0)),
                          item["LastModified"].timestamp()) for item in self._objects(f"{base}{QUARANTINE}/")]
        return sorted(found, key=lambda leftover: leftover.path)

    def _set_aside(self, name: str, key: str) -> str | None:
        target = f"{QUARANTINE}/{key}"
        suffix = 0
        while self._exists(self._base() + (target if not suffix else f"{target}.{suffix}")):
            suffix += 1
        target = target if not suffix else f"{target}.{suffix}"
        try:
            self._client.copy_object(Bucket=self.bucket, Key=self._base() + target,
                                     CopySource={"Bucket": self.bucket, "Key": name})
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise
        self._client.delete_object(Bucket=self.bucket, Key=name)
        return target

    def _usage(self) -> tuple[int, int]:
        base = f"{self.prefix}/" if self.prefix else ""
        total = count = 0
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", ()):
                total += int(item.get("Size", 0))
                count += 1
        return total, count


    def _get(self, name: str) -> dict | None:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise

    def _read(self, name: str) -> bytes | None:
        answer = self._get(name)
        if answer is None:
            return None
        with answer["Body"] as body:
            return body.read()

    def _read_versioned(self, name: str) -> tuple[bytes, str] | None:
        answer = self._get(name)
        if answer is None:
            return None
        with answer["Body"] as body:
            return body.read(), answer["ETag"]

    def _exists(self, name: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as error:
            if _code(error) in _MISSING:
                return False
            raise
        return True

    def _delete(self, name: str) -> bool:
        # DeleteObject succeeds on a missing key, so look first; a concurrent
        # delete of one key can make both callers say True, which is harmless.
        if not self._exists(name):
            return False
        self._client.delete_object(Bucket=self.bucket, Key=name)
        return True

    def _create_from_file(self, name: str, path: str) -> bool:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > self._multipart_threshold:
                return self._multipart_upload(name, file)

            def put() -> None:
                # botocore streams a file body from disk; it is never read whole.
                file.seek(0)  # a retry after a 409 sends the file again
                self._client.put_object(Bucket=self.bucket, Key=name, Body=file, IfNoneMatch="*")

            return _conditional(put)

    def _multipart_upload(self, name: str, file: Any) -> bool:
        """A multipart upload holding one part in memory; completed only if the key is free."""
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            while chunk := file.read(self._part_size):
                number = len(parts) + 1
                answer = self._client.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=chunk)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                del chunk
            created = _conditional(lambda: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*"))
        except BaseException:
            _abort(self._client, self.bucket, name, upload)
            raise
        if not created:
            _abort(self._client, self.bucket, name, upload)
        return created

    def _list(self, prefix: str) -> builtins.list[str]:  # list: the method above
        return sorted(self._sizes(prefix))

    def _sizes(self, prefix: str) -> dict[str, int]:
        base = f"{self.prefix}/" if self.prefix else ""
        sizes = {}
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix)
        for page in pages:
            for item in page.get("Contents", ()):
                key = item["Key"][len(base):]
                try:
                    sizes[check_key(key)] = int(item.get("Size", 0))
                except ValueError:
                    continue  # an object no key could name (put there by something else)
        return sizes


def s3_client(max_connections: int) -> S3Client:
    """A boto3 S3 client configured the standard way (AWS_* variables, AWS_ENDPOINT_URL, ~/.aws)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(max_pool_connections=max_connections))
