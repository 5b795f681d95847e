"""The changes feed nopard serves (``GET /-/nopard/changes``): every change of a package, numbered, in the store.

The feed is a run of segments in the store (``keys.changes_segment_key``), SEGMENT changes
each; change ``seq`` (1, 2, ...) is entry ``(seq - 1) % SEGMENT`` of segment
``(seq - 1) // SEGMENT``. Appending is a compare-and-swap on the last segment, and the next
segment is made (create-if-absent) only once that one is full, so the numbers are given in
the order the changes were written, on every instance sharing the store (S3 with Redis
too): a reader never sees a change numbered below one it has already seen appear later.
``changes/head.json`` says which segment was begun last (a hint: a writer or reader that
finds it behind walks on). The last KEEP_SEGMENTS segments are kept; older ones are
deleted as new ones begin, and asking for what they held answers 410.

Changes recorded while this process is writing others wait and go together in the next swap
(at most a segment's worth), so a burst (an install fetching hundreds of documents) costs the
store a few swaps, not three operations per change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nopard.domain import changes
from nopard.domain.errors import Conflict, HistoryGone
from nopard.domain.times import iso_time
from nopard.storage import Storage, keys

SEGMENT = 1000  # changes per stored segment (at most ~100 KB rewritten per change)
KEEP_SEGMENTS = 100  # the last 100,000 changes are kept
APPEND_ATTEMPTS = 50  # compare-and-swap rounds (each lost one means another instance appended)
MAX_WALK = 1000  # segments a writer or reader walks past a stale head hint


class ChangeLog:
    """Records package changes and answers pages of them."""

    def __init__(self, storage: Storage, now: Callable[[], float], log: Logger) -> None:
        self._storage = storage
        self._now = now
        self._log = log
        self._waiting: list[tuple[dict[str, Any], Deferred[int | None]]] = []
        self._writing = False  # one writer at a time in this process: the others' changes wait for it

    async def record(self, name: str, kind: str, rev: str | None = None, deleted: bool = False) -> int | None:
        """Append a change of ``name``; its sequence number, or None when it could not be written (logged).

        A change already made must not fail because its news could not be written: the
        followers then miss it until their next full sweep (docs/mirroring.md).
        """
        entry: dict[str, Any] = {"id": name, "kind": kind, "time": iso_time(self._now())}
        if rev:
            entry["rev"] = rev
        if deleted:
            entry["deleted"] = True
        done: Deferred[int | None] = Deferred()
        self._waiting.append((entry, done))
        if not self._writing:
            Deferred.fromCoroutine(self._write_waiting())
        return await done

    async def _write_waiting(self) -> None:
        """Append what waits, a segment's worth at a time, until nothing does."""
        self._writing = True
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:SEGMENT], self._waiting[SEGMENT:]
                try:
                    numbers: list[int | None] = list(await self._append([entry for entry, _ in batch]))
                except Exception as error:  # noqa: BLE001  # logged; the changes themselves stand
                    self._log.error("the changes of {names} could not be added to the changes feed: {error}",
                                    names=", ".join(entry["id"] for entry, _ in batch),
                                    error=f"{type(error).__name__}: {error}", event="changes-record-failed")
                    numbers = [None] * len(batch)
                for (_, done), number in zip(batch, numbers, strict=True):
                    if not done.called:  # its request may have been cancelled meanwhile
                        done.callback(number)
        finally:
            self._writing = False

    async def _append(self, entries: list[dict[str, Any]]) -> list[int]:
        """Append ``entries`` in order; their numbers (consecutive unless another instance's came between)."""
        numbers: list[int] = []
        index, lost = await self._head(), 0
        while entries:
            if lost >= APPEND_ATTEMPTS:
                raise Conflict("the changes feed kept changing while changes were added")
            key = keys.changes_segment_key(index)
            stored = await self._storage.read_versioned(key)
            held = _entries(stored[0]) if stored is not None else []
            taken = entries[:SEGMENT - len(held)]
            if not taken:
                index += 1
                continue
            if stored is None:
                written = await self._storage.create(key, orjson.dumps(taken))
            else:
                written = await self._storage.replace(key, orjson.dumps([*held, *taken]), stored[1])
            if not written:
                lost += 1  # another instance appended (or began it) first: read it again
                continue
            if stored is None:
                await self._began(index)
            numbers += [index * SEGMENT + len(held) + position + 1 for position in range(len(taken))]
            entries = entries[len(taken):]
        return numbers

    async def _began(self, index: int) -> None:
        """Move the head hint to a segment just begun; drop the one that falls out of the history kept."""
        await self._storage.write(keys.CHANGES_HEAD, orjson.dumps({"segment": index}))
        if index >= KEEP_SEGMENTS:
            await self._storage.delete(keys.changes_segment_key(index - KEEP_SEGMENTS))

    async def _head(self) -> int:
        raw = await self._storage.read(keys.CHANGES_HEAD)
        try:
            head = orjson.loads(raw)["segment"] if raw else 0
        except (orjson.JSONDecodeError, KeyError, TypeError):
            head = 0
        return head if isinstance(head, int) and not isinstance(head, bool) and head >= 0 else 0

    async def last_seq(self) -> int:
        """The number of the last change recorded (0: none yet)."""
        index = await self._head()
        last = 0
        for _step in range(MAX_WALK):
            raw = await self._storage.read(keys.changes_segment_key(index))
            if raw is None:
                return last
            entries = _entries(raw)
            last = index * SEGMENT + len(entries)
            if len(entries) < SEGMENT:
                return last
            index += 1
        return last

    async def page(self, since: int | None, limit: int, readable: Callable[[str], bool]) -> dict[str, Any]:
        """CouchDB's answer to ``_changes?since=&limit=``: the changes after ``since`` (None: now) that
        ``readable`` lets the asker see.

        At most ``limit`` changes are looked at (a hidden one counts, and ``last_seq`` moves past
        it), so a page costs at most two segment reads whoever asks. Raises HistoryGone when
        ``since`` is older than the history kept.
        """
        if since is None:
            return {"results": [], "last_seq": await self.last_seq()}
        results: list[dict[str, Any]] = []
        last, index, looked = since, since // SEGMENT, 0
        while looked < limit:
            raw = await self._storage.read(keys.changes_segment_key(index))
            if raw is None:
                if looked == 0 and index < await self._head():
                    raise HistoryGone(f"changes up to {(index + 1) * SEGMENT} are no longer kept (the last "
                                      f"{KEEP_SEGMENTS * SEGMENT} are): start again from since=now")
                break
            entries = _entries(raw)
            for position in range(last - index * SEGMENT, len(entries)):
                if looked >= limit:
                    break
                looked += 1
                last = index * SEGMENT + position + 1
                entry = entries[position]
                if isinstance(entry, dict) and isinstance(entry.get("id"), str) and readable(entry["id"]):
                    results.append(changes.result(last, entry))
            if len(entries) < SEGMENT:
                break
            index += 1
        if looked == 0 and since > 0:
            last = min(since, await self.last_seq())  # past the end: the feed tells where it really is
        return {"results": results, "last_seq": last}


def _entries(raw: bytes) -> list[Any]:
    try:
        entries = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return entries if isinstance(entries, list) else []
