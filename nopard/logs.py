"""nopard's log: its events pass a live level filter, then go to stdout
(through twistd's log) or to NOPARD_LOGFILE.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
    textFileLogObserver,
)

from nopard.config import LiveSettings

_RANK = {"debug": 0, "info": 1, "warn": 2, "error": 3, "critical": 4}


class LevelPredicate:
    """Passes events at or above NOPARD_LOGLEVEL, read at each event."""

    def __init__(self, settings: LiveSettings) -> None:
        self._settings = settings

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        level = event.get("log_level", LogLevel.info)
        wanted = _RANK[self._settings.current.loglevel]
        return PredicateResult.yes if _RANK.get(level.name, 1) >= wanted else PredicateResult.no


class LogService(Service):
    """Routes nopard's events: to NOPARD_LOGFILE when set, else to twistd's log."""

    def __init__(self, settings: LiveSettings) -> None:
        self._settings = settings
        self.publisher = LogPublisher()
        self._destination: ILogObserver = globalLogPublisher
        self._file: IO[str] | None = None
        self.publisher.addObserver(
            FilteringLogObserver(self._forward, [LevelPredicate(settings)])
        )

    def _forward(self, event: dict[str, Any]) -> None:
        self._destination(event)

    def startService(self) -> None:
        """Open NOPARD_LOGFILE, when set."""
        super().startService()
        path = self._settings.current.logfile
        if path:
            self._file = open(path, "a", encoding="utf-8", buffering=1)
            self._destination = textFileLogObserver(self._file)

    def stopService(self) -> None:
        """Close the logfile; later events go to twistd's log."""
        super().stopService()
        if self._file is not None:
            self._destination = globalLogPublisher
            self._file.close()
            self._file = None
