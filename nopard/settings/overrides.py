"""Settings an admin changes at runtime (the settings page), kept in the registry's store.

Precedence: settings page > twistd option > environment (NOPARD_*) > default.
An override is stored as the text a NOPARD_* variable would hold, in the
store object ``settings/overrides.json``::

    {"values": {"meta_ttl": "60"}, "changed_by": "alice", "changed_at": "2026-...Z"}

written with the store's compare-and-swap, so concurrent changes from several
instances lose nothing. Every instance re-reads that object every few seconds
and applies what changed to its LiveSettings: components read
``settings.current`` at use, so no restart is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from nopard.domain.errors import Conflict
from nopard.domain.times import iso_time
from nopard.domain.urls import without_credentials
from nopard.settings.config import (
    SETTINGS,
    SOURCE_DEFAULT,
    ConfigError,
    LiveSettings,
    Setting,
    Settings,
    check_settings,
)
from nopard.storage import Storage, keys

# What an admin may change at runtime: each is read from settings.current at use,
# or followed by the component that copies it (mirror.Upstreams for forwarder_url,
# agents.LiveAgent for proxy_url/ignore_cert, SyncSchedule for sync_interval).
# Not here, because they are fixed at start: where nopard listens and keeps its
# data (hostname, port, storage, paths, redis), logging's format and files,
# probe_interval (each upstream's breaker), the per-scope upstreams and tokens
# (their Upstreams are built once), memory_cache_size, and the access rules file.
OVERRIDABLE: tuple[str, ...] = (
    "forwarder_url",
    "auto_forward",
    "proxy_url",
    "ignore_cert",
    "user_agent",
    "meta_ttl",
    "upstream_timeout",
    "stale_deadline",
    "not_found_ttl",
    "backfill",
    "sync_interval",
    "sync_concurrency",
    "sync_rate",
    "max_users",
    "auth_read",
    "auth_write",
    "always_https",
    "loglevel",
    "audit",
    "advisories_url",
    "block_malware",
)
STORE_KEY = keys.SETTINGS_OVERRIDES
SOURCE_PAGE = "settings page"
# Seconds between two reads of the stored overrides: how soon other instances follow a change.
POLL_SECONDS = 3.0
# Seconds requests wait at start for the first read, at most (a slow store must not keep nopard shut).
START_PATIENCE = 10.0
# Compare-and-swap attempts before a change gives up (only under a storm of concurrent changes).
MAX_ATTEMPTS = 10

_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


class OverrideError(ConfigError):
    """An override nopard cannot use; ``setting`` is its NOPARD_* name (or the unknown name given)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


def overridable(name: str) -> Setting:
    """The setting called ``name`` if an admin may change it at runtime; OverrideError otherwise."""
    setting = _BY_NAME.get(name) if isinstance(name, str) else None
    if setting is None:
        raise OverrideError(str(name), "no such setting")
    if name not in OVERRIDABLE:
        raise OverrideError(setting.env, "cannot be changed at runtime (set it in the environment and restart)")
    return setting


def effective_settings(base: Settings, overrides: Mapping[str, str]) -> Settings:
    """``base`` (defaults, environment, options) with ``overrides`` applied.

    ``overrides`` maps a setting's name to its text, as a NOPARD_* variable
    would hold it; an empty text means no override. Each text goes through
    its setting's own parser, then the result through load_settings' checks
    across settings. Raises OverrideError naming the first bad setting.
    """
    changes: dict[str, Any] = {}
    for name, text in overrides.items():
        setting = overridable(name)
        if not isinstance(text, str):
            raise OverrideError(setting.env, "the value must be text, as the environment variable holds it")
        if not text.strip():
            continue
        try:
            changes[name] = setting.parse(text)
        except ValueError as error:
            raise OverrideError(setting.env, str(error)) from None
    settings = base.replace(**changes)
    try:
        check_settings(settings)
    except OverrideError:
        raise
    except ConfigError as error:
        setting_name, _, reason = str(error).partition(": ")
        raise OverrideError(setting_name, reason) from None
    return settings


def usable_overrides(
    base: Settings, stored: Mapping[str, str], warn: Callable[[OverrideError], None]
) -> dict[str, str]:
    """The stored overrides that apply over ``base``; each bad one goes to ``warn`` and is left out.

    A value can turn bad without being touched (the environment changed under
    it, or an older nopard wrote it): it is skipped, never a reason not to start.
    """
    kept: dict[str, str] = {}
    for name, text in stored.items():
        try:
            effective_settings(base, {**kept, name: text})
        except OverrideError as error:
            warn(error)
            continue
        if text.strip():
            kept[name] = text.strip()
    return kept


def as_text(value: Any) -> str:
    """A parsed value written back as a NOPARD_* variable would hold it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def describe(settings: Settings, sources: Mapping[str, str], overrides: Mapping[str, str]) -> list[dict[str, str]]:
    """One entry per overridable setting, for the settings page.

    Each entry: ``name``, ``env`` (NOPARD_*), ``option`` (--...), ``help``,
    ``default`` (text), ``value`` (the effective value as text) and ``source``:
    "default", "environment", "option" or "settings page".
    """
    entries = []
    for name in OVERRIDABLE:
        setting = _BY_NAME[name]
        entries.append({
            "name": name,
            "env": setting.env,
            "option": f"--{setting.option}",
            "help": setting.help,
            "default": setting.default,
            "value": as_text(getattr(settings, name)),
            "source": SOURCE_PAGE if name in overrides else sources.get(name, SOURCE_DEFAULT),
        })
    return entries


def scrub(text: str) -> str:
    """``text`` without the user:password@ part of any URL in it (a proxy URL may carry one)."""
    return without_credentials(text)


def decode_stored(data: bytes) -> dict[str, str]:
    """The overrides of the stored object; ValueError when it is not what nopard writes."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{STORE_KEY} is not JSON: {error}") from None
    values = document.get("values") if isinstance(document, dict) else None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise ValueError(f'{STORE_KEY} is not {{"values": {{name: text}}}}')
    return values


class Overrides(Service):
    """Keeps LiveSettings equal to base settings + the stored overrides, on every instance.

    ``base`` is what load_settings built; ``sources`` says where each of its
    values came from (config.setting_sources). ``on_change`` callbacks run
    after any effective value changed (SyncSchedule.follow_interval).
    """

    def __init__(
        self,
        live: LiveSettings,
        base: Settings,
        sources: Mapping[str, str],
        storage: Storage,
        clock: IReactorTime,
        log: Logger,
        poll_seconds: float = POLL_SECONDS,
        on_change: Iterable[Callable[[], None]] = (),
    ) -> None:
        self.live = live
        self.base = base
        self.sources = dict(sources)
        self.values: dict[str, str] = {}  # the overrides in effect
        self.loaded = False  # the store was read once (or START_PATIENCE ran out)
        self._storage = storage
        self._clock = clock
        self._log = log
        self._poll_seconds = poll_seconds
        self.on_change = list(on_change)  # callbacks run after an effective value changed
        self._seen: tuple[str | None] | None = None  # (version,) of the stored object last applied
        self._changes = 0  # changes made here: a read begun before one must not undo it
        self._failing = False  # the last read of the store failed
        self._poller: LoopingCall | None = None
        self._patience: Any = None
        self._waiting: list[Deferred] = []

    # Service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._patience = self._clock.callLater(START_PATIENCE, self._mark_loaded)
        self._poller = LoopingCall(self._poll)
        self._poller.clock = self._clock
        self._poller.start(self._poll_seconds, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        if self._patience is not None and self._patience.active():
            self._patience.cancel()

    def when_loaded(self) -> Deferred:
        """Fires once the stored overrides were first applied (at once if they were)."""
        if self.loaded:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _mark_loaded(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _poll(self) -> Deferred:
        return Deferred.fromCoroutine(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        # An error must not stop the LoopingCall: the next read may work. Logged once
        # per outage, not at every poll.
        try:
            await self.refresh()
        except Exception:
            if not self._failing:
                self._log.failure("could not read the runtime settings from the store", event="settings-error")
            self._failing = True
        else:
            if self._failing:
                self._log.info("reading the runtime settings works again", event="settings-readable")
            self._failing = False
        finally:
            self._mark_loaded()

    # Reading and applying -------------------------------------------------

    async def refresh(self) -> list[str]:
        """Read the stored overrides (one read) and apply them if they changed; the names changed."""
        changes_before = self._changes
        stored = await self._storage.read_versioned(STORE_KEY)
        seen = (stored[1] if stored else None,)
        if seen == self._seen or changes_before != self._changes:
            return []
        self._seen = seen
        changed = self._apply(self._stored_values(stored))
        if changed:
            self._log.info("runtime settings changed elsewhere: {names}", event="settings-applied",
                           names=",".join(changed))
        return changed

    def _stored_values(self, stored: tuple[bytes, str] | None) -> dict[str, str]:
        """The usable overrides of a stored object; a broken one counts as none (logged)."""
        if stored is None:
            return {}
        try:
            values = decode_stored(stored[0])
        except ValueError as error:
            self._log.warn("ignoring the runtime settings: {error}", event="settings-ignored", error=str(error))
            return {}
        return usable_overrides(self.base, values, self._warn)

    def _warn(self, error: OverrideError) -> None:
        self._log.warn("ignoring a runtime setting: {error}", event="settings-ignored", error=scrub(str(error)))

    def _apply(self, values: dict[str, str]) -> list[str]:
        """Make ``values`` the overrides in effect; the names whose effective value changed."""
        effective = effective_settings(self.base, values)
        current = self.live.current
        changed = [name for name in OVERRIDABLE if getattr(effective, name) != getattr(current, name)]
        self.values = values
        if changed:
            self.live.update(**{name: getattr(effective, name) for name in changed})
            for callback in self.on_change:
                try:
                    callback()
                except Exception:
                    self._log.failure("applying runtime settings failed", event="settings-error")
        return changed

    # Changing -------------------------------------------------------------

    def entries(self) -> list[dict[str, str]]:
        """The overridable settings with their effective values and sources (see ``describe``)."""
        return describe(self.live.current, self.sources, self.values)

    async def change(self, values: Mapping[str, str], user: str | None) -> list[dict[str, str]]:
        """Validate, store and apply ``values`` (name -> text; empty text removes an override).

        Every value is checked before anything is stored: one bad value raises
        OverrideError naming it and changes nothing. Applied here at once;
        other instances follow within POLL_SECONDS.
        """
        requested = {name: text.strip() if isinstance(text, str) else text for name, text in values.items()}
        effective_settings(self.base, requested)
        merged = await self._store(requested, user)
        self._changes += 1
        before = self.values
        self._apply(merged)
        names = sorted(n for n in set(before) | set(merged) if before.get(n) != merged.get(n))
        self._log.info(
            "{user} changed runtime settings: {changes}", event="settings-changed", user=user or "-",
            names=",".join(names), changes=scrub(" ".join(f"{n}={merged.get(n, '(removed)')}" for n in names)),
        )
        return self.entries()

    async def _store(self, requested: dict[str, str], user: str | None) -> dict[str, str]:
        """Merge ``requested`` into the stored overrides by compare-and-swap; the overrides stored."""
        for _ in range(MAX_ATTEMPTS):
            stored = await self._storage.read_versioned(STORE_KEY)
            merged = {**self._stored_values(stored), **requested}
            merged = {name: text for name, text in merged.items() if text}
            effective_settings(self.base, merged)  # the checks across settings, on the whole
            document = {"values": merged, "changed_by": user, "changed_at": iso_time(self._clock.seconds())}
            if await self._storage.replace(STORE_KEY, orjson.dumps(document), stored[1] if stored else None):
                return merged
        raise Conflict("the runtime settings kept changing meanwhile; try again")


class StartGate(Resource):
    """Holds requests until the stored overrides were first applied.

    Without it, the first requests after a start would be answered under
    settings an admin replaced, say NOPARD_AUTH_READ turned on.
    """

    isLeaf = True

    def __init__(self, inner: IResource, overrides: Overrides) -> None:
        super().__init__()
        self._inner = inner
        self._overrides = overrides

    def render(self, request: Any) -> Any:
        if self._overrides.loaded:
            return self._inner.render(request)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def resume(_: object) -> None:
            if not gone:
                self._render_later(request)

        self._overrides.when_loaded().addCallback(resume)
        return NOT_DONE_YET

    def _render_later(self, request: Any) -> None:
        body = self._inner.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()
