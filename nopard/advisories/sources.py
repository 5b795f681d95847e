"""Where OSV records come from: one JSON file, a directory of them, or a zip as OSV publishes
its per-ecosystem ``all.zip`` (one ``<id>.json`` member per record).

Reading is bounded, so a hostile zip cannot exhaust memory or disk: each record at most
MAX_RECORD_SIZE bytes (read up to that much and no further, whatever the zip claims), the
whole source at most MAX_TOTAL_SIZE bytes uncompressed and MAX_RECORDS records. What breaks
a bound is reported with its file name and skipped (past the total bounds, the rest is left).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

MAX_RECORD_SIZE = 4 * 1024 * 1024  # OSV records are a few KB; the largest list thousands of versions
MAX_TOTAL_SIZE = 4 * 1024 * 1024 * 1024
MAX_RECORDS = 2_000_000


class SourceError(ValueError):
    """PATH is none of the sources nopard reads (missing, or neither JSON, a directory nor a zip)."""


@dataclass(frozen=True)
class Item:
    """One record's bytes from a source, or why it could not be read (``problem``)."""

    origin: str  # the file (or zip member) it came from, for messages
    data: bytes = b""
    problem: str | None = None


def read_source(path: str) -> Iterator[Item]:
    """Every record file of ``path``, in name order; SourceError when ``path`` is no source."""
    if os.path.isdir(path):
        return _directory(path)
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such file or directory")
    if zipfile.is_zipfile(path):
        return _zip(path)
    if path.endswith(".json"):
        return iter([_file(path, os.path.basename(path))])
    raise SourceError(f"{path}: neither a .json record, a directory of them nor a zip")


def _file(path: str, origin: str) -> Item:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECORD_SIZE + 1)
    except OSError as error:
        return Item(origin, problem=f"cannot read: {error.strerror}")
    if len(data) > MAX_RECORD_SIZE:
        return Item(origin, problem=f"larger than {MAX_RECORD_SIZE} bytes")
    return Item(origin, data)


def _directory(root: str) -> Iterator[Item]:
    count = total = 0
    for folder, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(files):
            if not name.endswith(".json"):
                continue
            path = os.path.join(folder, name)
            origin = os.path.relpath(path, root)
            count += 1
            if count > MAX_RECORDS:
                yield Item(origin, problem=f"more than {MAX_RECORDS} records: the rest is left out")
                return
            item = _file(path, origin)
            total += len(item.data)
            if total > MAX_TOTAL_SIZE:
                yield Item(origin, problem=f"more than {MAX_TOTAL_SIZE} bytes of records: the rest is left out")
                return
            yield item


def _zip(path: str) -> Iterator[Item]:
    with zipfile.ZipFile(path) as archive:
        members = sorted((info for info in archive.infolist() if not info.is_dir()), key=lambda i: i.filename)
        total = 0
        for count, info in enumerate(members, 1):
            origin = f"{os.path.basename(path)}:{info.filename}"
            if not info.filename.endswith(".json"):
                continue
            if count > MAX_RECORDS:
                yield Item(origin, problem=f"more than {MAX_RECORDS} records: the rest is left out")
                return
            if info.file_size > MAX_RECORD_SIZE:
                yield Item(origin, problem=f"larger than {MAX_RECORD_SIZE} bytes")
                continue
            try:
                with archive.open(info) as member:
                    # Never more than the bound, whatever size the member's header claims.
                    data = member.read(MAX_RECORD_SIZE + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as error:
                yield Item(origin, problem=f"unreadable zip member: {error}")
                continue
            if len(data) > MAX_RECORD_SIZE:
                yield Item(origin, problem=f"larger than {MAX_RECORD_SIZE} bytes")
                continue
            total += len(data)
            if total > MAX_TOTAL_SIZE:
                yield Item(origin, problem=f"more than {MAX_TOTAL_SIZE} bytes of records: the rest is left out")
                return
            yield Item(origin, data)
