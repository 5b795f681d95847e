"""twistd's entry point, and the one place that builds and wires every component."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from functools import partial
from typing import Any

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from nopard.advisories.audit import Audits
from nopard.advisories.malware import block_malware
from nopard.advisories.store import AdvisoryStore
from nopard.auth import Accounts
from nopard.auth.htpasswd import UserTable
from nopard.auth.limits import FAILED_SCRIPT, RETRY_AFTER_SCRIPT, LoginLimiter, SharedLoginLimiter
from nopard.auth.operator import OperatorCredential, OperatorTokenService
from nopard.auth.stored_users import NEWS, UserAdoption, local_file_to_adopt, user_table
from nopard.auth.tokens import TokenStore, TokenSweep
from nopard.auth.weblogin import WebLogins
from nopard.catalog.changes import ChangeLog
from nopard.catalog.search import SearchIndex
from nopard.cluster.coordination import DEGRADED_FRESHNESS, InProcessCoordination, RedisCoordination
from nopard.cluster.feed import ChangeFeed
from nopard.cluster.history import shared_days
from nopard.cluster.keyspace import Keyspace, failed_login_script, retry_after_script
from nopard.cluster.link import RedisLink
from nopard.cluster.resp import SharedStateServer
from nopard.cluster.sessions import MemorySessions, RedisSessions
from nopard.cluster.stamps import EPOCH_NEWS
from nopard.domain.history import BUCKET_SECONDS, BUCKETS
from nopard.domain.prepared import PreparedCache
from nopard.domain.times import iso_time
from nopard.jobs.advisories import AdvisoryRefresh
from nopard.jobs.changes import ChangesFollower
from nopard.jobs.eviction import Eviction
from nopard.jobs.schedule import SyncSchedule
from nopard.jobs.sync import StoreLock, SyncJobs
from nopard.local.packages import Registry
from nopard.local.signing import SigningKeys
from nopard.mirror import build_mirror
from nopard.mirror.search import UpstreamSearch
from nopard.mirror.spool import remove_orphans
from nopard.mirror.upstreams import Upstreams
from nopard.mirror.usage import UsageFlusher
from nopard.mirror.writeback import WriteBehindService
from nopard.ops.daemon import pid_is_running
from nopard.ops.daemon import prepare as prepare_daemon
from nopard.ops.history import History
from nopard.ops.logs import LogService, twistd_log_stream
from nopard.ops.metrics import Metrics, StoreProbe, StoreSize
from nopard.ops.status import OperatorStatus
from nopard.ops.supervisor import (
    METRICS_DIR_ENV,
    WorkerPool,
    WorkerRole,
    die_with_supervisor,
    handoff_endpoints,
    supervisor_tree,
    worker_command,
    worker_endpoints,
    worker_environment,
    worker_role,
)
from nopard.settings.acl import ALLOW_ALL, Policy, load_policy, ruled_upstreams
from nopard.settings.config import SETTINGS, ConfigError, LiveSettings, Settings, load_settings, setting_sources
from nopard.settings.firstrun import ForwarderAnnouncement, ForwarderOrigin, choose_forwarder, given_forwarder
from nopard.settings.overrides import Overrides, StartGate
from nopard.storage.fs import FilesystemStorage
from nopard.storage.index import FACTS_TTL, IndexedStorage, StoreIndex
from nopard.storage.sizes import stored_tarball_sizes
from nopard.upstream.agents import LiveAgent
from nopard.upstream.audit import AuditForwarder
from nopard.upstream.client import Upstream
from nopard.upstream.pool import UpstreamPoolService, upstream_agent, upstream_pool
from nopard.web.app import RegistryApp
from nopard.web.readme_renders import ReadmeRenders
from nopard.web.readme_worker import ReadmeWorker
from nopard.web.redirects import TarballRedirects
from nopard.web.site import NopardSite


class Options(usage.Options):
    """Options of ``twistd nopard``: one per setting, each also a NOPARD_* variable."""

    optParameters = [
        [s.option, None, None, f"{s.help} [{s.env}, default: {s.default or '(empty)'}]"]
        for s in SETTINGS if s.name != "listen"
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on this Twisted endpoint string, e.g. tcp:5984:interface=127.0.0.1 or
        unix:/run/nopard/nopard.sock; may be repeated [NOPARD_LISTEN, space-separated]."""
        self["listen"].append(description)

    def given(self) -> dict[str, str | None]:
        """Setting name -> the text given on the command line, or None."""
        given = {s.name: self[s.option] for s in SETTINGS if s.name != "listen"}
        given["listen"] = " ".join(self["listen"]) if self["listen"] else None
        return given


def makeService(options: Options) -> IService:
    """Build nopard from its options and the environment; a bad setting stops start-up."""
    from twisted.internet import reactor

    try:
        settings = load_settings(options.given(), os.environ)
        sources = setting_sources(options.given(), os.environ)
        # PID file, run-as user, logfile and home become twistd's options (nopard/daemon.py).
        daemon = prepare_daemon(settings, options)
        settings = daemon.settings
        policy = load_policy(settings.config)  # a bad NOPARD_CONFIG stops start-up here
        os.makedirs(settings.registry_path, exist_ok=True)
    except ConfigError as error:
        raise SystemExit(f"nopard: {error}") from None
    except OSError as error:
        raise SystemExit(
            f"nopard: NOPARD_REGISTRY_PATH: cannot create {settings.registry_path}: {error.strerror}"
        ) from None
    role = worker_role(os.environ)
    if role is not None:
        die_with_supervisor(os.environ)
    try:
        if settings.workers > 1 and role is None:
            app = build_supervisor(settings, reactor, twistd_log_stream(options), options.given(), sources)
        else:
            settings, sources, forwarder = choose_forwarder(settings, sources, os.environ)
            app = build_service(settings, reactor, log_stream=twistd_log_stream(options), policy=policy,
                                sources=sources, worker=role, forwarder=forwarder)
    except ConfigError as error:
        raise SystemExit(f"nopard: {error}") from None
    return daemon.wrap(app, reactor)


class ThreadPoolService(Service):
    """Starts and stops a thread pool with the application."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


def listen_descriptions(settings: Settings) -> list[str]:
    """Where nopard listens, as Twisted endpoint strings: NOPARD_LISTEN, else NOPARD_HOSTNAME and NOPARD_PORT."""
    if settings.listen:
        return list(settings.listen)
    kind = "tcp6" if ":" in settings.hostname else "tcp"
    return [f"{kind}:{settings.port}:interface={quoteStringArgument(settings.hostname)}"]


def listen_source(sources: Mapping[str, str]) -> str:
    """The setting a listening error names: where NOPARD_LISTEN came from, else NOPARD_PORT."""
    return {"option": "--listen", "environment": "NOPARD_LISTEN"}.get(sources["listen"], "NOPARD_PORT")


def listeners(settings: Settings, site: NopardSite, reactor: Any, source: str) -> list[IService]:
    """One service per endpoint; ConfigError naming ``source`` for a string Twisted cannot use.

    strports.service, as twistd's own plugins use it: it listens before twistd
    drops privileges, and a port in use stops start-up.
    """
    made: list[IService] = []
    for description in listen_descriptions(settings):
        try:
            made.append(strports.service(description, site, reactor=reactor))
        except (ValueError, KeyError, IndexError, TypeError) as error:
            # KeyError/IndexError: systemd: with no such inherited socket (LISTEN_FDS).
            raise ConfigError(f"{source}: cannot listen on {description!r}: {error or type(error).__name__}") from None
    return made


class Announcement(Service):
    """Logs once, at start, where nopard serves and from which directory."""

    def __init__(self, log: Logger, settings: LiveSettings) -> None:
        self._log = log
        self._settings = settings

    def startService(self) -> None:
        super().startService()
        current = self._settings.current
        self._log.info(
            "nopard serving {registry_path} on {listen}",
            event="started",
            registry_path=current.registry_path,
            listen=" ".join(listen_descriptions(current)),
            hostname=current.hostname,
            port=current.port,
        )


def open_storage(settings: Settings, reactor: Any, run_io: Any, top: MultiService) -> Any:
    """The storage backend NOPARD_STORAGE names; S3 gets its own bounded pool for boto3 calls."""
    if settings.storage != "s3":
        return FilesystemStorage(settings.registry_path, run_io)
    from nopard.storage.s3 import S3Storage, s3_client

    s3_pool = ThreadPool(minthreads=1, maxthreads=16, name="nopard-s3")
    ThreadPoolService(s3_pool).setServiceParent(top)
    # One connection per thread, so no boto3 call waits for a connection.
    client = s3_client(max_connections=s3_pool.max)
    return S3Storage(client, settings.s3_bucket, settings.s3_prefix, partial(deferToThreadPool, reactor, s3_pool))


def tarball_redirects(live: LiveSettings, storage: Any) -> TarballRedirects:
    """Tarball GETs handed to nginx (a filesystem store) or redirected to the bucket (S3).

    Chosen by NOPARD_STORAGE, not by the store's class: the store may be wrapped (an index in
    front of it, say), and the wrapper passes ``relative_url`` / ``presigned_get`` on.
    """
    if live.current.storage == "s3":
        return TarballRedirects(live, objects=storage)
    return TarballRedirects(live, files=storage)


class RedisService(Service):
    """Connects to Redis at start (the link, then the change feed) and lets go of it at stop."""

    def __init__(self, link: RedisLink, feed: ChangeFeed) -> None:
        self.link = link
        self.feed = feed

    def startService(self) -> None:
        super().startService()
        self.link.start()
        self.feed.start()

    def stopService(self) -> Any:
        super().stopService()

        async def stop() -> None:
            await self.feed.stop()
            await self.link.stop()

        return Deferred.fromCoroutine(stop())


def open_coordination(settings: Settings, reactor: Any, cache: PreparedCache, logs: LogService,
                      top: MultiService, storage: IndexedStorage, users: UserTable) -> tuple[Any, Any]:
    """What instances share: through Redis with NOPARD_REDIS_URL, else nothing (one process).

    With Redis, ``storage``'s writes and ``users``' changes are announced to the other
    processes, and theirs make its index forget and ``users`` read again (cluster/feed.py).
    """
    sessions = MemorySessions(reactor)
    if not settings.redis_url:
        return InProcessCoordination(), sessions
    log = Logger(namespace="nopard.redis", observer=logs.publisher)
    link = RedisLink(settings.redis_url, reactor, log)
    index = storage.index
    coordination = RedisCoordination(link, reactor, log, cache.clear, settings.lock_ttl)
    stamps = coordination.stamp_keeper

    def changed(name: str) -> None:
        if name == NEWS:
            users.changed()
            return
        stamps.heard(name)
        if name == EPOCH_NEWS:  # changes made while an instance was degraded were not announced
            index.clear()
            users.changed()
        else:
            index.changed(name)

    def reset() -> None:
        stamps.reset()
        index.clear()
        users.changed()

    feed = ChangeFeed(settings.redis_url, link, reactor, log, changed, reset)
    storage.announce = users.announce = stamps.announce = feed.announce
    stamps.news_arrives = lambda: feed.live
    index.trusted_for = lambda: FACTS_TTL if feed.live else DEGRADED_FRESHNESS
    RedisService(link, feed).setServiceParent(top)
    return coordination, RedisSessions(link, sessions)


def login_limiter(live: LiveSettings, reactor: Any, coordination: Any) -> Any:
    """Failed-login counts: in this process, and in Redis too when instances share one."""
    local = LoginLimiter(live, reactor)
    if isinstance(coordination, RedisCoordination):
        return SharedLoginLimiter(coordination.link, local, live, reactor)
    return local


def build_supervisor(settings: Settings, reactor: Any, log_stream: Any, given: Mapping[str, str | None],
                     sources: Mapping[str, str]) -> MultiService:
    """NOPARD_WORKERS above 1: the supervisor, which binds the listeners and runs the workers on them.

    Without NOPARD_REDIS_URL it also holds what the workers share (cluster/keyspace.py,
    served by cluster/resp.py); with it, the workers share through that Redis.
    """
    live = LiveSettings(settings)
    logs = LogService(live, log_stream, reactor, batch_lines=True)
    endpoints = handoff_endpoints(listen_descriptions(settings), reactor, listen_source(sources))
    shared = None
    if not settings.redis_url:
        shared = SharedStateServer(shared_keyspace(reactor, settings.memory_cache_size), reactor)
    log = Logger(namespace="nopard.supervisor", observer=logs.publisher)
    environment = worker_environment(os.environ, given, {s.name: s.env for s in SETTINGS})
    pool = WorkerPool(settings.workers, endpoints, worker_command(), environment, reactor, log,
                      logs.write_line, shared=shared,
                      metrics_dir=os.path.join(settings.run_path, "metrics") if settings.run_path else None)
    return supervisor_tree(pool, [logs, SupervisorAnnouncement(log, settings)])


def shared_keyspace(clock: Any, document_budget: int) -> Keyspace:
    """The supervisor's keyspace, knowing every Lua script nopard sends (cluster's and the login limits')."""
    keyspace = Keyspace(clock, document_budget=document_budget)
    keyspace.register(RETRY_AFTER_SCRIPT, retry_after_script)
    keyspace.register(FAILED_SCRIPT, failed_login_script)
    return keyspace


class SupervisorAnnouncement(Service):
    """Logs once, at start, how many workers serve where."""

    def __init__(self, log: Logger, settings: Settings) -> None:
        self._log = log
        self._settings = settings

    def startService(self) -> None:
        super().startService()
        self._log.info("nopard supervising {workers} workers on {listen}", event="supervisor-started",
                       workers=self._settings.workers, listen=" ".join(listen_descriptions(self._settings)),
                       shared="redis" if self._settings.redis_url else "supervisor")


def build_service(
    settings: Settings, reactor: Any, log_stream: Any = None, policy: Policy | None = None,
    sources: Mapping[str, str] | None = None, worker: WorkerRole | None = None,
    forwarder: ForwarderOrigin | None = None,
) -> MultiService:
    """Wire every component of nopard into one service tree.

    ``log_stream``: where nopard's lines go without NOPARD_LOGFILE (stdout
    under ``twistd -n``); None sends them into twistd's log. ``sources``:
    where each setting came from (config.setting_sources; default: the
    environment, no options). ``worker``: this process is one of a supervisor's
    workers. ``forwarder``: where NOPARD_FORWARDER_URL came from (settings/firstrun.py).
    """
    if sources is None:
        sources = setting_sources({}, os.environ)
    forwarder = forwarder or given_forwarder(settings, sources["forwarder_url"])
    live = LiveSettings(settings)
    if policy is None:
        policy = load_policy(settings.config) if settings.config else ALLOW_ALL
    # NOPARD_ADMINS: admins without writing a rules file; they count as NOPARD_CONFIG's do.
    policy = dataclasses.replace(policy, admins=policy.admins | frozenset(settings.admins))
    top = MultiService()
    logs = LogService(live, log_stream, reactor, batch_lines=True)
    logs.setServiceParent(top)
    metrics = Metrics(reactor, os.environ.get(METRICS_DIR_ENV) if worker is not None else None,
                      worker.name if worker is not None else None)

    io_pool = ThreadPool(minthreads=1, maxthreads=8, name="nopard-io")
    cpu_pool = ThreadPool(minthreads=1, maxthreads=2, name="nopard-cpu")
    ThreadPoolService(io_pool).setServiceParent(top)
    ThreadPoolService(cpu_pool).setServiceParent(top)
    run_io = partial(deferToThreadPool, reactor, io_pool)
    run_cpu = partial(deferToThreadPool, reactor, cpu_pool)
    # Readmes render in a child process of their own, never in cpu_pool (bcrypt logins, publishes).
    readme_worker = ReadmeWorker(reactor, Logger(namespace="nopard.readme", observer=logs.publisher))
    readme_worker.setServiceParent(top)

    # Warm tarballs are found (and small ones held) in memory, within the documents' budget.
    index = StoreIndex(reactor, lambda: live.current.memory_cache_size)
    storage = IndexedStorage(open_storage(settings, reactor, run_io, top), index)
    # Started early: the first read of the stored overrides begins before anything else serves.
    overrides = Overrides(live, settings, sources, storage, reactor,
                          Logger(namespace="nopard.settings", observer=logs.publisher))
    overrides.setServiceParent(top)
    cache = PreparedCache(lambda: live.current.memory_cache_size - index.bytes_held)
    index.make_room = cache.trim
    users = user_table(settings, storage, reactor.seconds, run_cpu)
    coordination, sessions = open_coordination(settings, reactor, cache, logs, top, storage, users)
    signing = SigningKeys(storage, reactor.seconds)
    changes = ChangeLog(storage, reactor.seconds, Logger(namespace="nopard.changes", observer=logs.publisher))
    registry = Registry(storage, cache, reactor, coordination, signing, changes)
    # Rebuilt when NOPARD_PROXY_URL, NOPARD_IGNORE_CERT or NOPARD_UPSTREAM_TIMEOUT change at runtime.
    agent = LiveAgent(live, lambda current, pool: upstream_agent(current, reactor, pool),
                      lambda: upstream_pool(reactor))
    UpstreamPoolService(agent).setServiceParent(top)
    http = HTTPClient(agent)
    upstream_log = Logger(namespace="nopard.upstream", observer=logs.publisher)
    upstreams = ruled_upstreams(Upstreams, policy)(
        live, lambda url, token: Upstream(url, http, live, reactor, token, upstream_log, metrics))
    spool_dir = os.path.join(settings.registry_path, ".spool")
    mirror_log = Logger(namespace="nopard.mirror", observer=logs.publisher)
    # Fetched copies are written after their answers only while no other process shares the store.
    parts = build_mirror(live, storage, registry, upstreams, cache, reactor, spool_dir, mirror_log, coordination,
                         policy, changes, write_behind=not settings.redis_url and worker is None)
    WriteBehindService(parts.writes, reactor, mirror_log).setServiceParent(top)  # stops first, writing
    # Spools of fetches killed with their process (a worker after kill -9, nopard after a crash).
    reactor.callWhenRunning(remove_orphans, spool_dir, pid_is_running)
    mirror, documents, tarballs = parts.mirror, parts.documents, parts.tarballs
    sync_log = Logger(namespace="nopard.sync", observer=logs.publisher)
    # The same machine and port after a crash is the same owner: it takes its own lock back.
    owner = f"{socket.gethostname()}:{' '.join(settings.listen) or settings.port}"
    if worker is not None:
        owner += f"#worker{worker.index}"  # one sync run among the workers, not one each
    metrics.live.upstreams = upstreams.all
    metrics.live.cache = cache
    metrics.live.coordination = coordination
    metrics.live.firewall = parts.firewall
    metrics.live.writes = parts.writes
    # The store's size is a walk of the directory: nothing to walk when the data is in S3.
    metrics.live.store = StoreSize(storage.usage, reactor)
    eviction = metrics.live.mirror = Eviction(live, storage, documents, parts.usage, StoreLock(storage, reactor, owner),
                                              reactor, sync_log, metrics)
    metrics.history = History(reactor, upstreams.all, metrics.live.store, eviction.size_and_limit,
                              shared=shared_days(coordination, reactor, BUCKET_SECONDS, BUCKET_SECONDS * BUCKETS))
    metrics.history.setServiceParent(top)
    jobs = SyncJobs(live, upstreams, registry, documents, tarballs, storage, reactor, sync_log, owner, metrics=metrics,
                    firewall=parts.firewall, use=parts.usage,
                    follower=ChangesFollower(live, upstreams, storage, reactor, sync_log))
    jobs.room = eviction.has_room
    UsageFlusher(parts.usage, reactor).setServiceParent(top)  # before the listeners: it stops after them, flushing
    advisories = AdvisoryStore(storage)
    blocks = parts.firewall.blocks  # its changes reach every instance at once
    refresh_advisories = AdvisoryRefresh(
        live, http, advisories, storage, reactor, run_cpu, os.path.join(settings.registry_path, ".spool"), sync_log,
        owner, metrics, after_import=[lambda report: block_malware(report, blocks, live.current.block_malware)])
    sync = SyncSchedule(jobs, live, reactor, sync_log, refresh_advisories, eviction)
    sync.setServiceParent(top)
    overrides.on_change.append(sync.follow_interval)
    tokens = TokenStore(storage, reactor.seconds)
    TokenSweep(tokens, Logger(namespace="nopard", observer=logs.publisher), reactor).setServiceParent(top)
    UserAdoption(users, local_file_to_adopt(settings), Logger(namespace="nopard", observer=logs.publisher)
                 ).setServiceParent(top)
    accounts = Accounts(live, users, tokens, storage, now=lambda: iso_time(reactor.seconds()),
                        limiter=login_limiter(live, reactor, coordination))
    # nopard-admin's credential for sync and prefetch, its file made at start (after privileges drop).
    operator = OperatorCredential()
    OperatorTokenService(operator, settings.admin_token_path,
                         Logger(namespace="nopard", observer=logs.publisher)).setServiceParent(top)
    audits = Audits(live, advisories, AuditForwarder(lambda: upstreams.default))
    app = RegistryApp(
        settings=live, policy=policy, registry=registry, mirror=mirror, sync=sync, accounts=accounts,
        status=OperatorStatus(cache, coordination, upstreams.all, parts.firewall, forwarder.shown(live, overrides),
                              eviction.figures),
        audits=audits,
        tarball_sizes=partial(stored_tarball_sizes, storage),
        weblogins=WebLogins(accounts, reactor, sessions), sessions=sessions,
        search=SearchIndex(registry, documents, reactor, coordination=coordination, firewall=parts.firewall),
        metrics=metrics,
        health=StoreProbe(storage, reactor), store_size=metrics.live.store, overrides=overrides,
        run_cpu=run_cpu, readmes=ReadmeRenders(readme_worker, reactor), clock=reactor,
        log=Logger(namespace="nopard.web", observer=logs.publisher), operator=operator,
        redirects=tarball_redirects(live, storage),
        upstream_search=UpstreamSearch(upstreams, live, reactor),
        provenance=parts.provenance, firewall=parts.firewall, changes=changes,
    )
    # The signing key is made at the first start (the first of several instances to get there wins).
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(signing.ring()).addErrback(
        lambda failure: upstream_log.failure("the signing keys could not be read", failure)))
    site = NopardSite(
        StartGate(app.resource(), overrides), live, reactor,
        Logger(namespace="nopard.access", observer=logs.publisher), metrics,
        worker=worker.name if worker is not None else None, lines=logs,
    )
    if worker is not None:
        served: list[IService] = [StreamServerEndpointService(e, site) for e in worker_endpoints(worker, reactor)]
    else:
        served = listeners(settings, site, reactor, listen_source(sources))
    for listener in served:
        listener.setServiceParent(top)
    Announcement(Logger(namespace="nopard", observer=logs.publisher), live).setServiceParent(top)
    ForwarderAnnouncement(forwarder, Logger(namespace="nopard", observer=logs.publisher)).setServiceParent(top)
    return top
