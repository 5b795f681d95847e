"""Imported advisories in the store (keys.ADVISORIES_*), found by package name for audits.

Two kinds of objects: the index (every record id imported, with its ``modified`` and the
packages it named) and 256 shards, each holding the advisories of the packages whose
names hash to it. An audit reads at most one shard per name asked about (at most 256,
however big the project); an import rewrites only the shards whose packages changed.

A record replaces the one stored under its id only when its ``modified`` is later, so
importing the same records twice, or an older copy of them, changes nothing. A
withdrawn record takes its advisories out (its id stays in the index, so an older
copy does not bring them back). Every write is a compare-and-swap merged by those
rules, so two imports at once (the sync worker and nopard-admin) lose nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet.defer import Deferred, gatherResults

from nopard.advisories.osv import MALWARE_PREFIX, Advisory, Record, RecordError, parse_record
from nopard.advisories.sources import Item
from nopard.domain.errors import InvalidInput
from nopard.storage import InvalidKey, Storage, keys

MAX_PROBLEMS_KEPT = 100


@dataclass
class ImportReport:
    """What one import did; ``summary`` is its one line."""

    read: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    withdrawn: int = 0
    other_ecosystems: int = 0
    problem_count: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    # The advisories of malware records whose state changed: (advisory, still in force).
    malware: list[tuple[Advisory, bool]] = field(default_factory=list)

    def problem(self, origin: str, why: str) -> None:
        """Count a record left out; the first MAX_PROBLEMS_KEPT are kept with their reasons."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append((origin, why))

    def summary(self) -> str:
        """One line for the log and nopard-admin."""
        return (f"advisories: {self.read} records read, {self.new} new, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.withdrawn} withdrawn, "
                f"{self.other_ecosystems} of other ecosystems skipped, {self.problem_count} malformed skipped")

    def to_json(self) -> dict[str, Any]:
        """For the admin API and the sync status."""
        return {"read": self.read, "new": self.new, "updated": self.updated, "unchanged": self.unchanged,
                "withdrawn": self.withdrawn, "other_ecosystems": self.other_ecosystems,
                "problem_count": self.problem_count,
                "problems": [{"file": origin, "reason": why} for origin, why in self.problems],
                "summary": self.summary()}


def parse_items(items: Iterable[Item], report: ImportReport, known: Mapping[str, str] | None = None) -> list[Record]:
    """The usable records of ``items`` (npm or not), the newest of each id; problems counted in ``report``.

    ``known``: id -> ``modified`` of the records stored (AdvisoryStore.known): a record no newer
    is counted unchanged and not kept, so a refresh holds only what changed. Pure and
    CPU-bound: run it in a thread for big sources.
    """
    known = known or {}
    found: dict[str, Record] = {}
    for item in items:
        report.read += 1
        if item.problem is not None:
            report.problem(item.origin, item.problem)
            continue
        try:
            record = parse_record(item.data)
        except RecordError as error:
            report.problem(item.origin, str(error))
            continue
        if not record.advisories and not record.withdrawn:
            report.other_ecosystems += 1
            continue
        if known.get(record.id, "") >= record.modified:
            report.unchanged += 1
            continue
        held = found.get(record.id)
        if held is None or record.modified > held.modified:
            found[record.id] = record
    return list(found.values())


def _load(stored: bytes | None) -> dict[str, Any]:
    if stored is None:
        return {}
    try:
        value = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return {}  # unreadable: rebuilt by the next import
    return value if isinstance(value, dict) else {}


class AdvisoryStore:
    """The stored advisories: imported, and looked up by package name."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def advisories_for(self, names: Iterable[str]) -> dict[str, list[Advisory]]:
        """The advisories in force for each of ``names`` that has any (one read per shard)."""
        by_shard: dict[str, list[str]] = {}
        for name in set(names):
            try:
                by_shard.setdefault(keys.advisory_shard_key(name), []).append(name)
            except (InvalidInput, InvalidKey):  # not a package name (pnpm's "." importer): no advisories
                continue

        async def one(key: str) -> dict[str, Any]:
            return _load(await self._storage.read(key))

        shards = await gatherResults([Deferred.fromCoroutine(one(key)) for key in by_shard])
        found: dict[str, list[Advisory]] = {}
        for wanted, shard in zip(by_shard.values(), shards, strict=True):
            for name in wanted:
                entries = shard.get(name)
                if isinstance(entries, dict) and entries:
                    found[name] = [Advisory.from_json(entry) for _, entry in sorted(entries.items())]
        return found

    async def known(self) -> dict[str, str]:
        """id -> ``modified`` of every record stored (for parse_items to skip what is unchanged)."""
        index = _load(await self._storage.read(keys.ADVISORIES_INDEX)).get("records", {})
        return {osv_id: held[0] for osv_id, held in index.items() if isinstance(held, list) and held}

    async def has_advisories(self) -> bool:
        """Whether any records were ever imported (an audit answered from none would say "all clear")."""
        return await self._storage.exists(keys.ADVISORIES_INDEX)

    async def advisory(self, osv_id: str) -> list[Advisory]:
        """The advisories in force of the record ``osv_id`` (one per package it names)."""
        held = _load(await self._storage.read(keys.ADVISORIES_INDEX)).get("records", {}).get(osv_id)
        names = held[1] if isinstance(held, list) and len(held) == 2 else []
        found = await self.advisories_for(names)
        return [a for name in names for a in found.get(name, []) if a.id == osv_id]

    async def import_records(self, records: list[Record], report: ImportReport) -> ImportReport:
        """Store ``records`` (from ``parse_items``) by the rules above; counts go to ``report``."""
        index = _load(await self._storage.read(keys.ADVISORIES_INDEX)).get("records", {})
        changed: list[Record] = []
        for record in records:
            held = index.get(record.id)
            if held is not None and held[0] >= record.modified:
                report.unchanged += 1
                continue
            changed.append(record)
            if record.withdrawn:
                report.withdrawn += 1
            elif held is None:
                report.new += 1
            else:
                report.updated += 1
        # Each shard once: what its packages lose (the changed ids' old packages) and gain.
        touched: dict[str, list[tuple[str, Record]]] = {}
        for record in changed:
            old = index.get(record.id, [None, []])[1]
            new = [] if record.withdrawn else [a.package for a in record.advisories]
            for name in {*old, *new}:
                touched.setdefault(keys.advisory_shard_key(name), []).append((name, record))
        for key, changes in sorted(touched.items()):
            events: list[tuple[Advisory, bool]] = []

            def change(shard: dict[str, Any], changes: Any = changes, events: Any = events) -> dict[str, Any]:
                events.clear()  # a retried compare-and-swap applies the changes again
                return _apply(shard, changes, events)

            await self._update(key, change)
            report.malware += events
        if changed:  # the index exists once a record was stored (has_advisories)
            await self._update(keys.ADVISORIES_INDEX, lambda stored: _index(stored, changed))
        return report

    async def _update(self, key: str, change: Any) -> None:
        """Read, change, compare-and-swap ``key`` until it holds the change."""
        while True:
            stored = await self._storage.read_versioned(key)
            value = change(_load(stored[0] if stored else None))
            if await self._storage.replace(key, orjson.dumps(value), stored[1] if stored else None):
                return


def _apply(shard: dict[str, Any], changes: list[tuple[str, Record]],
           malware: list[tuple[Advisory, bool]]) -> dict[str, Any]:
    """``shard`` with each (package, record) change applied; a stored entry changed later is kept.

    Each malware advisory taken out or put in is added to ``malware`` (the advisory, whether in force).
    """
    for name, record in changes:
        entries = shard.setdefault(name, {})
        held = entries.get(record.id)
        if held is not None and held.get("modified", "") >= record.modified:
            continue
        advisory = next((a for a in record.advisories if a.package == name), None)
        if held is not None:
            del entries[record.id]
            if held["id"].startswith(MALWARE_PREFIX) and (advisory is None or record.withdrawn):
                malware.append((Advisory.from_json(held), False))
        if advisory is not None and not record.withdrawn:
            entries[record.id] = advisory.to_json()
            if advisory.malicious:
                malware.append((advisory, True))
        if not entries:
            del shard[name]
    return shard


def _index(stored: dict[str, Any], changed: list[Record]) -> dict[str, Any]:
    records = stored.setdefault("records", {})
    for record in changed:
        held = records.get(record.id)
        if held is None or held[0] < record.modified:
            records[record.id] = [record.modified,
                                  [] if record.withdrawn else sorted({a.package for a in record.advisories})]
    return stored
