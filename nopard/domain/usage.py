"""When mirrored packages were last used, and what follows from it: which documents a sync run
refreshes (the schedule by use) and which tarballs a bounded mirror evicts (least recently used).

Pure functions over plain data; nopard.mirror.usage keeps the record in the store and
nopard.mirror.eviction acts on these choices.

A usage record is ``{name: {"used": t, "files": {tarball file: t}}}`` with Unix times in
whole seconds: ``used`` is the last time a client asked for the package's document or any of
its tarballs, each file's the last time a client asked for that tarball.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY

# The refresh schedule by use (docs/mirroring.md): (used within this long, refreshed at least this
# often). 0.0 stands for NOPARD_META_TTL: a package used in the last day is refreshed whenever its
# copy would be stale, as before; one used in the last week every 6 hours; one used longer ago,
# or never since nopard began recording use, once a day.
REFRESH_SCHEDULE: tuple[tuple[float, float], ...] = ((DAY, 0.0), (WEEK, 6 * HOUR), (math.inf, DAY))

Usage = dict[str, dict[str, Any]]


def refresh_interval(used_at: float | None, now: float, meta_ttl: float) -> float:
    """How often a document last used at ``used_at`` (None: never recorded) is refreshed."""
    idle = math.inf if used_at is None else max(0.0, now - used_at)
    for within, every in REFRESH_SCHEDULE:
        if idle < within:
            return max(meta_ttl, every)
    return max(meta_ttl, REFRESH_SCHEDULE[-1][1])


def refresh_due(fetched_at: float | None, used_at: float | None, now: float, meta_ttl: float,
                sync_interval: float) -> bool:
    """Whether a sync run at ``now`` refreshes a document fetched at ``fetched_at`` (None: no copy).

    Due when its copy is older than its interval now, or will be before the next run
    (``sync_interval`` from now), so no used package goes stale between two runs.
    """
    if fetched_at is None:
        return True
    return now + sync_interval - fetched_at >= refresh_interval(used_at, now, meta_ttl)


def due_names(fetched: Mapping[str, float | None], usage: Mapping[str, Mapping[str, Any]], now: float,
              meta_ttl: float, sync_interval: float) -> list[str]:
    """The names of ``fetched`` (name -> when its copy was fetched) a sync run at ``now`` refreshes."""
    return [name for name, fetched_at in fetched.items()
            if refresh_due(fetched_at, used_time(usage, name), now, meta_ttl, sync_interval)]


def used_time(usage: Mapping[str, Mapping[str, Any]], name: str, filename: str | None = None) -> float | None:
    """When ``name`` (or its tarball ``filename``) was last used; None when never recorded."""
    entry = usage.get(name)
    if not isinstance(entry, Mapping):
        return None
    value = entry.get("used") if filename is None else (entry.get("files") or {}).get(filename)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def merged(stored: Mapping[str, Any], pending: Mapping[str, Mapping[str, Any]]) -> Usage:
    """``stored`` with ``pending`` added: the later time of each package and file wins.

    Merging is commutative and idempotent, so instances may flush in any order, and a
    flush retried after a lost compare-and-swap counts nothing twice.
    """
    result: Usage = {}
    for source in (stored, pending):
        for name, entry in source.items():
            if not isinstance(name, str) or not isinstance(entry, Mapping):
                continue  # a damaged shard loses only its odd entries
            into = result.setdefault(name, {"used": 0, "files": {}})
            used = entry.get("used")
            if isinstance(used, int | float) and not isinstance(used, bool):
                into["used"] = max(into["used"], int(used))
            files = entry.get("files")
            for filename, when in (files.items() if isinstance(files, Mapping) else ()):
                if isinstance(filename, str) and isinstance(when, int | float) and not isinstance(when, bool):
                    into["files"][filename] = max(into["files"].get(filename, 0), int(when))
    return result


def merged_pins(stored: Mapping[str, Any], pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The versions prefetched lockfiles pinned (name -> sorted versions), with ``pairs`` added."""
    pins: dict[str, set[str]] = {}
    for name, versions in stored.items():
        if isinstance(name, str) and isinstance(versions, list):
            pins.setdefault(name, set()).update(v for v in versions if isinstance(v, str))
    for name, version in pairs:
        pins.setdefault(name, set()).add(version)
    return {name: sorted(versions) for name, versions in sorted(pins.items())}


@dataclass(frozen=True)
class StoredTarball:
    """A mirrored tarball in the store: its key, package, file, size, and when last used (0: never)."""

    key: str
    name: str
    filename: str
    size: int
    used_at: float = 0.0


def choose_evictions(tarballs: Iterable[StoredTarball], size: int, limit: int, kept: frozenset[str],
                     budget: int) -> list[StoredTarball]:
    """The tarballs to evict so the mirror's ``size`` comes under ``limit``, least recently used first.

    Never a key in ``kept`` (e.g. versions a prefetched lockfile pinned); at most ``budget`` of
    them (a run's bounded work: the next run continues). Ties go by key, so every instance
    choosing over the same record chooses the same.
    """
    chosen: list[StoredTarball] = []
    if size <= limit:
        return chosen
    for tarball in sorted(tarballs, key=lambda t: (t.used_at, t.key)):
        if size <= limit or len(chosen) >= budget:
            break
        if tarball.key in kept:
            continue
        chosen.append(tarball)
        size -= tarball.size
    return chosen
