"""nopard's log: its events pass a live level filter, are formatted as one line
each (text or json), scrubbed of secrets, and written to NOPARD_LOGFILE (which
rotates by size and is reopened on SIGUSR1), to stdout when twistd logs there,
or else into twistd's own log.

A text line is ``<time> <LEVEL> <event> key=value ...``, then ``msg="..."``
for events whose fields do not already say everything; a json line is one
object with time, level, event, namespace, the fields and the message.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any, cast

import orjson
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogPublisher,
    PredicateResult,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from nopard.domain.tokens import TOKEN_PREFIX
from nopard.domain.urls import without_credentials
from nopard.settings.config import LiveSettings

_RANK = {"debug": 0, "info": 1, "warn": 2, "error": 3, "critical": 4}

# Events whose fields are the whole story: their text lines carry no msg="...".
TERSE_EVENTS = frozenset({"access"})
# Fields whose values are never written, whatever they hold.
SECRET_FIELDS = frozenset({"password", "token", "authorization", "auth", "secret", "_authtoken"})
REDACTED = "<redacted>"
# Keys Twisted's legacy log bridge adds to events; not fields of an event of Twisted's own.
_TWISTED_KEYS = frozenset({"message", "system", "time", "isError", "format", "why", "failure", "printed"})

# Anything that looks like a credential, wherever it appears in a line
# (messages, tracebacks, exception texts): the last line of defence.
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(/-/user/token/)[^/?#\s\"'\\]+"), r"\1" + REDACTED),
    (re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1\2" + REDACTED),
    (re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{8,}"), TOKEN_PREFIX + REDACTED),
    (re.compile(r"(_authToken\s*=\s*)\S+", re.IGNORECASE), r"\1" + REDACTED),
    (re.compile(r"((?:\\?[\"'])(?:password|token|_authToken)(?:\\?[\"'])\s*:\s*)(\\?[\"'])(?:(?!\2).)*\2",
                re.IGNORECASE), r"\1\2" + REDACTED + r"\2"),
)


# Each of _SECRETS (and a URL's user:password@) needs one of these in the text, case aside: a
# look for them, fruitless on almost every line (the access log's), instead of every substitution.
# Substring tests of the lowered line: a fifth of a microsecond each, where one case-blind regex
# alternation of the same words cost about 6 us a line.
_SECRET_MARKS = ("token", "bearer", "basic", "password", "@", TOKEN_PREFIX.lower())


def may_hold_secret(text: str) -> bool:
    """Whether ``text`` has any of the marks every credential pattern needs (case aside)."""
    lowered = text.lower()
    return any(mark in lowered for mark in _SECRET_MARKS)


def redact(text: str) -> str:
    """``text`` with every credential-looking part replaced by <redacted>."""
    if not may_hold_secret(text):
        return text
    return redact_every_pattern(text)


def redact_every_pattern(text: str) -> str:
    """``redact`` without its first look for a secret's marks (the tests compare the two)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return without_credentials(text)


@implementer(ILogFilterPredicate)
class LevelPredicate:
    """Passes events at or above NOPARD_LOGLEVEL, read at each event."""

    def __init__(self, settings: LiveSettings) -> None:
        self._settings = settings

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        level = event.get("log_level", LogLevel.info)
        wanted = _RANK[self._settings.current.loglevel]
        return PredicateResult.yes if _RANK.get(level.name, 1) >= wanted else PredicateResult.no


# Formatting --------------------------------------------------------------


# The last second formatted and its text up to the milliseconds, as one tuple (read and replaced
# whole, so a line made on another thread never pairs one second with another's text): most lines
# share a second with the line before, and strftime cost more than the rest of an access line.
_last_second: tuple[int | None, str] = (None, "")


def event_time(event: dict[str, Any]) -> str:
    """The event's time in UTC, ISO 8601 with milliseconds: 2026-11-21T21:40:26.123Z."""
    return time_text(event.get("log_time") or 0.0)


def time_text(stamp: float) -> str:
    """A Unix time as event_time shows it."""
    second = math.floor(stamp)
    micros = round((stamp - second) * 1e6)  # rounded as datetime rounds a timestamp
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    global _last_second
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{cached[1]}{micros // 1000:03d}Z"


def event_name(event: dict[str, Any]) -> str:
    """The event's stable name (its ``event`` key); ``log`` for Twisted's and twistd's own lines."""
    name = event.get("event")
    if isinstance(name, str) and name:
        return name
    return "log"


_HIDDEN, _SECRET, _SHOWN = 0, 1, 2
# What each key an event has had is (one lookup a field instead of three string tests), per whether the
# event is nopard's own; bounded: keys are names in nopard's and Twisted's code, never a client's.
_KEY_ROLES: tuple[dict[str, int], dict[str, int]] = ({}, {})


def _role(key: str, ours: bool) -> int:
    roles = _KEY_ROLES[ours]
    role = roles.get(key)
    if role is None:
        if key.startswith("log_") or key == "event" or (not ours and key in _TWISTED_KEYS):
            role = _HIDDEN
        else:
            role = _SECRET if key.lower() in SECRET_FIELDS else _SHOWN
        if len(roles) < 10_000:
            roles[key] = role
    return role


def event_fields(event: dict[str, Any]) -> dict[str, Any]:
    """The event's own fields, in the order given, secrets replaced."""
    ours = "event" in event
    fields = {}
    for key, value in event.items():
        role = _role(key, ours)
        if role != _HIDDEN:
            fields[key] = REDACTED if role == _SECRET else value
    return fields


def _message(event: dict[str, Any]) -> str:
    return formatEvent(event) if event.get("log_format") else ""


def _traceback(event: dict[str, Any]) -> str | None:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        return failure.getTraceback().rstrip("\n")
    except Exception:  # a failure that cannot render itself must not break logging
        return f"{failure!r}"


_PLAIN = re.compile(r"[^\s\"=\\]+")


def _dumps(value: Any) -> str:
    """Compact JSON of anything a field may hold (unknown objects as their str())."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _level(event: dict[str, Any]) -> str:
    return getattr(event.get("log_level"), "name", "info")


def text_value(value: Any) -> str:
    """A field value for a text line: bare when it can be, quoted (JSON-style) otherwise."""
    if type(value) is str:  # most fields: asked first
        return value if _PLAIN.fullmatch(value) else _dumps(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        text = _dumps(value)
        if not re.search(r"\s", text):
            return text  # compact JSON: one token already
    else:
        text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return _dumps(text)


def format_text(event: dict[str, Any], with_time: bool = True) -> str:
    """One text line (a traceback, if any, on the indented lines after it), newline-terminated."""
    name = event_name(event)
    # Formatting the message costs more than the rest of an access line: skipped where unused.
    message = _message(event) if name not in TERSE_EVENTS else ""
    return text_line(event_time(event) if with_time else None, _level(event).upper(), name,
                     event_fields(event).items(), message, _traceback(event))


def text_line(moment: str | None, level: str, name: str, fields: Iterable[tuple[str, Any]],
              message: str = "", traceback: str | None = None) -> str:
    """A text line from its parts (``moment``: event_time's text, None for none); see format_text."""
    parts = [moment, level, name] if moment is not None else [level, name]
    parts += [f"{key}={text_value(value)}" for key, value in fields]
    if message:
        parts.append(f"msg={text_value(message)}")
    line = " ".join(parts)
    if traceback:
        line += "\n" + "\n".join("\t" + row for row in traceback.splitlines())
    return redact(line) + "\n"


def format_json(event: dict[str, Any]) -> str:
    """One JSON object: time, level, event, namespace, the fields, message (and traceback)."""
    record: dict[str, Any] = {
        "time": event_time(event),
        "level": _level(event),
        "event": event_name(event),
        "namespace": event.get("log_namespace", "-"),
    }
    for key, value in event_fields(event).items():
        record.setdefault(key, value)
    record["message"] = _message(event)
    traceback = _traceback(event)
    if traceback:
        record["traceback"] = traceback
    return redact(_dumps(record)) + "\n"


FORMATTERS: dict[str, Callable[[dict[str, Any]], str]] = {"text": format_text, "json": format_json}


# Where lines go -------------------------------------------------------------


class SizeRotatedLogFile(LogFile):
    """twisted's LogFile, opened for appending, keeping ``backups`` old files.

    Appending (O_APPEND) and sizing by fstat, because twistd's own lines may be
    appended to the same file by another writer (nopard.ops.daemon): neither may
    overwrite the other, and the file's real size decides the rotation.
    """

    def __init__(self, path: str, max_size: int, backups: int) -> None:
        directory, name = os.path.split(os.path.abspath(path))
        super().__init__(name, directory, rotateLength=max_size, maxRotatedFiles=max(backups, 1))
        self.backups = backups

    def _openFile(self) -> None:
        self.closed = False
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._file = os.fdopen(fd, "ab", 0)
        self.size = os.fstat(fd).st_size

    def shouldRotate(self) -> bool:
        """Whether the file, as it is on disk, reached the size limit."""
        return os.fstat(self._file.fileno()).st_size >= self.rotateLength

    def write(self, data: str) -> None:
        super().write(data.encode("utf-8"))

    def rotate(self) -> None:
        """Rotate; with no backups wanted, the rotated file is removed at once."""
        super().rotate()
        if self.backups == 0 and os.path.exists(self.path + ".1"):
            os.remove(self.path + ".1")


def twistd_log_stream(options: Any) -> IO[str] | None:
    """stdout when twistd itself logs to stdout (``twistd -n`` without --logfile), else None.

    ``options`` are nopard's twistd options; their parent holds twistd's own.
    """
    twistd = getattr(options, "parent", None)
    if twistd is None or twistd.get("logger") or twistd.get("syslog"):
        return None
    logfile = twistd.get("logfile")
    if logfile == "-" or (twistd.get("nodaemon") and not logfile):
        return sys.__stdout__
    return None


# Lines batched on the reactor thread are written at the end of its turn, or once this many wait.
BATCH_LINES = 256


class LogService(Service):
    """Routes nopard's events: to NOPARD_LOGFILE when set, else to ``stream`` (stdout)
    when given, else into twistd's log. Installs the SIGUSR1 handler that reopens the logfile.

    With ``batch_lines`` (and a reactor), lines made on the reactor thread are written
    together on the reactor's next turn instead of one write each: a busy server's access
    lines cost one system call per turn, not one per request. The next turn comes before
    that turn's answers are sent (the reactor runs its due calls before it polls), so a
    client that got an answer finds its line written; lines from other threads, and every
    line once the service stops, are written at once.
    """

    def __init__(self, settings: LiveSettings, stream: IO[str] | None = None,
                 reactor: IReactorFromThreads | None = None, batch_lines: bool = False) -> None:
        self._settings = settings
        self._stream = stream
        self._reactor = reactor
        self.publisher = LogPublisher()
        self._file: SizeRotatedLogFile | None = None
        self._previous_sigusr1: Any = None
        self._batching = batch_lines and reactor is not None
        self._batch: list[str] = []
        self._batch_lock = threading.Lock()
        self.publisher.addObserver(FilteringLogObserver(cast(ILogObserver, self._write), [LevelPredicate(settings)]))

    def _write(self, event: dict[str, Any]) -> None:
        if self._file is None and self._stream is None:
            self._to_twistd(event)
            return
        try:
            line = FORMATTERS[self._settings.current.log_format](event)
        except Exception as error:  # a field that cannot be shown must not lose the event
            line = format_text({"log_level": event.get("log_level"), "log_time": event.get("log_time"),
                                "event": "log-format-error", "error": repr(error),
                                "log_format": "{original}", "original": repr(event.get("log_format"))})
        self._deliver(line)

    def _deliver(self, line: str) -> None:
        """Write ``line`` to the logfile or stream now, or batch it for the reactor's next turn."""
        with self._batch_lock:  # a line from another thread flushes the batch first: none lost, in order
            if self._batching and self.running and isInIOThread():
                if not self._batch:
                    cast(IReactorTime, self._reactor).callLater(0, self.flush)
                self._batch.append(line)
                if len(self._batch) < BATCH_LINES:
                    return
                line = ""
            self._flush_batch()
            if line:
                self._put(line)

    def flush(self) -> None:
        """Write the lines batched so far."""
        with self._batch_lock:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self._batch:
            lines = "".join(self._batch)
            self._batch.clear()
            self._put(lines)

    def _put(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        elif self._stream is not None:
            self._stream.write(text)
            self._stream.flush()

    def takes_text_lines(self) -> bool:
        """Whether a text line given to ``write_line`` is written as it is, and an info line at all: the
        log format is text, the level passes info, and lines go to the logfile or stdout (twistd's
        own log would put its time before the line's)."""
        current = self._settings.current
        return (current.log_format == "text" and _RANK[current.loglevel] <= _RANK["info"]
                and (self._file is not None or self._stream is not None))

    def write_line(self, line: str) -> None:
        """Write a line formatted elsewhere (a worker's, nopard.ops.supervisor) where this service writes."""
        if self._file is not None or self._stream is not None:
            self._deliver(line)
        else:
            globalLogPublisher({"log_format": line.rstrip("\n").replace("{", "{{").replace("}", "}}"),
                                "log_level": LogLevel.info, "log_namespace": "nopard.worker", "log_source": None,
                                "log_time": time.time()})  # twistd's observer shows the time it was relayed

    def _to_twistd(self, event: dict[str, Any]) -> None:
        """Into twistd's log, which adds its own time and system before the line."""
        if self._settings.current.log_format == "json":
            line = format_json(event)
        else:
            line = format_text(event, with_time=False)
        escaped = line.rstrip("\n").replace("{", "{{").replace("}", "}}")
        globalLogPublisher({
            "log_format": escaped,
            "log_level": event.get("log_level", LogLevel.info),
            "log_namespace": event.get("log_namespace", "nopard"),
            "log_time": event.get("log_time"),
            "log_source": None,
        })

    def reopen(self) -> None:
        """Reopen NOPARD_LOGFILE (after logrotate moved it away)."""
        self.flush()
        if self._file is not None:
            self._file.reopen()

    def startService(self) -> None:
        """Open NOPARD_LOGFILE, when set, and reopen it on SIGUSR1."""
        super().startService()
        current = self._settings.current
        if current.logfile:
            self._file = SizeRotatedLogFile(current.logfile, current.log_max_size, current.log_backups)
            self._install_sigusr1()

    def stopService(self) -> None:
        """Write what is batched and close the logfile; later events go to stdout or twistd's log."""
        super().stopService()
        self.flush()
        if self._file is not None:
            self._restore_sigusr1()
            logfile, self._file = self._file, None
            logfile.close()

    def _install_sigusr1(self) -> None:
        reactor = self._reactor
        if reactor is None or not hasattr(signal, "SIGUSR1"):
            return
        previous = signal.getsignal(signal.SIGUSR1)

        def on_sigusr1(number: int, frame: Any) -> None:
            # The handler runs between two bytecodes, maybe inside a write: the
            # reopen itself runs from the reactor loop, as twistd's own handler does.
            reactor.callFromThread(self.reopen)
            if callable(previous):
                previous(number, frame)

        self._previous_sigusr1 = previous
        signal.signal(signal.SIGUSR1, on_sigusr1)

    def _restore_sigusr1(self) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None
