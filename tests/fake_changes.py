"""The fake upstream's changes feed: ``GET /_changes?since=SEQ&limit=N`` in CouchDB's format.

Every ``POST /change`` and ``/restore`` of the control port adds the package to the feed (a
replication feed lists each document change); ``POST /changes`` on the control port records
names without changing them (``{"record": [...]}``) and switches how the feed misbehaves
(``{"mode": ...}``): ``normal``; ``500`` and ``404`` (the feed fails); ``garbage`` (a page
cut off in the middle); ``huge`` (a page of several MB); ``ignore-limit`` (every change
since, whatever the limit); ``backwards`` (sequences going down, below ``since``).
"""

from __future__ import annotations

import json

MODES = ("normal", "500", "404", "garbage", "huge", "ignore-limit", "backwards")
HUGE_BYTES = 8 * 1024 * 1024


class ChangesFeed:
    """The changes recorded so far, numbered 1, 2, ...; and the misbehaviour in force."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, str]] = []
        self.mode = "normal"
        self.pages = 0  # pages asked for

    @property
    def seq(self) -> int:
        """The last sequence given (0: none yet)."""
        return self.changes[-1][0] if self.changes else 0

    def record(self, name: str) -> None:
        """Add a change of ``name``."""
        self.changes.append((self.seq + 1, name))

    def control(self, body: dict) -> dict:
        """Record ``body["record"]``'s names, switch to ``body["mode"]``; the feed's state."""
        mode = body.get("mode", self.mode)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        for name in body.get("record") or []:
            self.record(str(name))
        if body.get("reset"):
            self.pages = 0
        self.mode = mode
        return {"mode": self.mode, "seq": self.seq, "pages": self.pages}

    def answer(self, args: dict[bytes, list[bytes]]) -> tuple[int, bytes]:
        """(status, body) for one page."""
        self.pages += 1
        since_text = (args.get(b"since") or [b"0"])[0].decode()
        limit = int((args.get(b"limit") or [b"1000"])[0])
        since = self.seq if since_text == "now" else int(since_text)
        if self.mode in ("500", "404"):
            return int(self.mode), b'{"error":"fault injected"}'
        if self.mode == "garbage":
            return 200, b'{"results":[{"seq":' + str(since + 1).encode() + b',"id":"deb'
        if self.mode == "huge":
            padding = [{"seq": since + 1 + i, "id": "x" * 1000} for i in range(HUGE_BYTES // 1024)]
            return 200, json.dumps({"results": padding, "last_seq": since + len(padding)}).encode()
        after = [(seq, name) for seq, name in self.changes if seq > since]
        if self.mode == "backwards":
            results = [{"seq": since - i, "id": name} for i, (_, name) in enumerate(after or [(0, "debug")])]
            return 200, json.dumps({"results": results, "last_seq": max(since - len(results), 0)}).encode()
        if self.mode == "normal":
            after = after[:limit]
        results = [{"seq": seq, "id": name, "changes": [{"rev": f"{seq}-fake"}]} for seq, name in after]
        last = results[-1]["seq"] if results else self.seq
        return 200, json.dumps({"results": results, "last_seq": last}).encode()
