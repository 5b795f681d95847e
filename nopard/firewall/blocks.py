"""The blocks, kept in the store: one object per blocked package, changed by compare-and-swap.

Every change is a read-modify-``replace`` of ``blocks/<name>.json``, retried
when another writer (an admin on another instance, an advisory import) got
there first, so nobody's block is lost. After a change, ``changed(name)``
(wired by nopard.service: forget the prepared documents, bump the package's
stamp) makes every instance prepare the package again at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from twisted.logger import Logger

from nopard.domain.errors import Conflict
from nopard.domain.firewall import ADMIN, Block, make_block
from nopard.storage import Storage, keys

# Attempts at one compare-and-swap before giving up (each lost one means another writer won).
SWAP_ATTEMPTS = 20

Changed = Callable[[str], Awaitable[None]]


def encode_blocks(blocks: list[Block]) -> bytes:
    """The stored form of one package's blocks."""
    return orjson.dumps({"blocks": [block.to_json() for block in blocks]})


def decode_blocks(data: bytes) -> list[Block]:
    """The blocks of a stored object; an unreadable entry is skipped, never fatal."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    entries = value.get("blocks") if isinstance(value, dict) else None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            found.append(Block.from_json(entry))
        except Exception:  # noqa: BLE001 - one bad entry must not unblock the others
            continue
    return found


async def _no_news(name: str) -> None:
    return None


class BlockList:
    """Blocks by package, read and changed in the store.

    ``changed(name)`` runs after every change of ``name``'s blocks; the log
    gets one line per block added or removed.
    """

    def __init__(self, storage: Storage, now: Callable[[], float], log: Logger | None = None,
                 changed: Changed | None = None) -> None:
        self._storage = storage
        self._now = now
        self._log = log or Logger()
        self.changed: Changed = changed or _no_news
        self.listeners: list[Callable[[str, Block], None]] = []  # (added|removed, block), e.g. metrics

    async def of(self, name: str) -> list[Block]:
        """The blocks of package ``name`` (none: an empty list)."""
        data = await self._storage.read(keys.blocks_key(name))
        return [] if data is None else decode_blocks(data)

    async def all(self) -> list[Block]:
        """Every block, by package name."""
        found: list[Block] = []
        for key in await self._storage.list(keys.BLOCKS):
            name = keys.blocked_name_of(key)
            if name is not None:
                found.extend(await self.of(name))
        return found

    async def find(self, block_id: str) -> Block | None:
        """The block with this id, if any."""
        return next((block for block in await self.all() if block.id == block_id), None)

    async def add(self, name: str, range_: str, reason: Any, source: str = ADMIN, by: str | None = None) -> Block:
        """Block ``name@range_`` for ``reason``; the same name, range and source again replaces the reason."""
        block = make_block(name, range_, reason, source, self._now())

        def added(blocks: list[Block]) -> list[Block]:
            return [b for b in blocks if b.id != block.id] + [block]

        await self._swap(name, added, added=[block], by=by)
        return block

    async def remove(self, name: str, range_: str, source: str = ADMIN, by: str | None = None) -> Block | None:
        """Remove the block of ``name@range_`` from ``source``; the block removed, None if there was none."""
        probe = Block(name, range_.strip(), "", source)
        removed: list[Block] = []

        def without(blocks: list[Block]) -> list[Block]:
            removed[:] = [b for b in blocks if b.id == probe.id]
            return [b for b in blocks if b.id != probe.id]

        await self._swap(name, without, removed=removed, by=by)
        return removed[0] if removed else None

    async def remove_id(self, block_id: str, by: str | None = None) -> Block | None:
        """Remove the block with this id; the block removed, None if there was none."""
        block = await self.find(block_id)
        if block is None:
            return None
        return await self.remove(block.name, block.range, block.source, by)

    async def replace_source(self, name: str, source: str, ranges: dict[str, str]) -> bool:
        """Make ``name``'s blocks from ``source`` exactly ``ranges`` ({range: reason}; empty: none).

        For advisory imports: a record's blocks replaced as a set, the
        admin's and other records' blocks kept. True if anything changed.
        """
        now = self._now()
        wanted = [make_block(name, text, reason, source, now) for text, reason in ranges.items()]
        added: list[Block] = []
        removed: list[Block] = []

        def replaced(blocks: list[Block]) -> list[Block]:
            kept = [b for b in blocks if b.source != source]
            before = {b.id: b for b in blocks if b.source == source}
            after = []
            for block in wanted:
                old = before.get(block.id)
                after.append(old if old is not None and old.reason == block.reason else block)
            ids = {b.id for b in after}
            added[:] = [b for b in after if before.get(b.id) is not b]
            removed[:] = [b for b in before.values() if b.id not in ids]
            return kept + after

        return await self._swap(name, replaced, added=added, removed=removed)

    async def _swap(self, name: str, change: Callable[[list[Block]], list[Block]],
                    added: list[Block] | None = None, removed: list[Block] | None = None,
                    by: str | None = None) -> bool:
        """Apply ``change`` to ``name``'s blocks by compare-and-swap; True if the stored blocks changed."""
        key = keys.blocks_key(name)
        for _ in range(SWAP_ATTEMPTS):
            stored = await self._storage.read_versioned(key)
            before = [] if stored is None else decode_blocks(stored[0])
            after = change(before)
            if [b.to_json() for b in after] == [b.to_json() for b in before]:
                return False
            version = None if stored is None else stored[1]
            if after:
                done = await self._storage.replace(key, encode_blocks(after), version)
            else:
                done = version is None or await self._storage.delete_versioned(key, version)
            if done:
                self._announce("added", added or [], by)
                self._announce("removed", removed or [], by)
                await self.changed(name)
                return True
        raise Conflict(f"the blocks of {name} kept changing; try again")

    def _announce(self, what: str, blocks: list[Block], by: str | None) -> None:
        for block in blocks:
            self._log.info("block-{what} {spec} ({source}{by}): {reason}", what=what, spec=block.spec,
                           source=block.source, by=f", by {by}" if by else "", reason=block.reason)
            for listener in self.listeners:
                listener(what, block)


def block_list_json(blocks: list[Block]) -> dict[str, Any]:
    """The answer of the blocks API and ``nopard-admin block list --json``."""
    return {"blocks": [block.to_json() for block in blocks]}
