"""A mirror out of the box: without NOPARD_FORWARDER_URL, the registry npm on this machine uses.

When NOPARD_FORWARDER_URL is unset (neither the variable nor ``--forwarder-url``
given), nopard asks ``npm config get registry`` once at start, as the user it
runs as (NOPARD_RUNAS_USER's, with that user's HOME, when started as root), with
a short timeout, and mirrors the answer. It keeps nothing when npm is not on
PATH, fails, or answers no http(s) URL: then nopard is a private registry, and
one log line says why. When the answer is this nopard itself (a user whose npm
already points at nopard), the registry npm names without the user's .npmrc is
taken instead (npm's global config's, or npm's default), unless it is nopard too.
``NOPARD_FORWARDER_URL=none`` asks nothing and mirrors nothing.

Nothing here names a registry: the URL is whatever npm says.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from nopard.domain.urls import without_credentials
from nopard.settings.config import SOURCE_DEFAULT, LiveSettings, Settings, is_own_url
from nopard.settings.values import parse_forwarder_url

# Seconds `npm config get registry` may take before nopard starts without it.
NPM_TIMEOUT = 10.0
# Where the forwarder came from, as the settings page and the status show it.
SOURCE_NPM = "npm config get registry"


@dataclass(frozen=True)
class ForwarderOrigin:
    """Where the forwarder nopard started with came from, for the start-up log line and the status.

    ``url``: the forwarder ("" for none); ``source``: the setting's source
    (config.SOURCE_*, or SOURCE_NPM); ``note``: one sentence saying which
    registry is mirrored and why (or why none).
    """

    url: str
    source: str
    note: str

    def status(self, current_url: str, overridden: bool) -> dict[str, Any]:
        """The forwarder as ``/-/nopard/status`` shows it (the settings page may have changed it since)."""
        if overridden:
            return {"url": without_credentials(current_url) or None, "source": "settings page",
                    "note": "set on the settings page"}
        return {"url": without_credentials(self.url) or None, "source": self.source, "note": self.note}

    def shown(self, live: LiveSettings, overrides: Any) -> Callable[[], dict[str, Any]]:
        """``status`` read when asked, from the live settings and the settings page's ``overrides.values``."""
        return lambda: self.status(live.current.forwarder_url, "forwarder_url" in overrides.values)


class ForwarderAnnouncement(Service):
    """Logs once, at start, which registry nopard mirrors and where that came from (one line)."""

    def __init__(self, origin: ForwarderOrigin, log: Logger) -> None:
        self._origin = origin
        self._log = log

    def startService(self) -> None:
        super().startService()
        self._log.info("forwarder: {note}", event="forwarder", note=self._origin.note, origin=self._origin.source)


Runner = Callable[..., subprocess.CompletedProcess]


def _as_user(user: str, environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """subprocess arguments and environment running npm as ``user`` (when root may), with that user's HOME."""
    env = dict(environ)
    if not user or os.geteuid() != 0:
        return {}, env
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return {}, env  # daemon.prepare refuses an unknown user with a clear error
    env["HOME"] = entry.pw_dir
    return {"user": entry.pw_uid, "group": entry.pw_gid}, env


def _user_name() -> str:
    """The name of the user this process runs as (its uid when the system has no name for it)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def ask_npm(settings: Settings, environ: Mapping[str, str], run: Runner = subprocess.run,
            without_userconfig: bool = False) -> tuple[str, str]:
    """(registry, how it was read) from ``npm config get registry``; ("", why not) when npm gives none.

    ``without_userconfig``: the registry npm would use without the user's .npmrc (its global
    config, else npm's own default).
    """
    npm = shutil.which("npm", path=environ.get("PATH", os.defpath))
    if npm is None:
        return "", "no npm on PATH to ask for a registry"
    user, env = _as_user(settings.runas_user, environ)
    who = settings.runas_user or _user_name()
    try:
        extra = ["--userconfig", os.devnull] if without_userconfig else []
        answer = run([npm, "config", "get", "registry", "userconfig", *extra], env=env, capture_output=True, text=True,
                     timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL, check=False, **user)
    except subprocess.TimeoutExpired:
        return "", f"`npm config get registry` ({npm}, as {who}) gave no answer within {NPM_TIMEOUT:g} s"
    except OSError as error:
        return "", f"`npm config get registry` ({npm}, as {who}) could not run: {error.strerror}"
    if answer.returncode != 0:
        return "", f"`npm config get registry` ({npm}, as {who}) failed with exit status {answer.returncode}"
    values = dict(line.split("=", 1) for line in answer.stdout.splitlines() if "=" in line)
    registry = values.get("registry", "").strip()
    return registry, f"`npm config get registry` ({npm}, as {who}, userconfig {values.get('userconfig', '?')})"


def given_forwarder(settings: Settings, source: str) -> ForwarderOrigin:
    """The origin of a forwarder set by NOPARD_FORWARDER_URL or ``--forwarder-url`` (npm not asked)."""
    shown = without_credentials(settings.forwarder_url)
    if shown:
        return ForwarderOrigin(settings.forwarder_url, source, f"mirroring {shown} (NOPARD_FORWARDER_URL)")
    return ForwarderOrigin("", source, "a private registry: NOPARD_FORWARDER_URL is none")


def choose_forwarder(settings: Settings, sources: Mapping[str, str], environ: Mapping[str, str],
                     run: Runner = subprocess.run) -> tuple[Settings, dict[str, str], ForwarderOrigin]:
    """``settings`` and ``sources`` with the forwarder npm uses when NOPARD_FORWARDER_URL is unset, and its origin."""
    chosen, origin = _choose(settings, sources, environ, run)
    return chosen, {**sources, "forwarder_url": origin.source}, origin


def _choose(settings: Settings, sources: Mapping[str, str], environ: Mapping[str, str],
            run: Runner) -> tuple[Settings, ForwarderOrigin]:
    source = sources.get("forwarder_url", SOURCE_DEFAULT)
    if source != SOURCE_DEFAULT:
        return settings, given_forwarder(settings, source)
    registry, how = ask_npm(settings, environ, run)
    private = "a private registry (set NOPARD_FORWARDER_URL to mirror one, or to none to keep this quiet)"
    if not registry:
        return settings, ForwarderOrigin("", SOURCE_DEFAULT, f"{how}: {private}")
    try:
        url = parse_forwarder_url(registry)
    except ValueError:
        return settings, ForwarderOrigin("", SOURCE_DEFAULT, f"{how} answered {registry!r}, no http(s) URL: {private}")
    if url and is_own_url(settings, url):
        own = f"{how} names this nopard itself ({without_credentials(url)})"
        # The user pointed npm at nopard (the README's next step) and restarted nopard: the
        # registry npm used before is the one its global config, or npm itself, names.
        before = _usable(settings, ask_npm(settings, environ, run, without_userconfig=True)[0])
        if not before:
            return settings, ForwarderOrigin("", SOURCE_DEFAULT, f"{own}, ignored: {private}")
        return settings.replace(forwarder_url=before), ForwarderOrigin(
            before, SOURCE_NPM, f"{own}; mirroring {without_credentials(before)}, npm's registry without that "
            "user config; NOPARD_FORWARDER_URL overrides it (none: a private registry)")
    if not url:
        return settings, ForwarderOrigin("", SOURCE_DEFAULT, f"{how} answered none: {private}")
    chosen = settings.replace(forwarder_url=url)
    return chosen, ForwarderOrigin(url, SOURCE_NPM, f"mirroring {without_credentials(url)}, the registry of {how}; "
                                   "NOPARD_FORWARDER_URL overrides it (none: a private registry)")


def _usable(settings: Settings, registry: str) -> str:
    """``registry`` as a forwarder URL, or "" when it is none, no http(s) URL, or this nopard itself."""
    try:
        url = parse_forwarder_url(registry) if registry else ""
    except ValueError:
        return ""
    return "" if not url or is_own_url(settings, url) else url
