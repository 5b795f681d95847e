"""Writing a store to a folder: what ``nopard-admin export`` does, on every backend.

An export is every key the store holds, in nopard's layout (a folder ``import`` reads
back, into any backend), but for the kinds ``HOW_EXPORTED`` leaves out by design
(per-instance state). There is no list of files to copy: export walks the store's keys
and decides by each key's kind (``keys.key_kind``), so a kind it has no rule for, or a
key of no kind, is reported and fails the export rather than being missed silently.
Tarballs are copied only when the document beside them names them and they match its
checksums, streamed from the store into the folder (never held whole). The users'
password hashes (the store's ``users/htpasswd``, or NOPARD_HTPASSWD's file) go in as
``htpasswd``. The
export is as secret as the store: it holds the htpasswd hashes, users' two-factor
secrets and token records (hashes, not tokens); not the signing keys (``HOW_EXPORTED``).

When all is written, the store is listed again, counted by kind and compared with what
was written: more held than written (a key written meanwhile, an orphan tarball, an
unreadable document) is a loss, reported, and the command exits 1.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from nopard.auth.htpasswd import UserTable
from nopard.cli.maintenance import areas_of, has_checksums, named_tarballs, parse_document, stream_digests
from nopard.cli.sources import NOT_CARRIED, SourceError
from nopard.domain.times import iso_time
from nopard.storage import Maintained, keys
from nopard.storage.fs import FilesystemStorage

Say = Callable[[str], None]

# What export does with each kind of key (every one of keys.KINDS: a test fails on a kind missing here).
DOCUMENT = "document"  # a package document, when readable; the tarballs it names go with it
VERIFIED = "verified"  # a tarball, when its document names it and it matches (streamed)
COPIED = "copied"  # as stored
# Left out by design (sources.NOT_CARRIED says which kinds, for import too).
LEFT_OUT = "left out"
HOW_EXPORTED = {
    keys.LOCAL_DOCUMENT: DOCUMENT, keys.MIRRORED_DOCUMENT: DOCUMENT,
    keys.LOCAL_TARBALL: VERIFIED, keys.MIRRORED_TARBALL: VERIFIED,
    keys.UNPUBLISHED: COPIED, keys.MIRRORED_META: COPIED, keys.MIRRORED_ATTESTATIONS: COPIED,
    keys.USER_PROFILE: COPIED, keys.TOKEN_RECORD: COPIED, keys.SETTINGS: COPIED,
    keys.ADVISORIES: COPIED, keys.BLOCK_LIST: COPIED, keys.USAGE_RECORD: COPIED, keys.HTPASSWD: COPIED,
    **dict.fromkeys(NOT_CARRIED, LEFT_OUT),
}


@dataclass
class ExportReport:
    """Counts for the summary line, and what was lost or left out."""

    local: int = 0
    mirrored: int = 0
    versions: int = 0
    tarballs: int = 0
    unpublished: int = 0
    users: int = 0
    profiles: int = 0
    problems: int = 0
    other: Counter[str] = field(default_factory=Counter)  # the other kinds copied, by kind
    left_out: dict[str, int] = field(default_factory=dict)  # kinds held more often than written: a loss
    not_exported: dict[str, int] = field(default_factory=dict)  # kinds left out by design


def compare_holdings(held: Counter[str], written: Counter[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(kinds held more often than written: lost by the export, kinds not exported by design), by count."""
    left_out = {kind: count - written[kind] for kind, count in sorted(held.items())
                if HOW_EXPORTED.get(kind) != LEFT_OUT and count > written[kind]}
    skipped = {kind: count for kind, count in sorted(held.items()) if HOW_EXPORTED.get(kind) == LEFT_OUT}
    return left_out, skipped


class _Export:
    def __init__(self, storage: Maintained, target: FilesystemStorage, say: Say) -> None:
        self.storage = storage
        self.target = target
        self.say = say
        self.report = ExportReport()
        self.written: Counter[str] = Counter()
        self.done: set[str] = set()  # keys written (or decided about) by the packages' pass

    async def write(self, key: str, data: bytes) -> None:
        await self.target.write(key, data)
        self.written[keys.key_kind(key)] += 1

    async def copy_tarball(self, key: str, dist: dict[str, Any]) -> str | None:
        """Stream ``key`` into the folder if it matches ``dist``; else why not (missing, corrupt)."""
        fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=self.target.root)
        try:
            with os.fdopen(fd, "wb") as file:
                digests = await stream_digests(self.storage, key, dist, file)
            if digests is None:
                return "missing"
            if has_checksums(dist) and not digests.matches(dist):
                return "corrupt"
            await self.target.create_from_file(key, temporary)
            self.written[keys.key_kind(key)] += 1
            return None
        finally:
            os.unlink(temporary)

    async def packages(self) -> None:
        for area in areas_of(await self.storage.stats(keys.PACKAGES)):
            if area.document is None:
                continue  # tarballs no document names: left out, and counted so
            self.done.add(area.document)
            raw = await self.storage.read(area.document)
            document = parse_document(raw) if raw is not None else None
            if raw is None or document is None:
                self.say(f"unreadable {area.document}: not exported (see nopard-admin fsck)")
                self.report.problems += 1
                continue
            named = named_tarballs(document)
            copied = 0
            for filename, (key, _size, _modified) in sorted(area.tarballs.items()):
                self.done.add(key)
                if filename not in named:
                    continue
                version, dist = named[filename]
                state = await self.copy_tarball(key, dist)
                if state is not None:
                    self.say(f"skipped {area.name}@{version}: its tarball is {state} (see nopard-admin fsck)")
                    self.report.problems += 1
                    continue
                copied += 1
            if area.local:
                for filename, (version, _dist) in sorted(named.items()):
                    if filename not in area.tarballs:
                        self.say(f"skipped {area.name}@{version}: its tarball is missing (see nopard-admin fsck)")
                        self.report.problems += 1
            await self.write(area.document, raw)
            if area.local:
                self.say(f"exported {area.name}: {copied} versions")
                self.report.local += 1
                self.report.versions += len(document.get("versions") or {})
                self.report.tarballs += copied
            else:
                self.report.mirrored += 1

    async def others(self, listing: list[str]) -> None:
        for key in listing:
            kind = keys.key_kind(key)
            if key in self.done or HOW_EXPORTED.get(kind) in (DOCUMENT, VERIFIED):
                continue
            if kind not in HOW_EXPORTED:
                self.say(f"left out {key}: no kind of key nopard knows")
                self.report.problems += 1
                continue
            if HOW_EXPORTED[kind] == LEFT_OUT or (kind == keys.HTPASSWD and self.written[kind]):
                continue
            data = await self.storage.read(key)
            if data is None:
                continue  # removed since the listing
            await self.write(key, data)
            if kind == keys.UNPUBLISHED:
                self.report.unpublished += 1
            elif kind == keys.USER_PROFILE:
                self.report.profiles += 1
            elif kind == keys.HTPASSWD:
                self.report.users = _users_in(data)
            elif kind not in (keys.MIRRORED_META, keys.MIRRORED_ATTESTATIONS):
                self.report.other[kind] += 1


def _users_in(content: bytes) -> int:
    from nopard.auth.htpasswd import parse_htpasswd

    return len(parse_htpasswd(content.decode("utf-8", "replace")))


async def export_registry(storage: Maintained, users: UserTable, target: FilesystemStorage, say: Say) -> ExportReport:
    """Copy every key of ``storage`` that is not left out by design into ``target`` (and the users),
    then count what the store holds by key kind, independently, against what was written."""
    export = _Export(storage, target, say)
    entries = await users.fresh()  # the store's users/htpasswd, or NOPARD_HTPASSWD's file
    if entries:
        await export.write(keys.EXPORTED_HTPASSWD,
                           "".join(f"{user}:{hashed}\n" for user, hashed in entries.items()).encode())
        export.report.users = len(entries)
    await export.packages()
    await export.others(await storage.list(""))
    report = export.report
    say(f"exported {report.users} users")
    marker = {"format": "nopard-export", "version": 1, "exported": iso_time(time.time()),
              "packages": report.local, "users": report.users}
    await target.write(keys.EXPORT_MARKER, orjson.dumps(marker, option=orjson.OPT_INDENT_2))
    held = Counter(keys.key_kind(key) for key in await storage.list(""))
    report.left_out, report.not_exported = compare_holdings(held, export.written)
    for kind, count in report.left_out.items():
        say(f"left out {count} {kind} {'key' if count == 1 else 'keys'} the store holds "
            f"({held[kind]} held, {export.written[kind]} written)")
    return report


def check_export_target(path: str) -> None:
    """SourceError unless ``path`` is absent or an empty directory."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise SourceError(f"{path} exists and is not an empty directory: export into a new one")
