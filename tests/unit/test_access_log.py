"""The access log's short path: the same lines as the access event's, written in batches per reactor turn."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python import threadable

from nopard.ops.access_log import ACCESS_FORMAT, AccessLog
from nopard.ops.logs import BATCH_LINES, LogService, format_text
from tests.unit.test_logs import WHEN, settings

FIELD_VALUES = st.one_of(
    st.text(max_size=40), st.integers(), st.floats(allow_nan=False), st.none(),
    st.sampled_from(["/@scope%2fname", "-", 'a "quoted" path', "/-/user/token/npd_x", "Bearer abc", "ü ß"]),
)


def access_fields(values: list[Any]) -> list[tuple[str, Any]]:
    names = ["client", "user", "method", "path", "status", "bytes", "ms", "cache", "upstream_ms", "worker"]
    return list(zip(names, values, strict=False))


@given(st.lists(FIELD_VALUES, min_size=9, max_size=10))
def test_a_short_path_line_is_the_access_events_line(values: list[Any]) -> None:
    """Whatever the fields hold (quotes, spaces, secrets to redact), the line written straight from
    them is the line the access event would have made."""
    fields = access_fields(values)
    out = io.StringIO()
    AccessLog(Logger(observer=lambda event: pytest.fail("no event expected")), LogService(settings(), out),
              now=lambda: WHEN).write(fields)
    event = {"event": "access", **dict(fields), "log_format": ACCESS_FORMAT, "log_level": LogLevel.info,
             "log_namespace": "nopard.access", "log_time": WHEN, "log_source": None, "log_logger": None}
    assert out.getvalue() == format_text(event)


@pytest.mark.parametrize("env", [{"log_format": "json"}, {"loglevel": "warn"}, {}])
def test_otherwise_an_access_line_is_an_event(env: dict[str, str]) -> None:
    """JSON lines, a level above info, or no logfile or stream (twistd's log): the event path."""
    events: list[dict[str, Any]] = []
    lines = LogService(settings(**env), io.StringIO()) if env else LogService(settings())
    AccessLog(Logger(observer=events.append), lines).write([("client", "127.0.0.1"), ("status", 200)])
    assert [(e["event"], e["client"], e["status"]) for e in events] == [("access", "127.0.0.1", 200)]


@pytest.fixture
def reactor_thread() -> Iterator[None]:
    """This thread as the reactor's, as twistd's reactor makes its own."""
    before = threadable.ioThread
    threadable.registerAsIOThread()
    yield
    threadable.ioThread = before


def test_lines_of_a_reactor_turn_are_written_together(reactor_thread: None) -> None:
    """Batched lines wait for the reactor's next turn (or BATCH_LINES of them), in order; lines from
    other threads and a stopping service's are written at once."""
    out, clock = io.StringIO(), Clock()
    service = LogService(settings(), out, clock, batch_lines=True)  # type: ignore[arg-type]  # a Clock's callLater
    service.startService()
    service.write_line("one\n")
    service.write_line("two\n")
    assert out.getvalue() == ""
    clock.advance(0)
    assert out.getvalue() == "one\ntwo\n"
    for number in range(BATCH_LINES):
        service.write_line(f"{number}\n")
    assert out.getvalue().count("\n") == 2 + BATCH_LINES
    service.write_line("batched\n")
    other = threading.Thread(target=service.write_line, args=("from a thread\n",))
    other.start()
    other.join()
    assert out.getvalue().endswith("batched\nfrom a thread\n")  # the batch first: lines stay in order
    service.write_line("last\n")
    service.stopService()
    assert out.getvalue().endswith("from a thread\nlast\n")
    clock.advance(0)  # the turn that was due writes nothing twice
    assert out.getvalue().count("last") == 1
