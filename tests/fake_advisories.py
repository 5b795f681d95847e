"""The fake upstream's OSV zip (``GET /osv/npm/all.zip``), as OSV publishes one per ecosystem.

It holds the records of a folder (tests/data/advisories) plus those the control port adds
(``POST /advisories`` with a record; ``POST /advisories/reset`` forgets them); its ETag is
the digest of its bytes, so If-None-Match gets 304 until a record changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource

PATH = "osv/npm/all.zip"


class AdvisoryZip:
    """The records served, zipped on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.added: dict[str, bytes] = {}
        self.fetches = 0

    def records(self) -> dict[str, bytes]:
        """File name -> bytes of every record served."""
        found = {p.name: p.read_bytes() for p in sorted(self.folder.glob("*.json"))} if self.folder.is_dir() else {}
        return {**found, **self.added}

    def add(self, record: dict) -> dict:
        """Serve ``record`` too (replacing a record of the same id)."""
        self.added[f"{record['id']}.json"] = json.dumps(record).encode()
        return {"records": len(self.records())}

    def reset(self) -> dict:
        """Serve the folder's records only."""
        self.added = {}
        return {"records": len(self.records())}

    def body(self) -> tuple[bytes, str]:
        """The zip and its ETag."""
        self.fetches += 1
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in sorted(self.records().items()):
                info = zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0))  # the same records, the same bytes
                archive.writestr(info, data, zipfile.ZIP_DEFLATED)
        data = buffer.getvalue()
        return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class ZipServer(Resource):
    """Serves an AdvisoryZip with its ETag, 304 on a matching If-None-Match (or ``broken`` bytes)."""

    isLeaf = True

    def __init__(self, served: AdvisoryZip) -> None:
        super().__init__()
        self.served, self.broken, self.asked = served, False, []

    def render_GET(self, request: Any) -> bytes:
        self.asked.append(request.getHeader("if-none-match"))
        if self.broken:
            return b"not a zip"
        data, etag = self.served.body()
        request.setHeader(b"ETag", etag.encode())
        if request.getHeader("if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return data
