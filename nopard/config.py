"""Settings: defaults < environment (NOPARD_*) < twistd options, validated once.

Every setting is declared once in SETTINGS; the twistd options, the
environment variables and the README table all come from that declaration.
Components never copy settings at start-up: they hold a LiveSettings and read
``settings.current`` when they need a value, so a later settings page can
replace values at runtime.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a value nopard cannot use; the message names it."""


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


def parse_text(text: str) -> str:
    """Free text, stripped; may be empty."""
    return text.strip()


@dataclass(frozen=True)
class Setting:
    """One setting: its attribute name, default text, parser and help line."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "NOPARD_" + self.name.upper()

    @property
    def option(self) -> str:
        """The twistd option (without dashes) that sets it."""
        return self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("hostname", "127.0.0.1", parse_host, "Address to listen on."),
    Setting("port", "5984", parse_port, "TCP port to listen on."),
    Setting(
        "base_url",
        "",
        parse_base_url,
        "Public URL clients use (with any path prefix); empty: built from "
        "Host and X-Forwarded-Proto/X-Forwarded-Host.",
    ),
    Setting("registry_path", "registry", parse_text, "Directory of the registry's data."),
    Setting("loglevel", "info", parse_level, "Lowest level logged: debug, info, warn, error."),
    Setting(
        "logfile", "", parse_text, "Write nopard's log to this file (empty: twistd's log, stdout with -n)."
    ),
    Setting("htpasswd", "", parse_text, "htpasswd file of users (empty: <registry_path>/htpasswd)."),
    Setting(
        "max_users",
        "1",
        parse_count,
        "Registration stays open while fewer users exist; 0 disables it.",
    ),
    Setting("auth_read", "no", parse_bool, "Reads need a logged-in user (yes/no)."),
    Setting("auth_write", "yes", parse_bool, "Writes need a logged-in user (yes/no)."),
    Setting("always_https", "no", parse_bool, "Tarball URLs use https even behind plain http (yes/no)."),
    Setting("max_body_size", "100mb", parse_size, "Largest request body accepted (e.g. 100mb)."),
    Setting(
        "memory_cache_size",
        "128mb",
        parse_size,
        "Memory held by prepared package documents, at most.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The validated value of every setting."""

    hostname: str
    port: int
    base_url: str
    registry_path: str
    loglevel: str
    logfile: str
    htpasswd: str
    max_users: int
    auth_read: bool
    auth_write: bool
    always_https: bool
    max_body_size: int
    memory_cache_size: int

    @property
    def htpasswd_path(self) -> str:
        """The htpasswd file, defaulting to one inside the registry directory."""
        return self.htpasswd or os.path.join(self.registry_path, "htpasswd")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some values changed (already parsed)."""
        return dataclasses.replace(self, **changes)


def load_settings(
    options: Mapping[str, str | None], environ: Mapping[str, str], cwd: str | None = None
) -> Settings:
    """Build Settings from twistd options over environment over defaults.

    ``options`` maps a setting's name to the text given on the command line,
    or None when the option was not given. Raises ConfigError naming the
    first bad setting.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        given = options.get(setting.name)
        if given is not None:
            text, source = given, f"--{setting.option}"
        elif setting.env in environ:
            text, source = environ[setting.env], setting.env
        else:
            text, source = setting.default, setting.env
        try:
            values[setting.name] = setting.parse(text)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
    base = cwd or os.getcwd()
    if not values["registry_path"]:
        raise ConfigError("NOPARD_REGISTRY_PATH: must not be empty")
    values["registry_path"] = os.path.abspath(os.path.join(base, values["registry_path"]))
    if values["htpasswd"]:
        values["htpasswd"] = os.path.abspath(os.path.join(base, values["htpasswd"]))
    if values["logfile"]:
        values["logfile"] = os.path.abspath(os.path.join(base, values["logfile"]))
    return Settings(**values)


class LiveSettings:
    """The one place components read settings from, replaceable at runtime."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings

    def update(self, **changes: Any) -> Settings:
        """Replace some values (already parsed) for every component at once."""
        self.current = self.current.replace(**changes)
        return self.current
