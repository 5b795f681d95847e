"""nopard's log lines: text and json formats, the live level filter, rotation and redaction."""

from __future__ import annotations

import io
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from nopard.ops.logs import (
    LogService,
    SizeRotatedLogFile,
    format_json,
    format_text,
    redact,
    redact_every_pattern,
    text_value,
    time_text,
    twistd_log_stream,
)
from nopard.settings.config import LiveSettings, load_settings

TOKEN = "npd_" + "A1b2C3d4" * 5
WHEN = 1795297226.123  # 2026-11-21T21:40:26.123Z


def settings(**env: str) -> LiveSettings:
    return LiveSettings(load_settings({}, {f"NOPARD_{k.upper()}": v for k, v in env.items()}, cwd="/tmp"))


def event(log_format: str = "", level: LogLevel = LogLevel.info, **fields: Any) -> dict[str, Any]:
    """An event as twisted.logger's Logger emits it."""
    return {**fields, "log_format": log_format, "log_level": level, "log_namespace": "nopard.test",
            "log_time": WHEN, "log_source": None, "log_logger": None}


def access(**changes: Any) -> dict[str, Any]:
    fields = dict(event="access", client="127.0.0.1", user="alice", method="GET", path="/debug",
                  status=200, bytes=123, ms=1.2, cache="HIT", upstream_ms=45.1)
    fields.update(changes)
    return event("{client} {user} {method} {path} {status} {bytes} {ms}ms {cache}", **fields)


def failure_of(error: Exception) -> Failure:
    try:
        raise error
    except Exception:
        return Failure()


@given(st.one_of(st.floats(min_value=0, max_value=4e9), st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999995)))
def test_time_text_is_datetimes_utc_time_with_milliseconds(stamp: float) -> None:
    """Formatting each second once (then adding the milliseconds) shows what datetime shows, rounding included."""
    moment = datetime.fromtimestamp(stamp, UTC)
    assert time_text(stamp) == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_text_access_line() -> None:
    """An access line: time, level, the event name, then its fields as key=value, no message."""
    assert format_text(access()) == (
        "2026-11-21T21:40:26.123Z INFO access client=127.0.0.1 user=alice method=GET path=/debug "
        "status=200 bytes=123 ms=1.2 cache=HIT upstream_ms=45.1\n"
    )


def test_text_values_are_quoted_only_when_needed() -> None:
    """Bare words stay bare; spaces, quotes and '=' are quoted; None is '-'; lists are JSON."""
    assert text_value("plain/path@1.0.0") == "plain/path@1.0.0"
    assert text_value("two words") == '"two words"'
    assert text_value('say "hi"') == '"say \\"hi\\""'
    assert text_value("a=b") == '"a=b"'
    assert text_value("") == '""'
    assert text_value(None) == "-"
    assert text_value(True) == "true"
    assert text_value([{"package": "x"}]) == '[{"package":"x"}]'


def test_other_events_carry_their_message() -> None:
    """Events other than access end with msg="<the formatted message>"."""
    line = format_text(event("upstream {url} is down after {failures} failures: serving from nopard's copies",
                             LogLevel.warn, event="upstream-down", url="http://up.example", failures=3))
    assert line == (
        "2026-11-21T21:40:26.123Z WARN upstream-down url=http://up.example failures=3 "
        "msg=\"upstream http://up.example is down after 3 failures: serving from nopard's copies\"\n"
    )


def test_json_line() -> None:
    """A json line is one object: time, level, event, namespace, the fields and the message."""
    record = json.loads(format_json(access()))
    assert record == {
        "time": "2026-11-21T21:40:26.123Z", "level": "info", "event": "access", "namespace": "nopard.test",
        "client": "127.0.0.1", "user": "alice", "method": "GET", "path": "/debug", "status": 200,
        "bytes": 123, "ms": 1.2, "cache": "HIT", "upstream_ms": 45.1,
        "message": "127.0.0.1 alice GET /debug 200 123 1.2ms HIT",
    }


def test_json_fields_never_replace_the_fixed_keys() -> None:
    """A field named like a fixed key (time, level, ...) does not overwrite it."""
    fields = {"event": "e", "level": "bogus", "time": "never", "namespace": "elsewhere"}
    record = json.loads(format_json({**event("x"), **fields}))
    assert record["level"] == "info" and record["time"] == "2026-11-21T21:40:26.123Z"
    assert record["namespace"] == "nopard.test" and record["event"] == "e"


def test_twisteds_own_events_are_named_log() -> None:
    """An event without event= (Twisted's, twistd's) is named 'log', without the legacy bridge's keys."""
    legacy = event("Server Shut Down.", system="-", message=("Server Shut Down.",), isError=0, time=WHEN)
    assert format_text(legacy) == '2026-11-21T21:40:26.123Z INFO log msg="Server Shut Down."\n'
    assert set(json.loads(format_json(legacy))) == {"time", "level", "event", "namespace", "message"}


def test_failures_carry_their_traceback() -> None:
    """An error event shows the traceback: indented lines after the text line, a key in json."""
    failed = event("unexpected error on {path}", LogLevel.error, event="error", path="/x",
                   log_failure=failure_of(ValueError("boom")))
    text = format_text(failed)
    first, *rest = text.rstrip("\n").split("\n")
    assert first.endswith('ERROR error path=/x msg="unexpected error on /x"')
    assert rest and all(row.startswith("\t") for row in rest) and "ValueError: boom" in rest[-1]
    record = json.loads(format_json(failed))
    assert record["level"] == "error" and "ValueError: boom" in record["traceback"]


def test_redaction_of_secrets_anywhere_in_a_line() -> None:
    """Tokens, Authorization credentials, passwords and URL credentials never survive a line."""
    samples = {
        f"DELETE /-/user/token/{TOKEN}?x=1": "/-/user/token/<redacted>?x=1",
        f"Authorization: Bearer {TOKEN}": "Bearer <redacted>",
        "authorization: Basic YWxpY2U6aHVudGVyMg==": "Basic <redacted>",
        f"token {TOKEN} in a message": "npd_<redacted> in a message",
        '{"name": "alice", "password": "hunter2"}': '"password": "<redacted>"',
        "{'password': 'hunter2'}": "'password': '<redacted>'",
        "//registry/:_authToken=abcdef": "_authToken=<redacted>",
        "https://bob:hunter2@npm.example/": "https://<redacted>@npm.example/",
    }
    for text, expected in samples.items():
        cleaned = redact(text)
        assert expected in cleaned
        assert "hunter2" not in cleaned and TOKEN not in cleaned and "YWxpY2U6aHVudGVyMg" not in cleaned
    assert redact("http://127.0.0.1:4873/debug") == "http://127.0.0.1:4873/debug"


@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from([
    "/-/user/token/", "Bearer ", "basic  ", "npd_", "NPD_abcdefgh12", "_authToken=", "\\\"password\\\": \\\"",
    "'TOKEN':'", "http://", "u:p@", "@", " ", "YWxpY2U6aHVudGVy", "hunter2'"])), max_size=6).map("".join))
@example("Authorization: Bearer YWxpY2U6aHVudGVy")
@example('{"password": "hunter2"}')
@example("https://bob:hunter2@registry.test/")
def test_the_quick_look_for_secrets_never_lets_one_through(text: str) -> None:
    # redact skips the substitutions when no secret's mark is in the text: it must agree with
    # running every one of them, whatever the line.
    assert redact(text) == redact_every_pattern(text)


def test_secret_fields_and_tracebacks_are_redacted_in_both_formats() -> None:
    """A field named password/token, and a secret inside an exception's text, never reach a line."""
    failed = event("login failed for {user}", LogLevel.error, event="error", user="alice", password="hunter2",
                   token=TOKEN, log_failure=failure_of(RuntimeError(f"bad body {{'password': 'hunter2'}} {TOKEN}")))
    for line in (format_text(failed), format_json(failed)):
        assert "hunter2" not in line and TOKEN not in line
        assert "<redacted>" in line


def test_service_writes_lines_to_the_stream_with_a_live_level_and_format() -> None:
    """Lines go to the stream; NOPARD_LOGLEVEL and NOPARD_LOG_FORMAT are read at each event."""
    live, out = settings(), io.StringIO()
    service = LogService(live, out)
    log = Logger(namespace="nopard.test", observer=service.publisher)
    log.info("hello {who}", who="you", event="greeting")
    log.debug("hidden", event="detail")
    live.update(loglevel="warn")
    log.info("quiet now", event="greeting")
    log.warn("still heard", event="warning")
    live.update(log_format="json")
    log.error("as json", event="failure")
    lines = out.getvalue().splitlines()
    assert [line.split()[1:3] for line in lines[:2]] == [["INFO", "greeting"], ["WARN", "warning"]]
    assert json.loads(lines[2])["event"] == "failure" and len(lines) == 3


def test_service_without_a_stream_writes_into_twistds_log() -> None:
    """Without NOPARD_LOGFILE or a stream, the formatted line is handed to twistd's log."""
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        service = LogService(settings())
        Logger(namespace="nopard.test", observer=service.publisher).info("hi", event="greeting", n=1)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    ours = [e for e in seen if e.get("log_namespace") == "nopard.test"]
    assert len(ours) == 1 and ours[0]["log_format"] == 'INFO greeting n=1 msg=hi'


def test_logfile_rotates_by_size_and_keeps_the_backups_asked_for(tmp_path: Path) -> None:
    """NOPARD_LOGFILE rotates at NOPARD_LOG_MAX_SIZE into .1 ... .N, never more than N."""
    path = tmp_path / "nopard.log"
    logfile = SizeRotatedLogFile(str(path), max_size=1000, backups=2)
    for number in range(100):
        logfile.write(f"line {number:04d} " + "x" * 90 + "\n")
    logfile.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nopard.log", "nopard.log.1", "nopard.log.2"]
    assert all(p.stat().st_size <= 1000 + 100 for p in tmp_path.iterdir())
    assert "line 0099" in path.read_text()


def test_logfile_appends_beside_another_writer(tmp_path: Path) -> None:
    """Lines another writer appends to the logfile (twistd's own) are never overwritten."""
    path = tmp_path / "nopard.log"
    logfile = SizeRotatedLogFile(str(path), max_size=10_000, backups=1)
    logfile.write("ours 1\n")
    with open(path, "a") as other:
        other.write("theirs\n")
    logfile.write("ours 2\n")
    logfile.close()
    assert path.read_text() == "ours 1\ntheirs\nours 2\n"


def test_logfile_without_backups_keeps_only_the_current_file(tmp_path: Path) -> None:
    """NOPARD_LOG_BACKUPS=0: rotation starts a new file and drops the old one."""
    logfile = SizeRotatedLogFile(str(tmp_path / "nopard.log"), max_size=100, backups=0)
    for _ in range(10):
        logfile.write("y" * 60 + "\n")
    logfile.close()
    assert [p.name for p in tmp_path.iterdir()] == ["nopard.log"]


def test_sigusr1_reopens_the_logfile(tmp_path: Path) -> None:
    """After logrotate moved the file away, SIGUSR1 makes nopard write to a new file at the path."""
    path = tmp_path / "nopard.log"
    clock = Clock()
    clock.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
    previous = signal.getsignal(signal.SIGUSR1)
    service = LogService(settings(logfile=str(path)), reactor=clock)
    service.startService()
    try:
        log = Logger(namespace="nopard.test", observer=service.publisher)
        log.info("before", event="one")
        os.rename(path, tmp_path / "nopard.log.moved")
        os.kill(os.getpid(), signal.SIGUSR1)
        log.info("after", event="two")
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert " one " in (tmp_path / "nopard.log.moved").read_text()
    assert " two " in path.read_text() and " one " not in path.read_text()


def test_stdout_only_when_twistd_logs_there() -> None:
    """nopard writes its own lines to stdout exactly when twistd logs to stdout (-n, no --logfile)."""
    def options(**twistd: Any) -> SimpleNamespace:
        return SimpleNamespace(parent={"nodaemon": False, "logfile": None, "logger": None, "syslog": False, **twistd})

    assert twistd_log_stream(options(nodaemon=True)) is not None
    assert twistd_log_stream(options(logfile="-")) is not None
    assert twistd_log_stream(options(nodaemon=True, logfile="twistd.log")) is None
    assert twistd_log_stream(options()) is None
    assert twistd_log_stream(options(nodaemon=True, syslog=True)) is None
    assert twistd_log_stream(SimpleNamespace()) is None
