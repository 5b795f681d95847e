"""A fake upstream npm registry with switchable faults, run as its own process.

    python -m tests.fake_upstream --data tests/data/upstream --port P --control-port C

It serves the packuments and tarballs recorded by scripts/record-fixtures (``{{UPSTREAM}}``
becomes its own base URL), synthetic packages for benchmarks (``big-package``: thousands of
versions; ``huge-tarball-package``: one streamed tarball of ``--huge-size`` bytes; with
``--synthetic N``, N small ones from tests/fake_synthetic.py), empty audit answers and a search
(tests/fake_search.py), and an OSV zip of tests/data/advisories (tests/fake_advisories.py). A second
port takes JSON commands: ``GET /stats``, ``POST /reset``, ``POST /fault``, ``POST /change`` and
``POST /restore`` (see tests/fake_publish.py). It prints ``READY <port> <control-port>`` once
both ports listen.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import json
import re
import sys
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols import policies
from twisted.web import resource, server
from zope.interface import implementer

from tests.fake_advisories import PATH as ADVISORIES_PATH
from tests.fake_advisories import AdvisoryZip
from tests.fake_changes import ChangesFeed
from tests.fake_documents import (
    BIG,
    EPOCH,
    HUGE,
    LEGACY,
    ODD,
    PLACEHOLDER,
    Body,
    HugeTarball,
    abbreviate,
    big_package,
    iso,
    manifest,
    odd_url_package,
    package_doc,
    parse_http_date,
    parse_time,
    small_tarball,
)
from tests.fake_publish import Changes, digests, sources
from tests.fake_search import search_answer
from tests.fake_signed import TRUST, Signer, trust_package
from tests.fake_synthetic import Synthetic

MODES = ("none", "refused", "blackhole", "slow", "500", "404", "corrupt", "truncated")
NAME = re.compile(r"^(@[^/@]+/)?[^/@.][^/]*$")
EMPTY_AUDIT = {"actions": [], "advisories": {}, "muted": [], "metadata": {
    "vulnerabilities": {"info": 0, "low": 0, "moderate": 0, "high": 0, "critical": 0},
    "dependencies": 0, "devDependencies": 0, "optionalDependencies": 0, "totalDependencies": 0}}


class Registry:
    """The documents and tarballs served: recorded from disk, synthetic, or changed by tests."""

    def __init__(self, data: Path, big_versions: int, huge: HugeTarball, synthetic: int = 0,
                 signer: Signer | None = None) -> None:
        self.data, self.big_versions, self.huge, self.synthetic = data, big_versions, huge, Synthetic(synthetic)
        self.signer, self.trust_tarballs = signer, {}  # tests/fake_signed.py
        self.base = b""  # the served base URL, known once the port listens
        self.docs: dict[str, dict] = {}
        self.big_tarballs: dict[str, bytes] = {}
        self.served: dict[tuple[str, bool], tuple[bytes, str, str]] = {}
        self.changes = Changes()
        self.feed = ChangesFeed()  # GET /_changes (tests/fake_changes.py)
        self.advisories = AdvisoryZip(data.parent / "advisories")  # GET /osv/npm/all.zip
        index = data / "index.json"
        self.recorded = json.loads(index.read_text())["packages"] if index.exists() else {}

    def packument(self, name: str) -> dict | None:
        """The full document for ``name`` (placeholders unreplaced), or None."""
        if name not in self.docs:
            if name == BIG:
                self.docs[BIG], self.big_tarballs = big_package(self.big_versions, self.recorded)
            elif name == ODD:
                self.docs[ODD], _ = odd_url_package()
            elif name in TRUST:
                self.docs[name], self.trust_tarballs[name] = trust_package(name)
            elif name in LEGACY:
                version = manifest(name, "1.0.0", digests(small_tarball(name, "1.0.0")), {})
                version["dist"]["tarball"] = f"{{{{UPSTREAM}}}}/{name}/-/{name.rsplit('/', 1)[-1]}-1.0.0.tgz"
                self.docs[name] = package_doc(name, {"1.0.0": version}, {"1.0.0": iso(EPOCH)})
            elif name == HUGE:
                version = manifest(HUGE, "1.0.0", self.huge.digests(), {})
                version["dist"]["unpackedSize"] = self.huge.payload + len(self.huge.package_json)
                self.docs[HUGE] = package_doc(HUGE, {"1.0.0": version}, {"1.0.0": iso(EPOCH)})
            elif self.synthetic.index(name) is not None:
                self.docs[name] = self.synthetic.packument(name)
            else:
                path = self.data / "packuments" / f"{name}.json"
                if ".." in name or not path.is_file():
                    return None
                self.docs[name] = json.loads(path.read_text(encoding="utf-8"))
        return self.docs[name]

    def modified(self, doc: dict) -> datetime:
        """When a document last changed: time.modified, else its newest version, else a fixed date."""
        times = doc.get("time", {})
        return parse_time(times.get("modified")) or max(filter(None, map(parse_time, times.values())),
                                                         default=EPOCH)

    def serve(self, name: str, abbreviated: bool) -> tuple[bytes, str, str] | None:
        """(body, ETag, Last-Modified) as served, prepared once per document and form."""
        key = (name, abbreviated)
        if key not in self.served:
            doc = self.packument(name)
            if doc is None:
                return None
            modified = self.modified(doc)
            doc = self.signer.sign(doc) if self.signer else doc
            # Compact, like the real registry's documents.
            body = json.dumps(abbreviate(doc, modified) if abbreviated else doc, separators=(",", ":")).encode()
            body = body.replace(PLACEHOLDER, self.base)
            etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
            self.served[key] = (body, etag, email.utils.format_datetime(modified, usegmt=True))
        return self.served[key]

    def download(self, path: str) -> Body | None:
        """The tarball at ODD's odd URL path (``download/<name>/<version>/<sha1>``), or None."""
        doc, data = odd_url_package()
        wanted = doc["versions"]["1.0.0"]["dist"]["tarball"].replace("{{UPSTREAM}}/", "")
        return Body.of(data) if path == wanted else None

    def tarball(self, name: str, filename: str) -> Body | None:
        """The tarball ``filename`` of ``name``, or None."""
        published = self.changes.tarball(name, filename) or self.synthetic.tarball(name, filename)
        if published is not None:
            return Body.of(published)
        if name == BIG:
            self.packument(BIG)
            data = self.big_tarballs.get(filename)
            return Body.of(data) if data is not None else None
        if name == HUGE:
            return Body(self.huge.size, self.huge.chunks) if filename == f"{HUGE}-1.0.0.tgz" else None
        if name in TRUST and self.packument(name):
            data = self.trust_tarballs[name].get(filename)
            return Body.of(data) if data is not None else None
        if name in LEGACY:
            wanted = f"{name.rsplit('/', 1)[-1]}-1.0.0.tgz"
            return Body.of(small_tarball(name, "1.0.0")) if filename == wanted else None
        path = self.data / "tarballs" / name / filename
        if ".." in name or "/" in filename or not path.is_file():
            return None
        return Body.of(path.read_bytes())

    def change(self, name: str) -> dict | None:
        """Publish a new latest version with a tarball of its own, as upstream would; None if unknown."""
        doc = self.packument(name)
        if doc is None:
            return None
        for source, filename in sources(doc):  # noqa: B007 (source is used after the break)
            body = self.tarball(name, filename)
            if body is not None:
                break
        else:
            raise ValueError(f"no tarball of {name} is served to make a new version from")
        # Strictly later than before, so Last-Modified moves even for two changes in one second.
        now = max(datetime.now(UTC), self.modified(doc) + timedelta(seconds=1))
        changed = self.changes.publish(name, doc, source, b"".join(body.chunks()), iso(now))
        self.forget(name)
        return changed

    def restore(self, name: str) -> dict | None:
        """Drop every change made to ``name``, back to its recorded document; None if unknown."""
        if self.packument(name) is None:
            return None
        original = self.changes.restore(name)
        if original is not None:
            self.docs[name] = original
            self.forget(name)
        return {"name": name, "latest": self.docs[name]["dist-tags"]["latest"]}

    def forget(self, name: str) -> None:
        """Drop the prepared bodies of a document that changed, and list the change in the feed."""
        for abbreviated in (True, False):
            self.served.pop((name, abbreviated), None)
        self.feed.record(name)


@implementer(IPullProducer)
class BodyProducer:
    """Writes a Body as the client reads it, flipping bytes (corrupt) or stopping halfway (truncated)."""

    def __init__(self, request: server.Request, body: Body, mode: str) -> None:
        self.request, self.chunks, self.offset = request, body.chunks(), 0
        self.truncate = mode == "truncated"
        self.limit = body.size // 2 if self.truncate else body.size
        self.flips = {body.size // 3, body.size // 2, body.size * 2 // 3} if mode == "corrupt" else set()
        request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        """Send the next chunk, or end the response."""
        if self.request is None:
            return
        chunk = next(self.chunks, b"")[: self.limit - self.offset]
        flips = [p - self.offset for p in self.flips if self.offset <= p < self.offset + len(chunk)]
        if flips:
            chunk = bytearray(chunk)
            for position in flips:
                chunk[position] ^= 0xFF
            chunk = bytes(chunk)
        self.offset += len(chunk)
        if chunk:
            self.request.write(chunk)
        if not chunk or self.offset >= self.limit:
            request, self.request = self.request, None
            request.unregisterProducer()
            if self.truncate:
                request.channel.transport.loseConnection()  # flushes the half sent, then closes
            else:
                request.finish()

    def stopProducing(self) -> None:
        """The client went away."""
        self.request = None


def respond(request: server.Request, code: int, body: bytes = b"", headers: dict | None = None) -> None:
    """Finish a request with a complete body (JSON unless headers say otherwise)."""
    request.setResponseCode(code)
    for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
        request.setHeader(key, value)
    if code != 304:
        request.setHeader("Content-Length", str(len(body)))
        request.write(body)
    request.finish()


def error(request: server.Request, code: int, text: str) -> None:
    """An error in the registry's shape."""
    respond(request, code, json.dumps({"error": text}).encode())


class RegistryResource(resource.Resource):
    """The registry port: every path, with the current fault applied."""

    isLeaf = True

    def __init__(self, upstream: UpstreamServer) -> None:
        super().__init__()
        self.upstream = upstream

    def render(self, request: server.Request) -> int:
        """Record the request, apply the fault, then answer."""
        path = urllib.parse.unquote(request.path.decode("latin-1"))
        upstream = self.upstream
        upstream.requests.append([request.method.decode(), path])
        authorization = request.getHeader("authorization")
        if authorization:
            upstream.authorizations.append([path, authorization])
        fault = upstream.fault if any(path.startswith(p) for p in upstream.paths or [""]) else {"mode": "none"}
        mode = fault["mode"]
        if mode == "blackhole":
            upstream.held.append(request)
        elif mode == "slow":
            call = upstream.reactor.callLater(float(fault.get("delay", 1)), self.answer, request, path, mode)
            request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        elif mode in ("500", "404"):
            error(request, int(mode), f"fault injected: {mode}")
        else:
            self.answer(request, path, mode)
        return server.NOT_DONE_YET

    def answer(self, request: server.Request, path: str, mode: str) -> None:
        """Route a request; ``mode`` may still corrupt or truncate a tarball."""
        name = path[1:]
        method = request.method
        if name.startswith("-/npm/v1/security/") and method == b"POST":
            return self.audit(request, name)
        if name == ADVISORIES_PATH and method == b"GET":
            body, etag = self.upstream.registry.advisories.body()
            if self.not_modified(request, etag, "Thu, 01 Jan 2026 00:00:00 GMT"):
                return respond(request, 304, headers={"ETag": etag})
            return respond(request, 200, body, {"ETag": etag, "Content-Type": "application/zip"})
        if name == "_changes" and method == b"GET":
            return respond(request, *self.upstream.registry.feed.answer(request.args))
        if name == "-/npm/v1/keys" and method == b"GET":
            signer = self.upstream.registry.signer
            return respond(request, 200, signer.keys_body) if signer else error(request, 404, "Not found")
        if name == "-/v1/search" and method == b"GET":
            self.upstream.searches.append((request.args.get(b"text") or [b""])[0].decode("utf-8", "replace"))
            registry = self.upstream.registry
            answer = search_answer([*registry.recorded, *LEGACY], registry.packument, request.args)
            if answer is None:
                return error(request, 400, "text is required")
            return respond(request, 200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
        if (name.startswith("download/") or "/-/" in name) and method in (b"GET", b"HEAD"):
            if name.startswith("download/"):
                body = self.upstream.registry.download(name)
            else:
                name, filename = name.split("/-/", 1)
                body = self.upstream.registry.tarball(name, filename) if NAME.match(name) else None
            if body is None:
                return error(request, 404, "Not found")
            request.setHeader("Content-Type", "application/octet-stream")
            request.setHeader("Content-Length", str(body.size))
            if method == b"HEAD":
                return request.finish()
            BodyProducer(request, body, mode)
            return None
        if method not in (b"GET", b"HEAD"):
            return error(request, 405, "Method not allowed")
        accept = request.getHeader("accept") or ""
        abbreviated = "application/vnd.npm.install-v1+json" in accept
        served = self.upstream.registry.serve(name, abbreviated) if NAME.match(name) else None
        if served is None:
            return error(request, 404, "Not found")
        body, etag, modified = served
        headers = {"ETag": etag, "Last-Modified": modified, "Vary": "Accept",
                   "Cache-Control": "public, max-age=300",
                   "Content-Type": "application/vnd.npm.install-v1+json" if abbreviated else "application/json"}
        if self.not_modified(request, etag, modified):
            return respond(request, 304, headers=headers)
        return respond(request, 200, body, headers)  # for HEAD, twisted sends the headers only

    @staticmethod
    def not_modified(request: server.Request, etag: str, modified: str) -> bool:
        """If-None-Match decides when sent (RFC 9110); otherwise If-Modified-Since."""
        if_none_match = request.getHeader("if-none-match")
        if if_none_match is not None:
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return etag in tags or "*" in tags
        since = parse_http_date(request.getHeader("if-modified-since"))
        return since is not None and since >= parse_http_date(modified)

    def audit(self, request: server.Request, name: str) -> None:
        """Empty audit answers: nothing is ever vulnerable here."""
        raw = request.content.read()
        try:
            if request.getHeader("content-encoding") == "gzip":
                raw = gzip.decompress(raw)
            json.loads(raw or b"{}")
        except (OSError, ValueError):
            return error(request, 400, "invalid audit body")
        if name == "-/npm/v1/security/advisories/bulk":
            return respond(request, 200, b"{}")
        if name in ("-/npm/v1/security/audits/quick", "-/npm/v1/security/audits"):
            return respond(request, 200, json.dumps(EMPTY_AUDIT).encode())
        return error(request, 404, "Not found")


class CountingFactory(policies.WrappingFactory):
    """The registry's Site, wrapped to count accepted connections; ``protocols`` holds the open ones."""

    def __init__(self, upstream: UpstreamServer) -> None:
        super().__init__(server.Site(RegistryResource(upstream)))
        self.upstream = upstream

    def buildProtocol(self, addr):
        """Count every accepted TCP connection."""
        self.upstream.connections += 1
        return super().buildProtocol(addr)


class UpstreamServer:
    """The registry port's state: the fault in force, the counters, the listening port."""

    def __init__(self, registry: Registry, reactor, interface: str = "127.0.0.1") -> None:
        self.registry, self.reactor, self.interface = registry, reactor, interface
        self.fault: dict = {"mode": "none"}
        self.paths: list[str] = []
        self.connections, self.requests = 0, []
        self.authorizations: list[list[str]] = []
        self.searches: list[str] = []  # the text of every search asked
        self.held: list[server.Request] = []
        self.factory = CountingFactory(self)
        self.listening = None
        self.port = 0

    def listen(self, port: int) -> int:
        """Listen on ``port`` (0: any free one) and remember which, to come back to it."""
        self.listening = self.reactor.listenTCP(port, self.factory, interface=self.interface)
        self.port = self.listening.getHost().port
        self.registry.base = f"http://{self.interface}:{self.port}".encode()
        return self.port

    def set_fault(self, spec: dict) -> defer.Deferred:
        """Switch faults; fires once the port is closed (refused) or listening again."""
        mode = spec.get("mode")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.fault, self.paths = spec, list(spec.get("paths") or [])
        # Requests a blackhole held would otherwise hang forever: drop their connections.
        for request in self.held:
            if request.channel is not None:
                request.channel.transport.abortConnection()
        self.held = []
        if mode == "refused" and self.listening is not None:
            listening, self.listening = self.listening, None
            # A server that is down drops its kept-alive connections too.
            for connection in list(self.factory.protocols):
                connection.transport.abortConnection()
            return listening.stopListening()
        if mode != "refused" and self.listening is None:
            self.listen(self.port)
        return defer.succeed(None)


class ControlResource(resource.Resource):
    """The control port: stats, reset, fault, change, restore."""

    isLeaf = True

    def __init__(self, upstream: UpstreamServer) -> None:
        super().__init__()
        self.upstream = upstream

    def render(self, request: server.Request) -> bytes | int:
        """Run one command; errors are 400/404 JSON."""
        request.setHeader("Content-Type", "application/json")
        upstream, command = self.upstream, (request.method, request.path)
        try:
            body = json.loads(request.content.read() or b"{}")
            if command == (b"GET", b"/stats"):
                return json.dumps({"connections": upstream.connections, "requests": upstream.requests,
                                   "authorizations": upstream.authorizations, "fault": upstream.fault,
                                   "searches": upstream.searches}).encode()
            if command == (b"POST", b"/reset"):  # zeroes the counters only: changes stay
                upstream.connections, upstream.requests, upstream.authorizations = 0, [], []
                upstream.searches = []
                return b"{}"
            if command == (b"POST", b"/fault"):
                done = upstream.set_fault(body)
                done.addCallback(lambda _: (request.write(b"{}"), request.finish()))
                return server.NOT_DONE_YET
            if command == (b"POST", b"/advisories"):  # serve this OSV record in the zip too
                return json.dumps(upstream.registry.advisories.add(body)).encode()
            if command == (b"POST", b"/changes"):  # tests/fake_changes.py
                return json.dumps(upstream.registry.feed.control(body)).encode()
            if command == (b"POST", b"/advisories/reset"):
                return json.dumps(upstream.registry.advisories.reset()).encode()
            if command in ((b"POST", b"/change"), (b"POST", b"/restore")):
                registry = upstream.registry
                answer = (registry.change if command[1] == b"/change" else registry.restore)(body.get("name", ""))
                if answer is None:
                    request.setResponseCode(404)
                    return b'{"error":"Not found"}'
                return json.dumps(answer).encode()
        except (ValueError, TypeError, AttributeError) as problem:
            request.setResponseCode(400)
            return json.dumps({"error": str(problem)}).encode()
        request.setResponseCode(404)
        return b'{"error":"Not found"}'


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, listen on both ports, print READY, run until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--big-versions", type=int, default=2000)
    parser.add_argument("--huge-size", type=int, default=100 * 1024 * 1024)
    parser.add_argument("--huge", action="store_true", help="hash the huge tarball at start, not on first use")
    parser.add_argument("--synthetic", type=int, default=0, help="serve synthetic-00000... (N small packages)")
    parser.add_argument("--signing-key", type=Path, help="PEM private key signing every version served")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    # Warnings and tracebacks go to stderr; stdout carries only the READY line.
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False)
    huge = HugeTarball(args.huge_size)
    if args.huge:
        huge.digests()
    signer = Signer(args.signing_key) if args.signing_key else None
    upstream = UpstreamServer(Registry(args.data, args.big_versions, huge, args.synthetic, signer), reactor)
    port = upstream.listen(args.port)
    control = reactor.listenTCP(args.control_port, server.Site(ControlResource(upstream)), interface="127.0.0.1")
    print(f"READY {port} {control.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
