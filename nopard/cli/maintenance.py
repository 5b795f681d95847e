"""Checking and cleaning a registry directory: what ``nopard-admin fsck`` and ``gc`` do.

``scan`` verifies every stored tarball against the checksums recorded by the
version that names it (dist.integrity, else dist.shasum), moves a mismatch to
``.quarantine/<same path>`` (a dot directory, which no storage key can name,
so nopard never serves it) and reports orphans, local documents naming
missing tarballs, leftover temporary files and unreadable documents.
``collect`` removes what a scan counts as garbage.

Both work on the filesystem store directly, while nopard runs or not: they
never rewrite a document, a move or a removal is one atomic rename or unlink,
and a file written in the last ``SETTLE_SECONDS`` (a download in progress, a
tarball whose document is about to be written) is never counted as garbage.

Also here: ``run_now``, which drives the async Storage interface of the
filesystem backend from a plain command line, without a reactor.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from nopard.domain.integrity import Digests
from nopard.domain.packument import dist_tarball_file, version_tarball_file
from nopard.storage import keys
from nopard.storage.fs import FilesystemStorage

QUARANTINE = ".quarantine"
# A temporary file or an unnamed tarball untouched this long is left over, not in use.
SETTLE_SECONDS = 600.0
TEMPORARY_PREFIXES = (".tmp-", ".fetch-", ".htpasswd-")
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


def open_store(settings: Any) -> Any:
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
    ``path`` is relative to the registry (absolute outside it); ``location``
    is where the file is now (in the quarantine, for a corrupt tarball moved).
    """

    kind: str
    path: str
    detail: str
    location: str
    size: int = 0

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


class _Scan:
    def __init__(self, root: str, now: float, quarantine: bool) -> None:
        self.root = root
        self.now = now
        self.quarantine = quarantine
        self.report = ScanReport()

    def relative(self, path: str) -> str:
        if os.path.commonpath([self.root, path]) != self.root:
            return path  # beside an htpasswd file kept elsewhere
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def add(self, kind: str, path: str, detail: str, location: str | None = None) -> None:
        try:
            size = os.path.getsize(location or path)
        except OSError:
            size = 0
        self.report.findings.append(Finding(kind, self.relative(path), detail, location or path, size))

    def settled(self, path: str) -> bool:
        try:
            return self.now - os.stat(path).st_mtime >= SETTLE_SECONDS
        except FileNotFoundError:
            return False

    def quarantined(self) -> None:
        top = os.path.join(self.root, QUARANTINE)
        for directory, _subdirectories, files in sorted(os.walk(top)):
            for name in sorted(files):
                self.add("quarantined", os.path.join(directory, name), "awaiting gc")

    def temporary_files(self, top: str, recursive: bool = True) -> None:
        for directory, subdirectories, files in os.walk(top):
            subdirectories[:] = sorted(d for d in subdirectories if recursive and d != QUARANTINE)
            for name in sorted(files):
                path = os.path.join(directory, name)
                if is_temporary(name) and self.settled(path):
                    minutes = int((self.now - os.stat(path).st_mtime) // 60)
                    self.add("temporary", path, f"left by an interrupted write ({minutes} min old)")

    def packages(self) -> None:
        top = os.path.join(self.root, keys.PACKAGES_FOLDER)
        for entry in _subdirectories(top):
            if entry.startswith("@"):
                for name in _subdirectories(os.path.join(top, entry)):
                    self.package(os.path.join(top, entry, name))
            else:
                self.package(os.path.join(top, entry))

    def package(self, directory: str) -> None:
        self.area(directory, local=True)
        upstream = os.path.join(directory, keys.MIRRORED_FOLDER)
        if os.path.isdir(upstream):
            self.area(upstream, local=False)
            meta = os.path.join(upstream, keys.META_FILE)
            if os.path.isfile(meta) and not _is_json_object(meta):
                self.add("unreadable", meta, "not a JSON object")

    def area(self, directory: str, local: bool) -> None:
        """One document and the tarballs beside it (a package's local or upstream area)."""
        document_path = os.path.join(directory, keys.DOCUMENT_FILE)
        stored = _files(os.path.join(directory, keys.TARBALLS_FOLDER))
        named: dict[str, tuple[str, dict[str, Any]]] = {}
        if os.path.isfile(document_path):
            self.report.documents += 1
            with open(document_path, "rb") as file:
                document = parse_document(file.read())
            if document is None:
                self.add("unreadable", document_path, "not a package document (tarballs beside it left alone)")
                return
            named = named_tarballs(document)
        for filename in stored:
            path = os.path.join(directory, keys.TARBALLS_FOLDER, filename)
            if filename not in named:
                if self.settled(path):
                    self.add("orphan", path, "no document names it")
                continue
            self.report.tarballs += 1
            version, dist = named[filename]
            if not tarball_matches(path, dist):
                self.corrupt(path, version)
        if local:
            for filename, (version, _dist) in sorted(named.items()):
                if filename not in stored:
                    path = os.path.join(directory, keys.TARBALLS_FOLDER, filename)
                    self.add("missing", path, f"version {version} names it, but it is not stored")

    def corrupt(self, path: str, version: str) -> None:
        what = f"does not match the checksums of version {version}"
        if not self.quarantine:
            self.add("corrupt", path, what)
            return
        target = os.path.join(self.root, QUARANTINE, self.relative(path))
        suffix = 0
        while os.path.exists(target if not suffix else f"{target}.{suffix}"):
            suffix += 1
        target = target if not suffix else f"{target}.{suffix}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        self.add("corrupt", path, f"{what}; moved to {self.relative(target)}", target)


def scan(root: str, htpasswd_path: str | None = None, now: float | None = None,
         quarantine: bool = True) -> ScanReport:
    """Check the registry at ``root``; move corrupt tarballs to the quarantine unless told not to."""
    check = _Scan(os.path.abspath(root), time.time() if now is None else now, quarantine)
    check.quarantined()
    check.temporary_files(check.root)
    if htpasswd_path:
        directory = os.path.dirname(os.path.abspath(htpasswd_path))
        if os.path.commonpath([directory, check.root]) != check.root and os.path.isdir(directory):
            check.temporary_files(directory, recursive=False)
    check.packages()
    return check.report


def collect(root: str, report: ScanReport, dry_run: bool = False) -> list[Finding]:
    """Remove the garbage a scan found (and the emptied quarantine); what was (or would be) removed."""
    removed = []
    for finding in report.findings:
        if not finding.garbage:
            continue
        if not dry_run:
            try:
                os.unlink(finding.location)
            except FileNotFoundError:
                continue
        removed.append(finding)
    quarantine = os.path.join(os.path.abspath(root), QUARANTINE)
    if not dry_run and os.path.isdir(quarantine) and not _files_below(quarantine):
        shutil.rmtree(quarantine, ignore_errors=True)
    return removed


def _subdirectories(directory: str) -> list[str]:
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with entries:
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


def _files(directory: str) -> list[str]:
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with entries:
        return sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))


def _files_below(directory: str) -> bool:
    return any(files for _directory, _subdirectories, files in os.walk(directory))


def _is_json_object(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return isinstance(orjson.loads(file.read()), dict)
    except (OSError, orjson.JSONDecodeError):
        return False
