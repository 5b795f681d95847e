"""Times as the npm registry writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(seconds: float) -> str:
    """ISO-8601 UTC with milliseconds, as the npm registry writes times."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> float | None:
    """Seconds since the epoch of a time as the npm registry writes it; None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:  # the registry writes UTC; a time without a zone is read as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
