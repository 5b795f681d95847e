"""The mirror in-process: a fake upstream resource reached through StubTreq, a Clock for time.

The fake serves a few packuments and their tarballs, counts every request,
and can be switched to a fault: ``5xx``, ``404``, ``429`` (slow down, with a
Retry-After), ``silent`` (a request whose answer never comes: its Deferred
never fires) or corrupt tarball bytes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from nopard.cluster.coordination import InProcessCoordination
from nopard.domain.prepared import PreparedCache
from nopard.jobs.sync import SyncJobs
from nopard.local.packages import Registry
from nopard.mirror import MirrorParts, build_mirror
from nopard.mirror.upstreams import Upstreams
from nopard.mirror.usage import UsageLog
from nopard.ops.metrics import Metrics
from nopard.settings.config import LiveSettings, load_settings
from nopard.storage.fs import FilesystemStorage
from nopard.upstream.client import Upstream
from tests.unit.route_harness import run_now

UPSTREAM = "http://127.0.0.1:9"  # never dialled: StubTreq hands every request to FakeRegistry


def tarball(name: str, version: str) -> bytes:
    """Some bytes standing for the tarball of ``name@version``."""
    return f"tarball of {name}@{version}".encode()


def packument(name: str, *versions: str) -> dict[str, Any]:
    """An upstream document of ``name`` whose versions' dist point at the fake's tarballs."""
    manifests = {}
    for version in versions:
        data = tarball(name, version)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        url = f"{UPSTREAM}/{name}/-/{name.split('/')[-1]}-{version}.tgz"
        manifests[version] = {"name": name, "version": version, "dist": {"tarball": url, "integrity": integrity}}
    return {"name": name, "dist-tags": {"latest": versions[-1]}, "versions": manifests}


def odd_packument(name: str, *versions: str) -> dict[str, Any]:
    """Like ``packument``, with tarball URLs as some hosted registries give them:
    ``/download/<name>/<version>/<hash>``, not ending in ``<name>-<version>.tgz``."""
    document = packument(name, *versions)
    for version, manifest in document["versions"].items():
        digest = hashlib.sha1(tarball(name, version)).hexdigest()
        manifest["dist"]["tarball"] = f"{UPSTREAM}/download/{name}/{version}/{digest}"
    return document


@dataclass
class FakeRegistry(Resource):
    """An upstream registry: documents by name, tarballs by path, every request recorded."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    fault: str | None = None  # None, "5xx", "404", "429", "silent", "corrupt"
    hold_tarballs: bool = False  # tarball answers (their length declared) wait for send() and release()
    hold_documents: bool = False  # document answers wait for release()
    held: list[Any] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)  # the text of every /-/v1/search asked
    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def etag(self, name: str) -> str:
        """The ETag of ``name``'s current document."""
        return '"' + hashlib.sha1(orjson.dumps(self.documents[name])).hexdigest() + '"'

    def asked(self, part: str = "") -> int:
        """How many requests reached the upstream (whose path contains ``part``)."""
        return sum(1 for path, _ in self.requests if part in path)

    def send(self, size: int) -> None:
        """Send the next ``size`` bytes of every answer held, keeping them held (not finished)."""
        self.held = [(request, self._write(request, data[:size]) or data[size:]) for request, data in self.held]

    def release(self) -> None:
        """Send the rest of the answers held so far (``hold_tarballs``, ``hold_documents``) and end them."""
        held, self.held = self.held, []
        for request, data in held:
            self._write(request, data)
            request.finish()

    @staticmethod
    def _write(request: Any, data: bytes) -> None:
        if data:
            request.write(data)

    def render(self, request: Any) -> Any:
        """Answer as a registry would, or with the fault set."""
        path = unquote(request.path.decode())
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((path, headers))
        if self.fault == "silent":
            Deferred().addCallback(lambda _: request.finish())  # never fires: no answer, ever
            return NOT_DONE_YET
        if self.fault == "429":
            request.setResponseCode(429)
            request.setHeader(b"Retry-After", b"5")
            return b'{"error":"slow down"}'
        if self.fault in ("5xx", "404"):
            request.setResponseCode(503 if self.fault == "5xx" else 404)
            return b'{"error":"fault"}'
        if path == "/-/v1/search":
            return self.search(request)
        if path.startswith("/download/"):  # odd_packument's tarball URLs
            name, version, _digest = path[len("/download/"):].rsplit("/", 2)
            file = f"{name.split('/')[-1]}-{version}.tgz"
        else:
            name, _, file = path.lstrip("/").partition("/-/")
        if name not in self.documents:
            request.setResponseCode(404)
            return b'{"error":"Not found"}'
        if file:
            version = file[len(name.split("/")[-1]) + 1 : -len(".tgz")]
            data = tarball(name, version)
            data = data[::-1] if self.fault == "corrupt" else data
            if self.hold_tarballs:
                request.setHeader(b"Content-Length", b"%d" % len(data))
                self.held.append((request, data))
                return NOT_DONE_YET
            return data
        if headers.get("if-none-match") == self.etag(name):
            request.setResponseCode(304)
            body = b""
        else:
            request.setHeader(b"ETag", self.etag(name).encode())
            request.setHeader(b"Content-Type", b"application/json")
            body = orjson.dumps(self.documents[name])
        if self.hold_documents:
            request.setHeader(b"Content-Length", b"%d" % len(body))
            self.held.append((request, body))
            return NOT_DONE_YET
        return body


    def search(self, request: Any) -> bytes:
        """The registry's search: documents whose name holds every word, by name, paged by from/size."""
        text = (request.args.get(b"text") or [b""])[0].decode()
        self.searches.append(text)
        offset = int((request.args.get(b"from") or [b"0"])[0])
        size = int((request.args.get(b"size") or [b"20"])[0])
        found = sorted(n for n in self.documents if all(word in n for word in text.split()))
        objects = [{"package": {"name": n, "version": self.documents[n]["dist-tags"]["latest"],
                                "description": f"{n} upstream"}, "score": {"final": 1.0}, "searchScore": 1.0}
                   for n in found[offset : offset + size]]
        request.setHeader(b"Content-Type", b"application/json")
        return orjson.dumps({"objects": objects, "total": len(found), "time": "2026-12-02T00:00:00.000Z"})


@dataclass
class MirrorUnderTest:
    """The mirror's parts, the fake upstream, the clock, and a way to await the mirror's work."""

    parts: MirrorParts
    upstream: FakeRegistry
    http: StubTreq
    clock: task.Clock
    registry: Registry
    upstreams: Upstreams
    storage: FilesystemStorage
    metrics: Metrics
    settings: LiveSettings

    async def settle(self, work: Coroutine[Any, Any, Any] | Deferred[Any]) -> Any:
        """The result of ``work``, delivering the fake upstream's answers until it is there."""
        return await self._drive(work, turns=200, step=0.0, what="the mirror's work")

    def sync_jobs(self, owner: str = "a", use: UsageLog | None = None) -> SyncJobs:
        """The sync jobs over this mirror, as instance ``owner`` (refreshing by ``use`` when given)."""
        return SyncJobs(self.settings, self.upstreams, self.registry, self.parts.documents, self.parts.tarballs,
                        self.storage, self.clock, Logger(namespace="nopard.test"), owner=owner,
                        metrics=self.metrics, use=use)

    async def run_job(self, work: Coroutine[Any, Any, Any] | Deferred[Any], step: float = 1.0) -> Any:
        """Like ``settle``, moving the clock ``step`` seconds each turn (the jobs' rate limit waits on it)."""
        return await self._drive(work, turns=500, step=step, what="the job")

    async def _drive(self, work: Coroutine[Any, Any, Any] | Deferred[Any], turns: int, step: float,
                     what: str) -> Any:
        pending = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
        results: list[Any] = []
        pending.addBoth(lambda result: results.append(result) or result)
        for _ in range(turns):
            self.http.flush()
            if results:
                return await pending
            if step:
                self.clock.advance(step)
            await task.deferLater(reactor, 0, lambda: None)  # a turn for work the flush started
        raise AssertionError(f"{what} never finished")

    def started(self, work: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        """Start ``work`` without waiting on it (answers are delivered by the next ``settle``)."""
        return Deferred.fromCoroutine(work)


def build(tmp_path: Path, upstream: FakeRegistry | None = None, write_behind: bool = False,
          **settings: str) -> MirrorUnderTest:
    """The mirror as nopard.service wires it, over ``upstream``; settings as NOPARD_* keywords;
    ``write_behind``: as nopard alone on its store (fetched copies may be written after the answer)."""
    env = {"NOPARD_FORWARDER_URL": UPSTREAM, **{f"NOPARD_{k.upper()}": v for k, v in settings.items()}}
    live = LiveSettings(load_settings({}, env, cwd=str(tmp_path)))
    clock = task.Clock()
    clock.advance(1_800_000_000)
    fake = upstream if upstream is not None else FakeRegistry()
    http = StubTreq(fake)
    storage = FilesystemStorage(str(tmp_path / "registry"), run_now)
    cache = PreparedCache(lambda: live.current.memory_cache_size)
    coordination = InProcessCoordination()
    registry = Registry(storage, cache, clock, coordination)
    log = Logger(namespace="nopard.test")
    metrics = Metrics(clock)
    upstreams = Upstreams(live, lambda url, token: Upstream(url, http, live, clock, token, log, metrics))
    parts = build_mirror(live, storage, registry, upstreams, cache, clock, str(tmp_path / "spool"), log,
                         coordination, write_behind=write_behind)
    return MirrorUnderTest(parts, fake, http, clock, registry, upstreams, storage, metrics, live)
