"""Running nopard as a daemon: PID file, run-as user, logfile, working directory,
and a graceful stop.

twistd reads its own options at three moments, and makeService sits between
the second and the third:

1. before makeService: ``--logfile``, ``--logger``, ``--syslog`` and
   ``--nodaemon`` (the logger is built from them), and the stale-PID check of
   ``--pidfile`` (its default, ``twistd.pid``, made absolute at parse time);
2. makeService runs, then twistd wraps its service in an Application and asks
   that Application for an ``ILogObserver`` before falling back to
   ``--logfile``;
3. after: ``--rundir`` (chdir), ``--umask``, daemonizing, writing
   ``--pidfile``, binding ports (privilegedStartService), dropping to
   ``--uid``/``--gid``, starting the services, and removing the PID file
   after the reactor stops.

So :func:`prepare` (called by makeService) turns the NOPARD_* settings into
the values of step 3 (``pidfile``, ``rundir``, ``uid``, ``gid``) unless the
twistd option was given, checks the new PID file for staleness itself (step 1
checked only the old one), and hands twistd a log observer for NOPARD_LOGFILE
through the Application in step 2. An explicit twistd option always wins.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import weakref
from dataclasses import dataclass, field
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    ILogObserver,
    Logger,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from zope.interface import implementer

from nopard.settings.config import ConfigError, Settings

PID_FILE_NAME = "nopard.pid"
#: Seconds SIGTERM waits for requests in flight before the connections are closed.
GRACE_SECONDS = 30.0

_log = Logger(namespace="nopard.daemon")


@dataclass
class Daemon:
    """What makeService needs from :func:`prepare`: settings, and how to wrap the service."""

    settings: Settings
    log_observer: ILogObserver | None = None
    notes: list[str] = field(default_factory=list)

    def wrap(self, app: MultiService, clock: IReactorTime) -> GracefulService:
        """The service twistd runs: ``app`` with a graceful stop and this daemon's log."""
        return GracefulService(app, clock, self.log_observer, self.notes)


def prepare(settings: Settings, options: Any) -> Daemon:
    """Apply NOPARD_HOME, NOPARD_RUN_PATH, NOPARD_RUNAS_USER and NOPARD_LOGFILE to twistd.

    ``options`` are nopard's twistd options; their ``parent`` is twistd's own
    ServerOptions, whose values twistd reads after makeService returns. Without
    a parent (nopard built outside twistd) nothing is changed. Raises
    ConfigError naming the setting when something cannot be done.
    """
    config = getattr(options, "parent", None)
    if config is None:
        return Daemon(settings)
    daemon = Daemon(settings)
    started_in = os.getcwd()
    default_pidfile = config.get("pidfile") == os.path.join(started_in, "twistd.pid")

    owner = _run_as(settings, config)
    if owner is not None:
        for directory in code_directories():
            # Modules imported later (lazily) would fail after the drop, request by request.
            if not readable_by(directory, *owner):
                raise ConfigError(
                    f"NOPARD_RUNAS_USER: user {_user_name(owner[0])} cannot read {directory}, "
                    "where nopard's Python code is (install nopard where that user can read it)"
                )

    if settings.home:
        _make_dirs(settings.home, owner, "NOPARD_HOME")
        try:
            os.chdir(settings.home)  # twistd's default log and PID file then land in NOPARD_HOME
        except OSError as error:
            raise ConfigError(f"NOPARD_HOME: cannot enter {settings.home}: {error.strerror}") from None
        if config.get("rundir", ".") == ".":
            config["rundir"] = settings.home

    if default_pidfile and (settings.run_path or settings.home):
        if settings.run_path:
            _make_dirs(settings.run_path, owner, "NOPARD_RUN_PATH")
            pidfile = os.path.join(settings.run_path, PID_FILE_NAME)
            if owner is not None and not writable_by(settings.run_path, *owner):
                daemon.notes.append(
                    f"{settings.run_path} is not writable by user {_user_name(owner[0])}: the PID file "
                    "stays after a stop (the next start removes it); chown the directory to avoid this"
                )
        else:
            pidfile = os.path.join(settings.home, "twistd.pid")
        config["pidfile"] = pidfile
        note = clear_stale_pidfile(pidfile, "NOPARD_RUN_PATH" if settings.run_path else "NOPARD_HOME")
        if note:
            daemon.notes.append(note)

    if config.get("logfile"):
        # An explicit --logfile wins: nopard's events go to twistd's log, hence there too.
        daemon.settings = settings.replace(logfile="")
    elif settings.logfile:
        _make_dirs(os.path.dirname(settings.logfile), owner, "NOPARD_LOGFILE")
        _own_file(settings.logfile, owner, "NOPARD_LOGFILE")
        if not config.get("nodaemon") and not config.get("syslog") and not config.get("logger"):
            # twistd would write twistd.log in the working directory: keep one logfile instead.
            daemon.log_observer = AppendingLogObserver(settings.logfile, settings.log_format)

    if owner is not None:
        name = _user_name(owner[0])
        _make_dirs(settings.registry_path, owner, "NOPARD_REGISTRY_PATH")
        if not writable_by(settings.registry_path, *owner):
            raise ConfigError(
                f"NOPARD_REGISTRY_PATH: {settings.registry_path} is not writable by user {name} "
                f"(chown -R {name} {settings.registry_path})"
            )
    return daemon


def _run_as(settings: Settings, config: Any) -> tuple[int, int] | None:
    """Set twistd's uid/gid from NOPARD_RUNAS_USER unless --uid was given.

    Returns (uid, gid) of the user the daemon drops to, when that is another
    user and nopard runs as root (so it can hand that user its directories),
    else None.
    """
    uid, gid = config.get("uid"), config.get("gid")
    if settings.runas_user and uid is None:
        try:
            entry = _lookup_user(settings.runas_user)
        except KeyError:
            raise ConfigError(f"NOPARD_RUNAS_USER: there is no user {settings.runas_user!r}") from None
        uid = config["uid"] = entry.pw_uid
        if gid is None:
            gid = config["gid"] = entry.pw_gid
        if uid != os.getuid() and os.geteuid() != 0:
            raise ConfigError(
                f"NOPARD_RUNAS_USER: only root can switch to user {settings.runas_user!r}"
            )
    if uid is None or uid == os.geteuid() or os.geteuid() != 0:
        return None
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid  # what twistd will use as well
    return uid, gid


def _lookup_user(user: str) -> pwd.struct_passwd:
    if user.isdigit():
        return pwd.getpwuid(int(user))
    return pwd.getpwnam(user)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _make_dirs(path: str, owner: tuple[int, int] | None, setting: str) -> None:
    """Create ``path`` and missing parents; those created are given to ``owner``."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
            if owner is not None:
                os.chown(directory, *owner)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise ConfigError(f"{setting}: {directory} is not a directory") from None
        except OSError as error:
            raise ConfigError(f"{setting}: cannot create {directory}: {error.strerror}") from None


def _own_file(path: str, owner: tuple[int, int] | None, setting: str) -> None:
    """Create ``path`` if missing; hand it to ``owner`` (it must stay writable after the drop)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if owner is not None and os.fstat(fd).st_uid != owner[0]:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
    except OSError as error:
        raise ConfigError(f"{setting}: cannot write {path}: {error.strerror}") from None


def _allowed(path: str, uid: int, gid: int, want: int) -> bool:
    """Whether user ``uid`` (primary group ``gid``) has the ``want`` bits (4 r, 2 w, 1 x)
    on ``path``, judged from owner, group and mode bits (ACLs are not read)."""
    info = os.stat(path)
    if uid == 0:
        return True
    if info.st_uid == uid:
        return (info.st_mode >> 6) & want == want
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}
    if info.st_gid in groups:
        return (info.st_mode >> 3) & want == want
    return info.st_mode & want == want


def _reachable(path: str, uid: int, gid: int) -> bool:
    """Whether every directory above ``path`` lets the user through."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        if not _allowed(parent, uid, gid, 1):
            return False
        if os.path.dirname(parent) == parent:
            return True
        parent = os.path.dirname(parent)


def writable_by(path: str, uid: int, gid: int) -> bool:
    """Whether the user may create files in directory ``path``."""
    return _reachable(path, uid, gid) and _allowed(path, uid, gid, 3)


def readable_by(path: str, uid: int, gid: int) -> bool:
    """Whether the user may read (and list) directory ``path``."""
    return _reachable(path, uid, gid) and _allowed(path, uid, gid, 5)


def code_directories() -> list[str]:
    """Where Python, Twisted and nopard load modules from, also after the privilege drop."""
    import twisted

    import nopard

    return [os.path.dirname(os.__file__), os.path.dirname(twisted.__path__[0]),
            os.path.dirname(nopard.__path__[0])]


def pid_is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process that may be a nopard (twistd) one."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError as error:
        if error.errno == errno.ESRCH:
            return False
        if error.errno != errno.EPERM:
            raise
    # After a reboot or a crash the number may belong to an unrelated process.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read()
    except OSError:
        return True  # no /proc: assume it is ours, as twistd does
    return b"twistd" in command or b"nopard" in command


def clear_stale_pidfile(pidfile: str, setting: str = "NOPARD_RUN_PATH") -> str | None:
    """Remove ``pidfile`` if its process is gone; refuse to start if it runs.

    Returns a note to log when a stale file was removed. An empty or garbled
    file (a crash while it was written) counts as stale.
    """
    try:
        with open(pidfile) as file:
            text = file.read().strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {pidfile}: {error.strerror}") from None
    if text.isdigit() and pid_is_running(int(text)):
        raise ConfigError(f"{setting}: nopard is already running as PID {text} ({pidfile})")
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise ConfigError(f"{setting}: cannot remove stale {pidfile}: {error.strerror}") from None
    return f"removed stale PID file {pidfile} (PID {text or 'none'} is not running)"


@implementer(ILogObserver)
class AppendingLogObserver:
    """twistd's own log (start-up, shutdown, errors) appended to NOPARD_LOGFILE,
    in nopard's line format (NOPARD_LOG_FORMAT).

    The file is opened for each event: these events are few, and the logfile
    rotating underneath (nopard's LogService rotates it by size, logrotate may
    move it) never leaves this observer writing into a rotated file. nopard's
    own events reach the file through the LogService, not through here.
    """

    def __init__(self, path: str, log_format: str = "text") -> None:
        self.path = path
        self.log_format = log_format

    def __call__(self, event: dict[str, Any]) -> None:
        from nopard.ops.logs import FORMATTERS

        try:
            line: str | None = FORMATTERS[self.log_format](event)
        except Exception:  # an event that cannot be formatted must not break the daemon
            line = formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, timeFormatRFC3339))
        if not line:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(line)
        except OSError:
            pass  # nowhere left to report it


class RequestTracker:
    """Knows the HTTP requests a site is working on, and the connections they came on."""

    def __init__(self) -> None:
        self._requests: set[Any] = set()
        # Weak: a connection gone is forgotten with its channel.
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, site: Any) -> None:
        """Have every request ``site`` creates from now on recorded, until it is answered or abandoned."""
        make = site.requestFactory

        def request_factory(channel: Any, *args: Any, **kwargs: Any) -> Any:
            request = make(channel, *args, **kwargs)
            self._requests.add(request)
            self._channels.add(channel)
            # notifyFinish fires when the answer is sent, and fails when the client goes away.
            request.notifyFinish().addBoth(lambda _: self._requests.discard(request))
            return request

        site.requestFactory = request_factory

    def in_flight(self) -> int:
        """Requests neither answered in full nor abandoned by their client."""
        return len(self._requests)

    def close_connections(self) -> int:
        """Close every connection that carried a request once what was written to it is sent;
        returns how many are still open.

        A request is finished as soon as its last bytes are handed to the transport, which
        sends them on a later turn of the reactor; twistd's shutdown drops its connections
        without sending what they still hold, so they are closed here first, gracefully.
        """
        open_channels = [c for c in self._channels if getattr(getattr(c, "transport", None), "connected", False)]
        for channel in open_channels:
            if not getattr(channel.transport, "disconnecting", False):
                channel.loseConnection()
        return len(open_channels)


class GracefulService(MultiService):
    """nopard's service tree, stopped gracefully.

    On stop (SIGTERM): stop accepting connections, let the requests in flight
    finish and their answers reach the clients (at most GRACE_SECONDS in all),
    and only then stop the rest, whose thread pools and storage those requests
    still use: first the services that write to the store as they stop (marked
    ``stops_first``, e.g. the record of use's last flush), then the others
    (their thread pools among them). twistd closes the remaining (idle)
    connections afterwards.

    It also carries the log observer for twistd: twistd puts this service in
    its Application after makeService returns and only then asks the
    Application for an ILogObserver, so the observer is set on it here.
    """

    def __init__(
        self,
        app: MultiService,
        clock: IReactorTime,
        log_observer: ILogObserver | None = None,
        notes: list[str] | None = None,
        grace: float = GRACE_SECONDS,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.grace = grace
        self.log_observer = log_observer
        self.notes = list(notes or [])
        self.tracker = RequestTracker()
        self.listeners = [s for s in app if isinstance(s, StreamServerEndpointService)]
        self.first = [s for s in app if getattr(s, "stops_first", False)]
        for listener in self.listeners:
            self.tracker.track(listener.factory)
        app.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        for note in self.notes:
            _log.info(note.replace("{", "{{").replace("}", "}}"))
        super().startService()
        if hasattr(self.clock, "sigTerm") and hasattr(self.clock, "callWhenRunning"):  # the real reactor
            self.clock.callWhenRunning(self._one_sigterm)

    def _one_sigterm(self) -> None:
        """Stop once however many SIGTERMs come: under systemd (KillMode=control-group) a worker
        of NOPARD_WORKERS gets one from systemd and one from its supervisor, and the reactor,
        already stopping, would log an error for the second."""
        reactor: Any = self.clock
        if not callable(signal.getsignal(signal.SIGTERM)):
            return  # twistd installed no handlers: leave the default alone
        terminating = [False]

        def handler(number: int, frame: Any) -> None:
            if not terminating[0]:
                terminating[0] = True
                reactor.sigTerm(number, frame)

        signal.signal(signal.SIGTERM, handler)

    def stopService(self) -> Deferred:
        self.running = 0
        stopped = [maybeDeferred(listener.stopService) for listener in self.listeners]
        waiting: Deferred[None] = Deferred()

        def check(deadline: float) -> None:
            requests = self.tracker.in_flight()
            # Only once no request is left: closing earlier would cut a keep-alive client's next one.
            sending = self.tracker.close_connections() if requests == 0 else 0
            if requests == 0 and sending == 0:
                waiting.callback(None)
            elif self.clock.seconds() >= deadline:
                if requests:
                    _log.warn("stopping with {count} requests still in flight after {grace} s",
                              count=requests, grace=self.grace)
                else:
                    _log.warn("stopping with {count} connections still sending answers after {grace} s",
                              count=sending, grace=self.grace)
                waiting.callback(None)
            else:
                self.clock.callLater(0.05, check, deadline)

        def drain(_: Any) -> Deferred:
            count = self.tracker.in_flight()
            if count:
                _log.info("waiting for {count} requests in flight", count=count)
            check(self.clock.seconds() + self.grace)
            return waiting

        done = DeferredList(stopped, consumeErrors=True)
        done.addCallback(drain)
        done.addCallback(lambda _: DeferredList([maybeDeferred(s.stopService) for s in self.first], consumeErrors=True))
        done.addCallback(lambda _: MultiService.stopService(self))
        return done
