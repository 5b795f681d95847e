"""New versions the fake upstream publishes on request (``POST /change``), and their undoing.

A change adds ``<major>.<minor>.<patch+1>`` above the current latest (higher still when taken) with
a tarball of its own that no client has fetched yet: a served version's tarball unpacked in memory,
its ``package.json`` given the new version, and packed again deterministically (sorted entries,
npm's fixed mtime, gzip mtime 0). Those tarballs live in memory only. ``POST /restore`` drops every
change made to a package and puts back the document it had before the first one.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator

MTIME = 499162500  # 1985-10-26T08:15:00Z, the mtime npm pack gives every entry


def digests(data: bytes) -> dict[str, str]:
    """dist.integrity and dist.shasum for some bytes."""
    return {"integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            "shasum": hashlib.sha1(data).hexdigest()}


def next_version(doc: dict) -> str:
    """The patch version just above the latest tag that the document does not hold yet."""
    latest = doc.get("dist-tags", {}).get("latest", "")
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", latest)
    if match is None:
        raise ValueError(f"the latest version {latest!r} is not major.minor.patch")
    major, minor, patch = map(int, match.groups())
    patch += 1
    while f"{major}.{minor}.{patch}" in doc.get("versions", {}):
        patch += 1
    return f"{major}.{minor}.{patch}"


def sources(doc: dict) -> Iterator[tuple[str, str]]:
    """The versions a new one may be made from, best first, with their tarball's file name: the
    latest, then the others newest first (for when the latest's tarball was not recorded)."""
    times, versions = doc.get("time", {}), doc.get("versions", {})
    latest = doc.get("dist-tags", {}).get("latest")
    for version in sorted(versions, key=lambda v: (v == latest, times.get(v, "")), reverse=True):
        yield version, versions[version].get("dist", {}).get("tarball", "").rsplit("/-/", 1)[-1]


def repack(data: bytes, version: str) -> tuple[bytes, int, int]:
    """``data`` (a .tgz) with its package.json saying ``version``: (bytes, file count, unpacked size).

    The root folder is usually ``package/`` but not always (GitHub-made tarballs), so the
    package.json rewritten is ``package/package.json`` if there is one, else any at depth one.
    """
    entries: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:  # a name given twice keeps its last entry, as extracting would
            content = tar.extractfile(member).read() if member.isfile() else b""
            entries[member.name] = (member, content)
    candidates = sorted(name for name in entries
                        if name.count("/") == 1 and name.endswith("/package.json") and entries[name][0].isfile())
    if not candidates:
        raise ValueError("the tarball has no package.json to rewrite")
    path = "package/package.json" if "package/package.json" in candidates else candidates[0]
    member, content = entries[path]
    package = json.loads(content.decode("utf-8-sig"))
    package["version"] = version
    entries[path] = (member, (json.dumps(package, indent=2, ensure_ascii=False) + "\n").encode())
    raw, files, size = io.BytesIO(), 0, 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for name in sorted(entries):
            member, content = entries[name]
            info = tarfile.TarInfo(name)
            info.type = tarfile.REGTYPE if member.isfile() else member.type
            info.linkname, info.mtime = member.linkname, MTIME
            info.mode = 0o755 if member.isdir() or member.mode & 0o100 else 0o644
            if member.isfile():
                info.size, files, size = len(content), files + 1, size + len(content)
            tar.addfile(info, io.BytesIO(content) if member.isfile() else None)
    return gzip.compress(raw.getvalue(), mtime=0), files, size


class Changes:
    """The versions published by tests: their tarballs, and each changed package's document before."""

    def __init__(self) -> None:
        self.originals: dict[str, dict] = {}
        self.tarballs: dict[str, dict[str, bytes]] = {}

    def publish(self, name: str, doc: dict, source: str, data: bytes, now: str) -> dict:
        """Add a new latest version to ``doc`` (in place), made from version ``source`` and its
        tarball ``data``, published at ``now``; returns what the control port answers."""
        self.originals.setdefault(name, copy.deepcopy(doc))
        version = next_version(doc)
        tarball, file_count, unpacked_size = repack(data, version)
        filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        entry = copy.deepcopy(doc["versions"][source])
        dist = {key: value for key, value in entry.get("dist", {}).items()
                if key not in ("signatures", "attestations")}  # they would not verify any more
        dist.update(digests(tarball), tarball=f"{{{{UPSTREAM}}}}/{name}/-/{filename}",
                    fileCount=file_count, unpackedSize=unpacked_size)
        entry.update(version=version, _id=f"{name}@{version}", dist=dist)
        doc["versions"][version] = entry
        doc.setdefault("dist-tags", {})["latest"] = version
        doc.setdefault("time", {}).update({version: now, "modified": now})
        self.tarballs.setdefault(name, {})[filename] = tarball
        return {"name": name, "version": version, "tarball": f"/{name}/-/{filename}", **digests(tarball),
                "modified": now}

    def tarball(self, name: str, filename: str) -> bytes | None:
        """A tarball published here, or None."""
        return self.tarballs.get(name, {}).get(filename)

    def restore(self, name: str) -> dict | None:
        """Forget the changes to ``name``; its document from before them, or None if it had none."""
        self.tarballs.pop(name, None)
        return self.originals.pop(name, None)
