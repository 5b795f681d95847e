"""Settings: defaults < environment (NOPARD_*) < twistd options, validated once.

(Some may then be overridden at runtime from the settings page: nopard/settings/overrides.py.)

Every setting is declared once in SETTINGS (nopard/settings/declared.py), with a parser from
nopard/settings/values.py; the twistd options, the environment variables and
the table in docs/configuration.md all come from that declaration.
Components never copy settings at start-up: they hold a LiveSettings and read
``settings.current`` when they need a value, so a later settings page can
replace values at runtime.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nopard.settings.declared import SETTINGS, Setting


class ConfigError(ValueError):
    """A setting has a value nopard cannot use; the message names it."""




@dataclass(frozen=True)
class Settings:
    """The validated value of every setting."""

    hostname: str
    port: int
    listen: tuple[str, ...]
    base_url: str
    registry_path: str
    storage: str
    s3_bucket: str
    s3_prefix: str
    accel_redirect: str
    accel_cache_ttl: int
    tarball_redirect: str
    tarball_redirect_ttl: int
    redis_url: str
    lock_ttl: float
    loglevel: str
    log_format: str
    log_max_size: int
    log_backups: int
    logfile: str
    run_path: str
    runas_user: str
    home: str
    htpasswd: str
    admin_token_file: str
    max_users: int
    admins: tuple[str, ...]
    auth_read: bool
    auth_write: bool
    login_attempts: int
    login_window: float
    session_token_ttl: float
    always_https: bool
    max_body_size: int
    forwarder_url: str
    auto_forward: bool
    proxy_url: str
    ignore_cert: bool
    user_agent: str
    meta_ttl: float
    upstream_timeout: float
    stale_deadline: float
    not_found_ttl: float
    mirror_write_delay: float
    unpublish_grace: float
    probe_interval: float
    private_scopes: tuple[str, ...]
    merge_upstream: tuple[str, ...]
    scope_upstreams: dict[str, str]
    scope_tokens: dict[str, str]
    sync_interval: float
    sync_concurrency: int
    sync_rate: int
    backfill: str
    memory_cache_size: int
    config: str = ""
    min_release_age: float = 0.0
    min_release_age_exclude: tuple[str, ...] = ()
    workers: int = 1
    audit: str = "upstream"
    advisories_url: str = ""
    block_malware: bool = True
    mirror_max_size: int | None = None
    mirror_evict_pinned: bool = False
    changes_url: str = ""

    @property
    def htpasswd_path(self) -> str:
        """NOPARD_HTPASSWD's file, else where older versions kept it (moved into the store at start)."""
        return self.htpasswd or os.path.join(self.registry_path, "htpasswd")

    @property
    def admin_token_path(self) -> str:
        """The operator token's file (nopard writes it, nopard-admin reads it), by default in the registry."""
        return self.admin_token_file or os.path.join(self.registry_path, ".nopard-admin-token")

    def replace(self, **changes: Any) -> Settings:
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
        text, source, _ = _given(setting, options, environ)
        try:
            values[setting.name] = setting.parse(text)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
    base = cwd or os.getcwd()
    if values["home"]:
        values["home"] = os.path.abspath(os.path.join(base, values["home"]))
        base = values["home"]  # relative paths are the daemon's, which works in NOPARD_HOME
    if values["run_path"]:
        values["run_path"] = os.path.abspath(os.path.join(base, values["run_path"]))
    if not values["registry_path"]:
        raise ConfigError("NOPARD_REGISTRY_PATH: must not be empty")
    values["registry_path"] = os.path.abspath(os.path.join(base, values["registry_path"]))
    if values["htpasswd"]:
        values["htpasswd"] = os.path.abspath(os.path.join(base, values["htpasswd"]))
    if values["admin_token_file"]:
        values["admin_token_file"] = os.path.abspath(os.path.join(base, values["admin_token_file"]))
    if values["logfile"]:
        values["logfile"] = os.path.abspath(os.path.join(base, values["logfile"]))
    if values.get("config"):
        values["config"] = os.path.abspath(os.path.join(base, values["config"]))
    if values["storage"] == "s3" and not values["s3_bucket"]:
        raise ConfigError("NOPARD_S3_BUCKET: must be set when NOPARD_STORAGE is s3")
    if values["accel_redirect"] and values["storage"] != "fs":
        raise ConfigError("NOPARD_ACCEL_REDIRECT: nginx can send only files of NOPARD_STORAGE=fs")
    if values["tarball_redirect"] and values["storage"] != "s3":
        raise ConfigError("NOPARD_TARBALL_REDIRECT: redirects go to objects of NOPARD_STORAGE=s3")
    settings = Settings(**values)
    check_settings(settings)
    return settings


# Where a setting's value comes from (the settings page adds its own, nopard/settings/overrides.py).
SOURCE_DEFAULT = "default"
SOURCE_ENVIRONMENT = "environment"
SOURCE_OPTION = "option"


def _given(
    setting: Setting, options: Mapping[str, str | None], environ: Mapping[str, str]
) -> tuple[str, str, str]:
    """The text of ``setting``, the name an error about it gives, and its source (SOURCE_*)."""
    given = options.get(setting.name)
    if given is not None:
        return given, f"--{setting.option}", SOURCE_OPTION
    if setting.env in environ:
        return environ[setting.env], setting.env, SOURCE_ENVIRONMENT
    if setting.name == "redis_url" and "REDIS_URL" in environ:  # the 12-factor name
        return environ["REDIS_URL"], "REDIS_URL", SOURCE_ENVIRONMENT
    return setting.default, setting.env, SOURCE_DEFAULT


def setting_sources(options: Mapping[str, str | None], environ: Mapping[str, str]) -> dict[str, str]:
    """Setting name -> where load_settings took its value from: "option", "environment" or "default"."""
    return {setting.name: _given(setting, options, environ)[2] for setting in SETTINGS}


def check_settings(settings: Settings) -> None:
    """The checks across settings load_settings makes; ConfigError naming the setting."""
    _refuse_self_as_upstream(settings)


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "[::1]", "[::]"}


def is_own_url(settings: Settings, url: str) -> bool:
    """Whether ``url`` names this nopard (a local address on its port, or its NOPARD_BASE_URL's host and port)."""
    own: set[tuple[str | None, int]] = {(host, settings.port) for host in _LOCAL_HOSTS | {settings.hostname}}
    if settings.base_url:
        base = urlsplit(settings.base_url)
        own.add((base.hostname, base.port or (443 if base.scheme == "https" else 80)))
    parts = urlsplit(url)
    return (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)) in own


def _refuse_self_as_upstream(settings: Settings) -> None:
    """An upstream that is nopard itself would loop every miss back into nopard."""
    # Pairs, not a dict keyed by variable: every scope upstream is checked, not just the last.
    upstreams = [("NOPARD_FORWARDER_URL", settings.forwarder_url), ("NOPARD_ADVISORIES_URL", settings.advisories_url),
                 ("NOPARD_CHANGES_URL", settings.changes_url)]
    upstreams += [("NOPARD_SCOPE_UPSTREAMS", url) for url in settings.scope_upstreams.values()]
    for variable, url in upstreams:
        if url and is_own_url(settings, url):
            raise ConfigError(f"{variable}: {url} is this nopard itself")


class LiveSettings:
    """The one place components read settings from, replaceable at runtime."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings

    def update(self, **changes: Any) -> Settings:
        """Replace some values (already parsed) for every component at once."""
        self.current = self.current.replace(**changes)
        return self.current
