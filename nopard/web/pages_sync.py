"""The status page's sync parts that pages.py has no room for: the schedule line and the changes
feed follower's state (GET /-/nopard/sync's ``changes``), as ``twisted.web.template`` tags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.web.template import Tag, tags


def clock_time(seconds: float) -> str:
    """``seconds`` since the epoch as the status page shows times (to the minute, UTC)."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def feed_text(changes: dict[str, Any]) -> str:
    """One sentence: the feed, what the last refresh run did with it, its position, last page and error."""
    run = {"feed": "the last refresh run followed it", "sweep": "the last refresh run swept every mirrored package"}
    parts = [run.get(changes.get("last_run") or "", "no refresh run has asked it yet"),
             f"position {changes['since']}" if changes.get("since") is not None else "no position yet",
             f"last page read {changes.get('last_page') or 'never'}"]
    if changes.get("last_error"):
        state = "still failing: runs sweep" if changes.get("failing") else "followed again since"
        parts.append(f"last error at {changes.get('last_error_at')}: {changes['last_error']} ({state})")
    return f"Changes feed {changes.get('url')}: " + "; ".join(parts) + "."


def sync_lines(sync: dict[str, Any]) -> list[Tag]:
    """The schedule, and with NOPARD_CHANGES_URL the follower's state (id ``changes-feed``)."""
    lines = [tags.p(f"Interval: {sync.get('interval')} s; next run: {sync.get('next_run') or 'not scheduled'}.")]
    if sync.get("changes"):
        lines.append(tags.p(feed_text(sync["changes"]), id="changes-feed"))
    return lines
