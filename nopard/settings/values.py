"""The parsers of setting values: each takes the text given and returns the value, or raises ValueError.

The declarations in nopard/settings/config.py name one of these for each setting;
the settings page (nopard/settings/overrides.py) parses what an admin enters with
the same function.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3,
}


def parse_bool(text: str) -> bool:
    """Read yes/no style flags as nopar does (yes, no, true, false, 1, 0, on, off)."""
    value = text.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


def parse_port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def parse_count(text: str) -> int:
    """A whole number, zero or more."""
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def parse_size(text: str) -> int:
    """A byte size such as 100mb, 512kb, 1gb or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?b?)\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 100mb, 512kb, 1048576)")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return size


def parse_optional_size(text: str) -> int | None:
    """``off`` (or empty): no size; else a byte size as ``parse_size`` reads it."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    return parse_size(text)


def parse_level(text: str) -> str:
    """One of the log levels, by name."""
    value = text.strip().lower()
    if value == "warning":
        value = "warn"
    if value not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def parse_base_url(text: str) -> str:
    """An http(s) URL without query or fragment; empty means 'derive from requests'."""
    value = text.strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{text!r} must not have a query or fragment")
    return value


def parse_host(text: str) -> str:
    """An address to listen on (IPv4, IPv6 or a host name)."""
    value = text.strip()
    if not value or not re.fullmatch(r"[A-Za-z0-9.:_-]+", value):
        raise ValueError(f"{text!r} is not an address to listen on")
    return value


def parse_optional_url(text: str) -> str:
    """An http(s) URL, or empty."""
    return parse_base_url(text)


# NOPARD_FORWARDER_URL's word for "mirror nothing", which an unset variable no longer means.
NO_FORWARDER = "none"


def parse_forwarder_url(text: str) -> str:
    """An http(s) URL, or ``none`` (or empty): no forwarder (returned as empty)."""
    return "" if text.strip().lower() == NO_FORWARDER else parse_optional_url(text)


def parse_seconds(text: str) -> float:
    """A duration in seconds, more than zero (fractions allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r} must be more than zero seconds")
    return value


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """A duration such as ``3d``, ``36h``, ``90m`` or ``600`` (seconds); ``0``, ``off`` or empty: none."""
    value = text.strip().lower()
    if value in ("", "0", "off", "none", "no"):
        return 0.0
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", value)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 3d, 36h, 90m or 600 (seconds), or off")
    seconds = float(match.group(1)) * _AGE_UNITS[match.group(2) or "s"]
    if seconds > 3650 * 86400:
        raise ValueError(f"{text!r} is more than ten years")
    return seconds


def parse_name_globs(text: str) -> tuple[str, ...]:
    """Comma- or space-separated package names or globs (``*`` within a segment, ``**`` across, ``?``)."""
    return _listed(text, r"[@A-Za-z0-9._~*?/-]{1,214}", "a package name or glob like @acme/* or eslint-*")


def _listed(text: str, pattern: str, what: str) -> tuple[str, ...]:
    """Comma- or space-separated items, each matching ``pattern``."""
    items = tuple(part for part in re.split(r"[\s,]+", text.strip()) if part)
    for item in items:
        if not re.fullmatch(pattern, item):
            raise ValueError(f"{item!r} is not {what}")
    return items


def parse_listen(text: str) -> tuple[str, ...]:
    """Twisted server endpoint strings separated by whitespace (they contain colons and commas).

    Only their shape is checked here: the endpoint is built at start-up (service.py),
    where a string Twisted cannot parse stops nopard naming the setting.
    """
    items = tuple(text.split())
    for item in items:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+._-]*:\S*", item):
            raise ValueError(f"{item!r} is not a Twisted endpoint string like tcp:5984 or unix:/run/nopard.sock")
    return items


def parse_scopes(text: str) -> tuple[str, ...]:
    """Comma- or space-separated npm scopes such as ``@acme,@acme-internal``."""
    return _listed(text.lower(), r"@[a-z0-9~-][a-z0-9._~-]*", "a scope like @acme")


def parse_names(text: str) -> tuple[str, ...]:
    """Comma- or space-separated package names."""
    return _listed(text, r"(@[a-z0-9~-][a-z0-9._~-]*/)?[A-Za-z0-9_~-][A-Za-z0-9._~-]*", "a package name")


def parse_users(text: str) -> tuple[str, ...]:
    """Comma- or space-separated user names."""
    return _listed(text, r"[A-Za-z0-9._-]{1,64}", "a user name")


def parse_scope_map(text: str) -> dict[str, str]:
    """``@scope=value`` pairs separated by spaces or commas (values may not contain either)."""
    pairs = {}
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        scope, separator, value = part.partition("=")
        if not separator or not value:
            raise ValueError(f"{part!r} is not @scope=value")
        pairs[parse_scopes(scope)[0]] = value
    return pairs


def parse_scope_upstreams(text: str) -> dict[str, str]:
    """``@scope=URL`` pairs: packages of a scope come from another registry."""
    return {scope: parse_base_url(url) for scope, url in parse_scope_map(text).items()}


def parse_backfill(text: str) -> str:
    """none | tags | recent:N | all."""
    value = text.strip().lower()
    if value in ("none", "tags", "all") or re.fullmatch(r"recent:[1-9]\d*", value):
        return value
    raise ValueError(f"{text!r} is not none, tags, recent:N or all")


def parse_interval(text: str) -> float:
    """Seconds between runs; 0 turns the schedule off."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return parse_seconds(text)


def parse_positive(text: str) -> int:
    """A whole number, one or more."""
    value = parse_count(text)
    if value < 1:
        raise ValueError(f"{text!r} must be 1 or more")
    return value


def parse_workers(text: str) -> int:
    """NOPARD_WORKERS: a number of processes, one or more, or ``auto`` (one per CPU)."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    return parse_positive(text)


def parse_log_format(text: str) -> str:
    """text or json."""
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"{text!r} is not text or json")
    return value


def parse_audit(text: str) -> str:
    """Where npm audit answers come from: upstream, local or both."""
    value = text.strip().lower()
    if value not in ("upstream", "local", "both"):
        raise ValueError(f"{text!r} is not upstream, local or both")
    return value


def parse_text(text: str) -> str:
    """Free text, stripped; may be empty."""
    return text.strip()


def parse_storage(text: str) -> str:
    """fs or s3."""
    value = text.strip().lower()
    if value not in ("fs", "s3"):
        raise ValueError(f"{text!r} is not fs or s3")
    return value


def parse_bucket(text: str) -> str:
    """An S3 bucket name (3-63 lowercase letters, digits, dots, hyphens), or empty."""
    value = text.strip()
    if value and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError(f"{text!r} is not an S3 bucket name")
    return value


def parse_s3_prefix(text: str) -> str:
    """Key prefix segments such as ``npm/registry`` (no leading or trailing slash needed)."""
    value = text.strip().strip("/")
    if value and not all(re.fullmatch(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*", part) for part in value.split("/")):
        raise ValueError(f"{text!r} is not a key prefix like npm/registry")
    return value


def redis_arguments(text: str) -> dict[str, Any]:
    """``redis://[:password@]host[:port][/db]`` as txredisapi's connection arguments."""
    parts = urlsplit(text.strip())
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"{text!r} is not a redis://host[:port][/db] URL")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"{text!r}: the database after the slash must be a number")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    return {
        "host": parts.hostname,
        "port": port,
        "dbid": int(db),
        "password": unquote(parts.password) if parts.password else None,
        "username": unquote(parts.username) if parts.username else None,
    }


def parse_redis_url(text: str) -> str:
    """A redis:// URL, or empty."""
    value = text.strip()
    if value:
        redis_arguments(value)
    return value


def parse_accel_prefix(text: str) -> str:
    """An nginx internal location such as ``/_nopard_store/`` (empty: off); it starts and ends with ``/``."""
    value = text.strip()
    if not value:
        return ""
    if not re.fullmatch(r"/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*/)+", value):
        raise ValueError(f"{text!r} is not a location like /_nopard_store/ (starting and ending with /)")
    return value


PRESIGNED = "presigned"


def parse_tarball_redirect(text: str) -> str:
    """``presigned``, an http(s) base URL (a CDN in front of the bucket), or empty (off)."""
    value = text.strip()
    if value.lower() == PRESIGNED:
        return PRESIGNED
    return parse_base_url(value)


# S3 refuses a presigned URL valid for more than seven days.
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


def parse_presigned_ttl(text: str) -> int:
    """Whole seconds a presigned URL stays valid: 1 to seven days."""
    seconds = parse_seconds(text)
    if seconds != int(seconds) or not 1 <= seconds <= MAX_PRESIGNED_SECONDS:
        raise ValueError(f"{text!r} must be whole seconds from 1 to {MAX_PRESIGNED_SECONDS}")
    return int(seconds)
