"""The whole Klein app built in-process from real components, driven through treq's StubTreq.

Storage is a filesystem store under ``tmp_path``; time is a ``task.Clock``;
"threads" run at once (the work is small); the upstream is a resource served
the same way (StubTreq), answering 404 to everything, so nothing leaves the process.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import treq
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource

from nopard.advisories.audit import Audits
from nopard.advisories.malware import block_malware
from nopard.advisories.store import AdvisoryStore
from nopard.auth import Accounts
from nopard.auth.limits import LoginLimiter
from nopard.auth.operator import OperatorCredential
from nopard.auth.stored_users import user_table
from nopard.auth.tokens import TokenStore
from nopard.auth.weblogin import WebLogins
from nopard.catalog.changes import ChangeLog
from nopard.catalog.search import SearchIndex
from nopard.cluster.coordination import InProcessCoordination
from nopard.cluster.sessions import MemorySessions
from nopard.domain.prepared import PreparedCache
from nopard.domain.times import iso_time
from nopard.firewall.verdicts import Firewall
from nopard.jobs.advisories import AdvisoryRefresh
from nopard.jobs.changes import ChangesFollower
from nopard.jobs.eviction import Eviction
from nopard.jobs.schedule import SyncSchedule
from nopard.jobs.sync import StoreLock, SyncJobs
from nopard.local.packages import Registry
from nopard.local.signing import SigningKeys
from nopard.mirror import build_mirror
from nopard.mirror.search import UpstreamSearch
from nopard.mirror.upstreams import Upstreams
from nopard.mirror.usage import UsageLog
from nopard.ops.history import History
from nopard.ops.metrics import Metrics, StoreProbe, StoreSize
from nopard.ops.status import OperatorStatus
from nopard.settings.acl import ALLOW_ALL, Policy, parse_policy
from nopard.settings.config import LiveSettings, load_settings, setting_sources
from nopard.settings.overrides import Overrides
from nopard.storage.fs import FilesystemStorage
from nopard.storage.index import IndexedStorage, StoreIndex
from nopard.storage.sizes import stored_tarball_sizes
from nopard.upstream.audit import AuditForwarder
from nopard.upstream.client import Upstream
from nopard.web.app import RegistryApp
from nopard.web.readme_renders import ReadmeRenders, Renderer
from nopard.web.redirects import StoredObjects, TarballRedirects
from nopard.web.site import NopardRequest, NopardSite
from tests.support import Response
from tests.unit.readme_fakes import InlineRenderer

OPERATOR_TOKEN = "o" * 43  # the operator token nopard-admin would read from the token file
MAX_TURNS = 5000  # a request still unanswered after this many reactor turns hangs
UPSTREAM_URL = "http://127.0.0.1:9/"  # never dialled: requests to it go to MissingUpstream


def run_now(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """A thread pool stand-in: the work runs at once, in the test's thread."""
    return maybeDeferred(function, *args, **kwargs)


class ThreadHops:
    """The io thread pool's stand-in, counting the calls made into it (each a hop in nopard)."""

    def __init__(self) -> None:
        self.count = 0
        self.made: list[str] = []  # the name of what each hop ran, in order

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """Run ``function`` at once, as run_now does, and count the hop."""
        self.count += 1
        self.made.append(function.__name__)
        return maybeDeferred(function, *args, **kwargs)


class MissingUpstream(Resource):
    """An upstream registry that holds nothing."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        """404 with npm's JSON error, for every path."""
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"error":"Not found"}'


class AsPeer(Resource):
    """Serves ``inner`` as if each request came from the address in its X-Test-Peer header
    (StubTreq's requests all come from 127.0.0.1): for per-address limits."""

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: Any) -> Any:
        """Set the peer address, then let the app answer."""
        peer = request.getHeader(b"x-test-peer")
        if peer:
            request.client = IPv4Address("TCP", peer.decode(), 31337)
        return self._inner.render(request)


@dataclass
class RawExchange:
    """What one request written as bytes through nopard's own site came to."""

    reply: bytes
    request: NopardRequest
    closed: bool  # the server closed the connection

    @property
    def status(self) -> int:
        """The status of the reply (0: none came)."""
        return int(self.reply.split(b" ", 2)[1]) if self.reply else 0

    def json(self) -> Any:
        """The reply's body, as JSON."""
        return orjson.loads(self.reply.partition(b"\r\n\r\n")[2])


@dataclass
class InProcess:
    """The app under test, its client and the parts a test may look at."""

    client: StubTreq
    clock: task.Clock
    settings: LiveSettings
    accounts: Accounts
    readmes: ReadmeRenders
    resource: IResource
    sessions: MemorySessions
    app: RegistryApp | None = None
    storage: Any = None  # the store the app writes to (FilesystemStorage, or what wraps it)
    upstream_http: StubTreq | None = None  # the upstream's client: flushed with the app's
    # When a request waits on the clock (a sync job's pacing, say), jump to its next call.
    skip_idle_time: bool = False
    index: StoreIndex | None = None  # what the store holds, known in memory (nopard.storage.index)
    hops: ThreadHops | None = None  # the store's calls into its thread pool, counted
    cache: PreparedCache | None = None
    firewall: Firewall | None = None
    metrics: Metrics | None = None  # what raw() requests are counted in, as NopardSite counts them
    usage: UsageLog | None = None  # the record of use (flushed by hand here: no UsageFlusher runs)
    jobs: SyncJobs | None = None
    changes: ChangeLog | None = None  # the changes feed the app serves

    def new_browser(self) -> None:
        """Go on as another browser: a client without the cookies answers set so far."""
        self.client = StubTreq(self.resource)

    async def raw(self, head: bytes, body: Iterable[bytes] = ()) -> RawExchange:
        """One request through NopardSite and NopardRequest (as twistd serves them): ``head``
        (request line and headers), then each piece of ``body`` as one read from the network,
        until the server closes the connection; returns once the reply is whole (or a request
        still reading its body has waited 10,000 turns of the reactor for it)."""
        made: list[NopardRequest] = []

        class Recorded(NopardRequest):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        site = NopardSite(self.resource, self.settings, self.clock, Logger(namespace="nopard.test"), self.metrics)
        site.requestFactory = Recorded
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5984))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(head)
        for piece in body:
            if transport.disconnecting:
                break
            channel.dataReceived(piece)
        for _ in range(10_000):  # reactor turns; a request still waiting for its body gets no reply
            if transport.disconnecting or _whole(transport.value()):
                break
            await task.deferLater(reactor, 0, lambda: None)
        return RawExchange(transport.value(), made[0], transport.disconnecting)

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   token: str | None = None, **headers: str) -> Response:
        """One request; ``body`` is sent as JSON, ``token`` as a bearer token; headers by keyword."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = orjson.dumps(body) if body is not None else raw
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        pending = self.client.request(method, "http://127.0.0.1:5984" + path, data=data,
                                      headers={k: [v] for k, v in sent.items()}, allow_redirects=False)
        response = await self._settle(pending)
        content = await self._settle(treq.content(response))
        flat = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
        return Response(response.code, flat, content)

    async def _settle(self, pending: Deferred) -> Any:
        # Streaming a tarball yields to the reactor between chunks: pump until the result is
        # there (``called`` is no use: a Deferred waiting on another one counts as called).
        results: list[Any] = []
        pending.addBoth(lambda result: results.append(result) or result)
        for turn in range(MAX_TURNS):
            self.client.flush()
            if self.upstream_http is not None:
                self.upstream_http.flush()
            if results:
                return await pending
            await task.deferLater(reactor, 0, lambda: None)
            if self.skip_idle_time and turn % 10 == 9 and self.clock.getDelayedCalls():
                self.clock.advance(min(call.getTime() for call in self.clock.getDelayedCalls()) - self.clock.seconds())
        raise AssertionError(f"no answer after {MAX_TURNS} turns of the reactor: the request hangs")

    async def user(self, name: str, password: str = "secret-pw") -> str:
        """Register ``name`` and return a token of theirs."""
        answer = await self.call("PUT", f"/-/user/org.couchdb.user:{name}",
                                 {"name": name, "password": password, "email": f"{name}@example.test"})
        assert answer.status == 201, answer.body
        return answer.json()["token"]


def build(tmp_path: Path, rules: dict[str, Any] | None = None, admins: tuple[str, ...] = (),
          renderer: Renderer | None = None, upstream: Resource | None = None,
          wrap_storage: Callable[[FilesystemStorage], Any] | None = None, objects: StoredObjects | None = None,
          **settings: str) -> InProcess:
    """nopard's app as makeService wires it, settings as NOPARD_* keywords (lower case).

    ``renderer`` renders readmes (default: at once, in-process); ``upstream``
    is the upstream registry's resource (default: one that holds nothing);
    ``wrap_storage`` wraps the store every part uses (to count its calls, say); ``objects``
    stands in for the S3 store tarballs are redirected to (with ``tarball_redirect`` set
    through ``settings.update``, as load_settings refuses it on a filesystem store).
    """
    env = {"NOPARD_REGISTRY_PATH": str(tmp_path / "registry"), "NOPARD_FORWARDER_URL": UPSTREAM_URL,
           "NOPARD_MAX_USERS": "100",
           **{f"NOPARD_{k.upper()}": v for k, v in settings.items()}}
    base = load_settings({}, env, cwd=str(tmp_path))
    live = LiveSettings(base)
    clock = task.Clock()
    clock.advance(1_800_000_000)
    log = Logger(namespace="nopard.test")
    policy: Policy = parse_policy(rules) if rules is not None else ALLOW_ALL
    if admins:
        policy = Policy(policy.rules, frozenset(admins), policy.groups, policy.enabled)
    hops = ThreadHops()
    storage: Any = FilesystemStorage(str(tmp_path / "registry"), hops)
    if wrap_storage is not None:
        storage = wrap_storage(storage)
    # As nopard.service wires it: the index in front of the store, sharing the documents' budget.
    index = StoreIndex(clock, lambda: live.current.memory_cache_size)
    storage = IndexedStorage(storage, index)
    cache = PreparedCache(lambda: live.current.memory_cache_size - index.bytes_held)
    index.make_room = cache.trim
    coordination = InProcessCoordination()
    changes = ChangeLog(storage, clock.seconds, log)
    registry = Registry(storage, cache, clock, coordination, SigningKeys(storage, clock.seconds), changes)
    upstream_http = StubTreq(upstream if upstream is not None else MissingUpstream())
    upstreams = Upstreams(live, lambda url, token: Upstream(url, upstream_http, live, clock, token, log))
    parts = build_mirror(live, storage, registry, upstreams, cache, clock, str(tmp_path / "spool"), log, coordination,
                         policy, changes)
    metrics = Metrics(clock)
    metrics.live.firewall = parts.firewall
    store_size = StoreSize(storage.usage, clock)
    eviction = metrics.live.mirror = Eviction(live, storage, parts.documents, parts.usage,
                                              StoreLock(storage, clock, "test"), clock, log, metrics)
    metrics.history = History(clock, upstreams.all, store_size, eviction.size_and_limit)
    jobs = SyncJobs(live, upstreams, registry, parts.documents, parts.tarballs, storage, clock, log, owner="test",
                    metrics=metrics, firewall=parts.firewall, use=parts.usage,
                    follower=ChangesFollower(live, upstreams, storage, clock, log))
    jobs.room = eviction.has_room
    users = user_table(base, storage, clock.seconds, run_now)
    accounts = Accounts(live, users, TokenStore(storage, clock.seconds), storage,
                        now=lambda: iso_time(clock.seconds()), limiter=LoginLimiter(live, clock))
    sessions = MemorySessions(clock)
    readmes = ReadmeRenders(renderer if renderer is not None else InlineRenderer(), clock)
    advisories = AdvisoryStore(storage)
    blocks = parts.firewall.blocks
    refresh = AdvisoryRefresh(live, upstream_http, advisories, storage, clock, run_now, str(tmp_path / "spool"), log,
                              "test", metrics,
                              after_import=[lambda report: block_malware(report, blocks, live.current.block_malware)])
    audits = Audits(live, advisories, AuditForwarder(lambda: upstreams.default))
    sync = SyncSchedule(jobs, live, clock, log, refresh, eviction)
    app = RegistryApp(
        settings=live, policy=policy, registry=registry, mirror=parts.mirror, sync=sync,
        status=OperatorStatus(cache, coordination, upstreams.all, parts.firewall, mirror=eviction.figures),
        audits=audits,
        tarball_sizes=partial(stored_tarball_sizes, storage),
        accounts=accounts, weblogins=WebLogins(accounts, clock, sessions), sessions=sessions,
        search=SearchIndex(registry, parts.documents, clock, coordination=coordination, firewall=parts.firewall),
        metrics=metrics,
        health=StoreProbe(storage, clock), store_size=store_size,
        overrides=Overrides(live, base, setting_sources({}, env), storage, clock, log),
        run_cpu=run_now, readmes=readmes, clock=clock, log=log, operator=OperatorCredential(OPERATOR_TOKEN),
        redirects=TarballRedirects(live, files=storage, objects=objects),
        upstream_search=UpstreamSearch(upstreams, live, clock),
        provenance=parts.provenance, firewall=parts.firewall, changes=changes,
    )
    resource = AsPeer(app.resource())
    return InProcess(StubTreq(resource), clock, live, accounts, readmes, resource, sessions, app, storage,
                     upstream_http, index=index, hops=hops, cache=cache, firewall=parts.firewall,
                     metrics=metrics, usage=parts.usage, jobs=jobs, changes=changes)


def _whole(reply: bytes) -> bool:
    """Whether ``reply`` holds a whole HTTP response with a Content-Length."""
    head, found, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:] if found else ():
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def basic(user: str, password: str) -> str:
    """An Authorization header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
