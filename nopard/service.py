"""twistd's entry point, and the one place that builds and wires every component."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from nopard.auth import Accounts
from nopard.auth.htpasswd import HtpasswdFile
from nopard.auth.tokens import TokenStore
from nopard.cache import PreparedCache
from nopard.config import SETTINGS, ConfigError, LiveSettings, Settings, load_settings
from nopard.logs import LogService
from nopard.registry import Registry, iso_time
from nopard.storage.fs import FilesystemStorage
from nopard.web.app import RegistryApp
from nopard.web.site import NopardSite


class Options(usage.Options):
    """Options of ``twistd nopard``: one per setting, each also a NOPARD_* variable."""

    optParameters = [
        [s.option, None, None, f"{s.help} [{s.env}, default: {s.default or '(empty)'}]"]
        for s in SETTINGS
    ]

    def given(self) -> dict[str, str | None]:
        """Setting name -> the text given on the command line, or None."""
        return {s.name: self[s.option] for s in SETTINGS}


def makeService(options: Options) -> IService:
    """Build nopard from its options and the environment; a bad setting stops start-up."""
    from twisted.internet import reactor

    try:
        settings = load_settings(options.given(), os.environ)
        os.makedirs(settings.registry_path, exist_ok=True)
    except ConfigError as error:
        raise SystemExit(f"nopard: {error}") from None
    except OSError as error:
        raise SystemExit(
            f"nopard: NOPARD_REGISTRY_PATH: cannot create {settings.registry_path}: {error.strerror}"
        ) from None
    return build_service(settings, reactor)


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


class Announcement(Service):
    """Logs once, at start, where nopard serves and from which directory."""

    def __init__(self, log: Logger, settings: LiveSettings) -> None:
        self._log = log
        self._settings = settings

    def startService(self) -> None:
        super().startService()
        current = self._settings.current
        self._log.info(
            "nopard serving {registry_path} on {hostname}:{port}",
            event="started",
            registry_path=current.registry_path,
            hostname=current.hostname,
            port=current.port,
        )


def build_service(settings: Settings, reactor: Any) -> MultiService:
    """Wire every component of nopard into one service tree."""
    live = LiveSettings(settings)
    top = MultiService()
    logs = LogService(live)
    logs.setServiceParent(top)

    io_pool = ThreadPool(minthreads=1, maxthreads=8, name="nopard-io")
    cpu_pool = ThreadPool(minthreads=1, maxthreads=2, name="nopard-cpu")
    ThreadPoolService(io_pool).setServiceParent(top)
    ThreadPoolService(cpu_pool).setServiceParent(top)
    run_io = partial(deferToThreadPool, reactor, io_pool)
    run_cpu = partial(deferToThreadPool, reactor, cpu_pool)

    storage = FilesystemStorage(settings.registry_path, run_io)
    cache = PreparedCache(lambda: live.current.memory_cache_size)
    registry = Registry(storage, cache, reactor)
    accounts = Accounts(
        live,
        HtpasswdFile(settings.htpasswd_path, run_cpu),
        TokenStore(storage),
        storage,
        now=lambda: iso_time(reactor.seconds()),
    )
    app = RegistryApp(
        live, registry, accounts, run_cpu, Logger(namespace="nopard.web", observer=logs.publisher)
    )
    site = NopardSite(
        app.resource(), live, reactor, Logger(namespace="nopard.access", observer=logs.publisher)
    )
    endpoint_type = TCP6ServerEndpoint if ":" in settings.hostname else TCP4ServerEndpoint
    endpoint = endpoint_type(reactor, settings.port, interface=settings.hostname)
    listener = StreamServerEndpointService(endpoint, site)
    listener._raiseSynchronously = True  # a port in use stops start-up, as twistd's own do
    listener.setServiceParent(top)
    Announcement(Logger(namespace="nopard", observer=logs.publisher), live).setServiceParent(top)
    return top
