"""Times as the npm registry writes them."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_time(seconds: float) -> str:
    """ISO-8601 UTC with milliseconds, as the npm registry writes times."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
