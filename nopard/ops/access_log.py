"""The access log: one line per answered request, the line nopard writes most often.

A request's line is logs.py's ``access`` event: the same fields, the same text or JSON form.
Where lines go as text to the logfile or stdout, it is formatted straight from its fields
(``logs.text_line``, the event formatter's own) and handed to the LogService, without making
an event and passing it through twisted.logger's publisher and level filter: that machinery
and the generic formatting cost about a tenth of a warm tarball request. Everywhere else (JSON
lines, twistd's own log, a level above info, an observer of the events) it is an event as any.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from nopard.ops.logs import LogService, text_line, time_text

ACCESS_FORMAT = "{client} {user} {method} {path} {status} {bytes} {ms}ms {cache}"


class AccessLog:
    """Writes access lines: through ``lines`` (the LogService) when it takes text lines, else
    as ``access`` events of ``log``. ``now`` is the time lines carry (twisted.logger's, by default)."""

    def __init__(self, log: Logger, lines: LogService | None = None, now: Callable[[], float] = time.time) -> None:
        self._log = log
        self._lines = lines
        self._now = now

    def write(self, fields: Sequence[tuple[str, Any]]) -> None:
        """Log one request: its fields in order (client, user, method, path, status, bytes, ms, ...)."""
        lines = self._lines
        if lines is not None and lines.takes_text_lines():
            lines.write_line(text_line(time_text(self._now()), "INFO", "access", fields))
        else:
            self._log.info(ACCESS_FORMAT, event="access", **dict(fields))
