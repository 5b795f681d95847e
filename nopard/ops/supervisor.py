"""NOPARD_WORKERS: one supervisor process and N worker processes serving the same sockets.

The supervisor (``twistd nopard`` with NOPARD_WORKERS above 1) binds every listener
NOPARD_LISTEN / NOPARD_HOSTNAME:NOPARD_PORT names, before twistd drops privileges, and
never accepts on them: it hands each socket to every worker, which adopts it
(``AdoptedStreamServerEndpoint``), so the kernel spreads connections over the workers.
A worker is ``twistd --nodaemon nopard`` again, told by its environment (WORKER_ENV,
FDS_ENV) which sockets it inherited and which worker it is.

Supervision: a worker that exits is started again, at once when it had run for
STABLE_SECONDS, else after a backoff doubling up to MAX_BACKOFF, so a crash loop does
not spin. SIGTERM on the supervisor closes its copy of the sockets and sends SIGTERM to every
worker (each stops accepting and finishes its requests in flight, as GracefulService
does; new connections are then refused), waits for them (SIGKILL after GRACE_SECONDS
and a margin), then exits; a worker still running then is killed, and one whose supervisor
died anyhow is killed by the kernel (``die_with_supervisor``). The workers' log lines
come to the supervisor through a pipe and are written by it alone, so NOPARD_LOGFILE
has one writer: its size rotation and SIGUSR1 reopening are the supervisor's.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nopard.ops.daemon import GRACE_SECONDS
from nopard.settings.config import ConfigError

#: Which worker a process is (1..N); set for workers only.
WORKER_ENV = "NOPARD_WORKER"
#: The inherited listening sockets: ``fd:family`` pairs, comma-separated.
FDS_ENV = "NOPARD_WORKER_FDS"
#: The supervisor's pid, which a worker must not outlive (``die_with_supervisor``).
SUPERVISOR_ENV = "NOPARD_SUPERVISOR_PID"
#: Where the workers' metrics are added up (prometheus_client's multiprocess mode, ops/metrics.py).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
STABLE_SECONDS = 10.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Seconds a worker ended by SIGTERM waits to be started again: the supervisor's own SIGTERM may follow.
TERM_WAIT = 1.0
# Seconds past the workers' own grace before a worker still draining is killed.
KILL_MARGIN = 10.0
FIRST_CHILD_FD = 3
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# A worker line longer than this is cut (a runaway traceback must not grow the supervisor).
MAX_LINE = 64 * 1024

_FAMILIES = {TCP4ServerEndpoint: socket.AF_INET, TCP6ServerEndpoint: socket.AF_INET6,
             UNIXServerEndpoint: socket.AF_UNIX}


@dataclass(frozen=True)
class WorkerRole:
    """What a worker learns from its environment: who it is and the sockets it serves."""

    index: int
    sockets: tuple[tuple[int, int], ...]  # (fd, address family)

    @property
    def name(self) -> str:
        """How the worker is named in headers and log lines."""
        return str(self.index)


def worker_role(environ: Mapping[str, str]) -> WorkerRole | None:
    """This process's role when it is a worker of a supervisor, else None."""
    if WORKER_ENV not in environ:
        return None
    pairs = [item.split(":") for item in environ.get(FDS_ENV, "").split(",") if item]
    return WorkerRole(int(environ[WORKER_ENV]), tuple((int(fd), int(family)) for fd, family in pairs))


def die_with_supervisor(environ: Mapping[str, str]) -> None:
    """Make this worker die (SIGKILL) when its supervisor does, however the supervisor ends.

    A worker hanging in its stop, or a supervisor killed outright, must not leave a worker
    serving the shared sockets with nobody supervising it: Linux's parent-death signal does it
    in the kernel (prctl PR_SET_PDEATHSIG). A supervisor already gone before that was set is
    noticed by the parent pid and the worker exits. Elsewhere (no prctl) nothing is done.
    """
    supervisor = int(environ.get(SUPERVISOR_ENV) or 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if supervisor and os.getppid() != supervisor:
        raise SystemExit(f"nopard: worker {environ.get(WORKER_ENV)}: its supervisor (pid {supervisor}) is gone")


def worker_endpoints(role: WorkerRole, reactor: Any) -> list[AdoptedStreamServerEndpoint]:
    """The endpoints of the inherited sockets, for StreamServerEndpointService (and the graceful stop)."""
    return [AdoptedStreamServerEndpoint(reactor, fd, family) for fd, family in role.sockets]


def handoff_endpoints(descriptions: list[str], reactor: Any, source: str) -> list[Any]:
    """The endpoints of ``descriptions`` a supervisor can hand to workers; ConfigError for the others.

    A TLS listener (``ssl:``, ``txsni:``...) is refused: its handshake would run in
    the supervisor's accepted socket, not in a worker; terminate TLS in front of
    nopard (deploy/nginx) or run one worker.
    """
    endpoints = []
    for description in descriptions:
        try:
            endpoint = serverFromString(reactor, description)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise ConfigError(f"{source}: cannot listen on {description!r}: {error or type(error).__name__}") from None
        if type(endpoint) not in _FAMILIES and not isinstance(endpoint, AdoptedStreamServerEndpoint):
            raise ConfigError(
                f"NOPARD_WORKERS: {description!r} cannot be shared by workers (only tcp:, tcp6:, unix: and "
                "systemd: listeners can); terminate TLS in front of nopard, or set NOPARD_WORKERS=1")
        endpoints.append(endpoint)
    return endpoints


class _Bound:
    """A socket the supervisor listens on and never accepts from."""

    def __init__(self, endpoint: Any) -> None:
        result: list[Any] = []
        endpoint.listen(Factory()).addBoth(result.append)  # these endpoints listen synchronously
        if isinstance(result[0], Failure):
            result[0].raiseException()
        self.port: IListeningPort = result[0]
        self.port.stopReading()  # a FileDescriptor: the workers accept
        # Closing this copy at stop must not shut the socket down under workers still accepting
        # on it (EINVAL in their accept); Twisted skips the shutdown for adopted sockets alike.
        self.port._shouldShutdown = False
        self.family = (endpoint.addressFamily if isinstance(endpoint, AdoptedStreamServerEndpoint)
                       else _FAMILIES[type(endpoint)])
        self.fd: int = self.port.fileno()


class _Worker(ProcessProtocol):
    """One worker process: its output relayed line by line, its end reported to the pool."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.started = pool.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._partial.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        for line in lines:
            self.pool.write_line(line.decode("utf-8", "replace") + "\n")
        if len(rest) > MAX_LINE:
            self.pool.write_line(rest[:MAX_LINE].decode("utf-8", "replace") + "\n")
            rest = b""
        self._partial[fd] = rest

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.pool.write_line(rest.decode("utf-8", "replace") + "\n")
                self._partial[fd] = b""
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """Binds the listeners, runs ``count`` workers on them and keeps them running until stopped.

    ``command``: the worker's argv; ``environment``: its base environment (the
    supervisor's settings as NOPARD_* variables); ``write_line``: where the workers'
    log lines go; ``shared``: the state the workers share without Redis (a service
    with a ``url``, cluster/resp.SharedStateServer), started before the first worker
    and stopped after the last one ended; None: the workers keep NOPARD_REDIS_URL.
    ``metrics_dir``: the workers' PROMETHEUS_MULTIPROC_DIR, emptied at start (None: a
    private temporary directory, removed at stop).
    """

    def __init__(self, count: int, endpoints: list[Any], command: list[str], environment: Mapping[str, str],
                 reactor: Any, log: Logger, write_line: Callable[[str], None], shared: Any = None,
                 grace: float = GRACE_SECONDS, metrics_dir: str | None = None) -> None:
        self.count = count
        self.metrics_dir = metrics_dir
        self._temporary_metrics = False
        self.reactor = reactor
        self.write_line = write_line
        self._endpoints = endpoints
        self._command = command
        self._environment = dict(environment)
        self.shared = shared
        self._grace = grace
        self._log = log
        self._bound: list[_Bound] = []
        self.workers: dict[int, _Worker] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._terminated: dict[int, tuple[_Worker, str]] = {}  # ended by SIGTERM, not started again yet
        self.restarted = 0  # how many workers were started again (status, tests)
        self._stopping = False

    def privilegedStartService(self) -> None:
        """Bind every listener, as strports.service would, before twistd drops privileges."""
        super().privilegedStartService()
        self._bound = [_Bound(endpoint) for endpoint in self._endpoints]

    def startService(self) -> None:
        """Start every worker."""
        super().startService()
        if not self._bound:  # started without privilegedStartService (an in-process test)
            self._bound = [_Bound(endpoint) for endpoint in self._endpoints]
        if self.shared is not None:
            self.shared.startService()
            self._environment["NOPARD_REDIS_URL"] = self.shared.url
        # After privileges dropped: the workers, running as the same user, write there.
        if self.metrics_dir is None:
            self.metrics_dir, self._temporary_metrics = tempfile.mkdtemp(prefix="nopard-metrics-"), True
        else:  # counts of an earlier run would add up with this one's
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            os.makedirs(self.metrics_dir, mode=0o700)
        self._environment[METRICS_DIR_ENV] = self.metrics_dir
        for index in range(1, self.count + 1):
            self._spawn(index)
        # However the stop went (a worker that hangs, a stop cut short), none outlives the supervisor.
        self.reactor.addSystemEventTrigger("after", "shutdown", self.kill_survivors)

    def pids(self) -> dict[int, int]:
        """Worker index -> pid of the workers running now."""
        return {index: w.pid for index, w in self.workers.items() if w.pid is not None}

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        environment = dict(self._environment)
        environment[WORKER_ENV] = str(index)
        environment[SUPERVISOR_ENV] = str(os.getpid())
        environment[FDS_ENV] = ",".join(f"{FIRST_CHILD_FD + n}:{bound.family}" for n, bound in enumerate(self._bound))
        child_fds: dict[int, int | str] = {1: "r", 2: "r"}
        for n, bound in enumerate(self._bound):
            child_fds[FIRST_CHILD_FD + n] = bound.fd
        worker = _Worker(self, index)
        process = self.reactor.spawnProcess(worker, self._command[0], self._command, env=environment,
                                            childFDs=child_fds)
        worker.pid = process.pid
        self.workers[index] = worker
        self._log.info("worker {index} started as pid {pid}", index=index, pid=worker.pid, event="worker-started")

    def ended(self, worker: _Worker, reason: Failure) -> None:
        """A worker exited: start it again unless the pool is stopping, after a backoff if it was quick.

        A worker stopped by a SIGTERM of its own is started again only TERM_WAIT seconds
        later: under systemd (KillMode=control-group) every process of the unit gets SIGTERM
        at once, and an idle worker may be gone before the supervisor handles its own.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        how = getattr(reason.value, "signal", None)
        status = f"signal {how}" if how else f"status {getattr(reason.value, 'exitCode', '?')}"
        if self._stopping:
            self._stopped(worker, status)
            return
        if how == signal.SIGTERM and worker.index not in self._terminated:
            self._terminated[worker.index] = (worker, status)
            self._restarts[worker.index] = self.reactor.callLater(TERM_WAIT, self.ended, worker, reason)
            return
        self._terminated.pop(worker.index, None)
        lived = self.reactor.seconds() - worker.started
        failures = 0 if lived >= STABLE_SECONDS else self._failures.get(worker.index, 0) + 1
        self._failures[worker.index] = failures
        delay = 0.0 if failures == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failures - 1))
        self._log.warn("worker {index} (pid {pid}) exited ({status}) after {lived:.1f} s; starting it again "
                       "in {delay:g} s", index=worker.index, pid=worker.pid, status=status, lived=lived,
                       delay=delay, event="worker-exited")
        self.restarted += 1
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def _stopped(self, worker: _Worker, status: str) -> None:
        self._log.info("worker {index} (pid {pid}) stopped ({status})", index=worker.index, pid=worker.pid,
                       status=status, event="worker-stopped")

    def stopService(self) -> Deferred[None]:
        """SIGTERM every worker, wait for them to drain (SIGKILL past the grace), then close the sockets."""
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        for worker, status in self._terminated.values():  # stopped by the same SIGTERM, just before
            self._stopped(worker, status)
        self._terminated.clear()
        # The workers close their copies of the sockets as they start draining; once this one is
        # closed too, new connections are refused instead of waiting in a backlog nobody serves.
        for bound in self._bound:
            bound.port.stopListening()
        self._bound = []
        running = list(self.workers.values())
        for worker in running:
            self._signal(worker, "TERM")
        killer = self.reactor.callLater(self._grace + KILL_MARGIN, self._kill_all)
        done: Deferred[None] = Deferred()

        def finished() -> None:
            if killer.active():
                killer.cancel()
            if self._temporary_metrics and self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            result = self.shared.stopService() if self.shared is not None else None
            if isinstance(result, Deferred):
                result.addBoth(lambda _: done.callback(None))
            else:
                done.callback(None)

        remaining = [len(running)]

        def one_ended(_: Any) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                finished()

        if not running:
            finished()
        for worker in running:
            worker.ended.addCallback(one_ended)
        return done

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            self._log.warn("worker {index} (pid {pid}) still running after {grace} s; killing it",
                           index=worker.index, pid=worker.pid, grace=self._grace, event="worker-killed")
            self._signal(worker, "KILL")

    def kill_survivors(self) -> None:
        """SIGKILL every worker still running (the supervisor is exiting)."""
        for worker in list(self.workers.values()):
            if worker.pid is None:
                continue
            self._log.warn("worker {index} (pid {pid}) still running as the supervisor exits; killing it",
                           index=worker.index, pid=worker.pid, event="worker-killed")
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except OSError:
                pass  # gone meanwhile

    @staticmethod
    def _signal(worker: _Worker, name: str) -> None:
        transport = worker.transport
        try:
            if transport is not None:
                transport.signalProcess(name)
        except Exception:  # noqa: BLE001  # already gone (ProcessExitedAlready): nothing to stop
            pass


def worker_command() -> list[str]:
    """The argv of a worker: this Python running twistd in the foreground, without a PID file."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
            "nopard"]


def worker_environment(environ: Mapping[str, str], given: Mapping[str, str | None],
                       env_names: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment with its command-line settings as NOPARD_* variables.

    Workers write their log to stdout (the supervisor writes NOPARD_LOGFILE) and run one
    process each (NOPARD_WORKERS=1).
    """
    environment = {k: v for k, v in environ.items() if k not in (WORKER_ENV, FDS_ENV)}
    for name, text in given.items():
        if text is not None:
            environment[env_names[name]] = text
    environment["NOPARD_LOGFILE"] = ""
    environment["NOPARD_WORKERS"] = "1"
    environment.pop("LISTEN_FDS", None)  # systemd's sockets are the supervisor's to hand over
    environment.pop("LISTEN_PID", None)
    return environment


def supervisor_tree(pool: WorkerPool, first: list[Any]) -> MultiService:
    """The supervisor's services: ``first`` (its log), then the pool."""
    top = MultiService()
    for service in first:
        service.setServiceParent(top)
    pool.setServiceParent(top)
    return top
