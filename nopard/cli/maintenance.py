"""Checking and cleaning a store: what ``nopard-admin fsck`` and ``gc`` do, on every backend.

``scan`` verifies every stored tarball against the checksums recorded by the
version that names it (dist.integrity, else dist.shasum), streaming it through
the Storage interface (never held whole), moves a mismatch to
``.quarantine/<same key>`` (a dot name, which no storage key can name, so
nopard never serves it: a folder of the directory, objects under the bucket's
prefix) and reports orphans, local documents naming missing tarballs, leftover
temporary files and unreadable documents. ``collect`` removes what a scan
counts as garbage. The output is the same on every backend.

Both work on the store directly, while nopard runs or not: they never rewrite a
document, a move or a removal is one rename or delete, an orphan is looked up
again in its document just before it is removed, and an object written in the
last ``SETTLE_SECONDS`` (a download in progress, a tarball whose document is
about to be written) is never counted as garbage.

Also here: ``run_now``, which drives the async Storage interface from a plain
command line, without a reactor (every backend call made directly).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import orjson

from nopard.domain.integrity import Digests
from nopard.domain.packument import dist_tarball_file, version_tarball_file
from nopard.storage import QUARANTINE, TEMPORARY_PREFIXES, Maintained, Storage, keys
from nopard.storage.fs import FilesystemStorage

__all__ = ["QUARANTINE", "TEMPORARY_PREFIXES"]  # fsck's names, kept where the backends share them
# A temporary file or an unnamed tarball untouched this long is left over, not in use.
SETTLE_SECONDS = 600.0
GARBAGE = frozenset({"corrupt", "orphan", "temporary", "quarantined"})
_CHUNK = 1024 * 1024

T = TypeVar("T")


# Running the Storage interface without a reactor ------------------------------


async def call_directly(function: Callable[..., T], *args: Any) -> T:
    """A ``run_in_thread`` that simply calls: a command line has nothing else to do meanwhile."""
    return function(*args)


def open_storage(root: str) -> FilesystemStorage:
    """The filesystem store at ``root``, for use with ``run_now``."""
    return FilesystemStorage(root, call_directly)


def open_store(settings: Any) -> Any:  # FilesystemStorage | S3Storage: both are Maintained
    """The store NOPARD_STORAGE names, for use with ``run_now``: the directory, or the S3 bucket (AWS_* variables)."""
    if settings.storage != "s3":
        return open_storage(settings.registry_path)
    from nopard.storage.s3 import S3Storage, s3_client

    return S3Storage(s3_client(max_connections=1), settings.s3_bucket, settings.s3_prefix, call_directly)


def run_now(coroutine: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    """The result of a coroutine that never waits (storage calls made through ``call_directly``)."""
    try:
        coroutine.send(None)  # type: ignore[union-attr]
    except StopIteration as done:
        return done.value
    coroutine.close()  # type: ignore[union-attr]
    raise RuntimeError("a storage call waited on something; run_now only drives direct calls")


# Findings ---------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing fsck reports.

    ``kind`` is corrupt, orphan, missing, temporary, unreadable or quarantined;
    ``path`` is relative to the store (absolute for a file outside it);
    ``location`` is what gc removes: a key (``place`` "key"), a leftover of the
    backend ("leftover": a temporary file, the quarantined copy of a corrupt
    tarball) or a local file beside an htpasswd file kept elsewhere ("file").
    """

    kind: str
    path: str
    detail: str
    location: str
    size: int = 0
    place: str = "key"

    @property
    def garbage(self) -> bool:
        """Whether gc removes it."""
        return self.kind in GARBAGE

    def line(self) -> str:
        """How fsck prints it."""
        return f"{self.kind} {self.path}: {self.detail}"


@dataclass
class ScanReport:
    """What a scan found, and how much it looked at."""

    findings: list[Finding] = field(default_factory=list)
    documents: int = 0
    tarballs: int = 0

    def summary(self) -> str:
        """One line: counts, and either 'all well' or the findings by kind."""
        checked = f"{self.documents} documents, {self.tarballs} tarballs checked"
        if not self.findings:
            return f"fsck: {checked}; all well"
        kinds: dict[str, int] = {}
        for finding in self.findings:
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
        detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        return f"fsck: {checked}; {len(self.findings)} problems ({detail})"


# Pure parts -------------------------------------------------------------------


def named_tarballs(document: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Tarball file name -> (version, dist) of every version of a document."""
    named = {}
    name = document.get("name")
    for version, manifest in (document.get("versions") or {}).items():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        # The file nopard stores it under (odd upstream URLs get the conventional name).
        filename = version_tarball_file(name, version, dist) if isinstance(name, str) else dist_tarball_file(dist)
        if filename is not None and isinstance(dist, dict):  # a file name comes from a dist block
            named[filename] = (version, dist)
    return named


def has_checksums(dist: dict[str, Any]) -> bool:
    """Whether a dist block records anything to verify a tarball against."""
    integrity = dist.get("integrity")
    return bool(dist.get("shasum")) or (isinstance(integrity, str) and bool(integrity.strip()))


def tarball_matches(path: str, dist: dict[str, Any]) -> bool:
    """Whether the file at ``path`` matches dist.integrity (else dist.shasum); read in chunks.

    A dist block with no checksum at all cannot be contradicted: True.
    """
    if not has_checksums(dist):
        return True
    digests = Digests(dist)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digests.update(chunk)
    return digests.matches(dist)


# Every hash import and export record or compare, whatever a dist block names.
ALL_DIGESTS = {"shasum": "-", "integrity": "sha512-"}


class DigestSink:
    """A consumer of a stored blob (``Blob.send_to``): hashes the bytes, and copies them to ``file`` if given.

    A pull producer (the filesystem's FileSender) is pulled dry at once: a command line
    has nothing else to do meanwhile; a push producer (S3's body) drives itself.
    """

    def __init__(self, dist: dict[str, Any], file: IO[bytes] | None = None) -> None:
        self.digests = Digests(dist)
        self._file = file
        self._producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802  # IConsumer's name
        self._producer = producer
        while not streaming and self._producer is not None:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:  # noqa: N802
        self._producer = None

    def write(self, data: bytes) -> None:
        self.digests.update(data)
        if self._file is not None:
            self._file.write(data)


async def stream_digests(storage: Storage, key: str, dist: dict[str, Any],
                         file: IO[bytes] | None = None) -> Digests | None:
    """The digests of ``key``'s object, streamed (and copied to ``file``); None when it is not stored."""
    blob = await storage.open(key)
    if blob is None:
        return None
    sink = DigestSink(dist, file)
    await blob.send_to(sink)  # type: ignore[arg-type]  # an IConsumer in all but the zope declaration
    return sink.digests


def is_temporary(filename: str) -> bool:
    """Whether a file name is one of nopard's temporary files (atomic writes, downloads, htpasswd)."""
    return filename.startswith(TEMPORARY_PREFIXES)


def parse_document(raw: bytes) -> dict[str, Any] | None:
    """A package document from bytes; None when they are not one."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("versions", {}), dict):
        return None
    return document


# The scan ---------------------------------------------------------------------


@dataclass
class _Area:
    """A package's local or mirrored area: its document and the tarballs beside it (key -> size, mtime)."""

    name: str
    local: bool
    document: str | None = None
    meta: str | None = None
    tarballs: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # file -> key, size, mtime


def areas_of(stats: dict[str, tuple[int, float]]) -> list[_Area]:
    """The areas the keys under packages/ make up, sorted as a directory walk lists them."""
    found: dict[tuple[str, bool], _Area] = {}
    for key, (size, modified) in stats.items():
        parsed = keys.parse_package_key(key)
        if parsed is None or parsed.kind in (keys.UNPUBLISHED, keys.MIRRORED_ATTESTATIONS):
            continue
        local = parsed.kind in (keys.LOCAL_DOCUMENT, keys.LOCAL_TARBALL)
        area = found.setdefault((parsed.name, local), _Area(parsed.name, local))
        if parsed.kind in (keys.LOCAL_DOCUMENT, keys.MIRRORED_DOCUMENT):
            area.document = key
        elif parsed.kind == keys.MIRRORED_META:
            area.meta = key
        else:
            area.tarballs[parsed.filename or ""] = (key, size, modified)
    return [found[place] for place in sorted(found, key=lambda place: (place[0], not place[1]))]


class _Scan:
    def __init__(self, storage: Maintained, now: float, quarantine: bool, settle: float) -> None:
        self.storage = storage
        self.now = now
        self.quarantine = quarantine
        self.settle = settle
        self.report = ScanReport()

    def add(self, kind: str, path: str, detail: str, size: int = 0, location: str | None = None,
            place: str = "key") -> None:
        self.report.findings.append(Finding(kind, path, detail, location or path, size, place))

    def settled(self, modified: float) -> bool:
        return self.now - modified >= self.settle

    async def leftovers(self) -> None:
        found = await self.storage.leftovers()
        for leftover in found:
            if leftover.kind == "quarantined":
                self.add("quarantined", leftover.path, "awaiting gc", leftover.size, place="leftover")
        for leftover in found:
            if leftover.kind == "temporary" and self.settled(leftover.modified):
                minutes = int((self.now - leftover.modified) // 60)
                self.add("temporary", leftover.path, f"left by an interrupted write ({minutes} min old)",
                         leftover.size, place="leftover")

    def local_temporary_files(self, directory: str) -> None:
        """Leftovers of the htpasswd file's atomic writes, in its folder outside the store."""
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name.startswith(TEMPORARY_PREFIXES) and os.path.isfile(path):
                stat = os.stat(path)
                if self.settled(stat.st_mtime):
                    minutes = int((self.now - stat.st_mtime) // 60)
                    self.add("temporary", path, f"left by an interrupted write ({minutes} min old)",
                             stat.st_size, place="file")

    async def packages(self) -> None:
        for area in areas_of(await self.storage.stats(keys.PACKAGES)):
            await self.area(area)

    async def area(self, area: _Area) -> None:
        """One document and the tarballs beside it (a package's local or upstream area)."""
        named: dict[str, tuple[str, dict[str, Any]]] = {}
        if area.document is not None:
            raw = await self.storage.read(area.document)
            if raw is not None:
                self.report.documents += 1
                document = parse_document(raw)
                if document is None:
                    self.add("unreadable", area.document, "not a package document (tarballs beside it left alone)")
                    return
                named = named_tarballs(document)
        for filename, (key, size, modified) in sorted(area.tarballs.items()):
            if filename not in named:
                if self.settled(modified):
                    self.add("orphan", key, "no document names it", size)
                continue
            self.report.tarballs += 1
            version, dist = named[filename]
            if has_checksums(dist):
                digests = await stream_digests(self.storage, key, dist)
                if digests is not None and not digests.matches(dist):
                    await self.corrupt(key, version, size)
        if area.local:
            for filename, (version, _dist) in sorted(named.items()):
                if filename not in area.tarballs:
                    self.add("missing", f"{keys.local_tarballs_prefix(area.name)}{filename}",
                             f"version {version} names it, but it is not stored")
        elif area.meta is not None:
            raw = await self.storage.read(area.meta)
            if raw is not None and not _is_json_object(raw):
                self.add("unreadable", area.meta, "not a JSON object")

    async def corrupt(self, key: str, version: str, size: int) -> None:
        what = f"does not match the checksums of version {version}"
        if not self.quarantine:
            self.add("corrupt", key, what, size)
            return
        target = await self.storage.set_aside(key)
        if target is not None:
            self.add("corrupt", key, f"{what}; moved to {target}", size, target, "leftover")


async def scan(storage: Maintained, htpasswd_path: str | None = None, now: float | None = None,
               quarantine: bool = True, settle: float = SETTLE_SECONDS) -> ScanReport:
    """Check the store; move corrupt tarballs to the quarantine unless told not to."""
    check = _Scan(storage, time.time() if now is None else now, quarantine, settle)
    await check.leftovers()
    root = getattr(storage, "root", None)
    if htpasswd_path:
        directory = os.path.dirname(os.path.abspath(htpasswd_path))
        inside = root is not None and os.path.commonpath([directory, root]) == root
        if not inside and os.path.isdir(directory):
            check.local_temporary_files(directory)
    await check.packages()
    return check.report


async def collect(storage: Maintained, report: ScanReport, dry_run: bool = False) -> list[Finding]:
    """Remove the garbage a scan found; what was (or would be) removed.

    An orphan is removed only if its document still does not name it (a publish since the scan may have).
    """
    removed = []
    for finding in report.findings:
        if not finding.garbage:
            continue
        if finding.kind == "orphan" and await _named_now(storage, finding.location):
            continue
        if not dry_run and not await _remove(storage, finding):
            continue
        removed.append(finding)
    return removed


async def _named_now(storage: Storage, key: str) -> bool:
    parsed = keys.parse_package_key(key)
    if parsed is None:
        return True  # not a tarball key: never removed as an orphan
    kind = keys.LOCAL_DOCUMENT if parsed.kind == keys.LOCAL_TARBALL else keys.MIRRORED_DOCUMENT
    raw = await storage.read(keys.package_key(kind, parsed.name))
    document = parse_document(raw) if raw is not None else None
    return raw is not None and (document is None or parsed.filename in named_tarballs(document))


async def _remove(storage: Maintained, finding: Finding) -> bool:
    if finding.place == "file":
        try:
            os.unlink(finding.location)
        except FileNotFoundError:
            return False
        return True
    if finding.place == "leftover":
        return await storage.remove_leftover(finding.location)
    return await storage.delete(finding.location)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False
