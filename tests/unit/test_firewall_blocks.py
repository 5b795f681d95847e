"""The blocks in the store (nopard.firewall.blocks.BlockList): add, remove, list, replace a source's
set, and no block lost when two writers change one package at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nopard.cli.maintenance import open_storage, run_now
from nopard.domain.errors import InvalidInput
from nopard.firewall.blocks import BlockList
from nopard.storage import keys

NOW = 1_800_000_000.0


class Racing:
    """A store whose next compare-and-swap of a key loses to ``rival``, run just before it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rival: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def replace(self, key: str, data: bytes, version: str | None) -> bool:
        rival, self.rival = self.rival, None
        if rival is not None:
            await rival()
        return await self.inner.replace(key, data, version)


def block_list(tmp_path: Path, storage: Any = None) -> tuple[BlockList, list[str]]:
    changed: list[str] = []

    async def note(name: str) -> None:
        changed.append(name)

    return BlockList(storage or open_storage(str(tmp_path)), lambda: NOW, changed=note), changed


def test_add_list_remove(tmp_path: Path) -> None:
    """A block added is listed and stored under the package's key; removed, it is gone and so is the key."""
    blocks, changed = block_list(tmp_path)
    block = run_now(blocks.add("left-pad", ">=1.2.3 <1.2.6", "hijacked account"))
    assert [b.spec for b in run_now(blocks.all())] == ["left-pad@>=1.2.3 <1.2.6"]
    assert (tmp_path / keys.blocks_key("left-pad")).exists()
    assert run_now(blocks.remove_id(block.id)) == block
    assert run_now(blocks.all()) == []
    assert not (tmp_path / keys.blocks_key("left-pad")).exists()
    assert changed == ["left-pad", "left-pad"]


def test_adding_the_same_block_again_changes_nothing(tmp_path: Path) -> None:
    """The same name, range, source and reason twice is one block and one change."""
    blocks, changed = block_list(tmp_path)
    run_now(blocks.add("@scope/pkg", "*", "typosquat"))
    run_now(blocks.add("@scope/pkg", "*", "typosquat"))
    assert len(run_now(blocks.of("@scope/pkg"))) == 1
    assert changed == ["@scope/pkg"]


def test_a_bad_block_is_refused_and_nothing_written(tmp_path: Path) -> None:
    """A bad range or an empty reason is an InvalidInput; the store stays empty."""
    blocks, _ = block_list(tmp_path)
    with pytest.raises(InvalidInput):
        run_now(blocks.add("left-pad", "!!", "x"))
    with pytest.raises(InvalidInput):
        run_now(blocks.add("left-pad", "*", "  "))
    assert run_now(blocks.all()) == []


def test_two_writers_at_once_lose_nothing(tmp_path: Path) -> None:
    """A block added while another admin's add was between its read and its write is kept, and so is theirs."""
    racing = Racing(open_storage(str(tmp_path)))
    blocks, _ = block_list(tmp_path, racing)
    rival, _ = block_list(tmp_path)
    racing.rival = lambda: rival.add("left-pad", "1.0.0", "first admin")
    run_now(blocks.add("left-pad", "2.0.0", "second admin"))
    assert sorted(b.range for b in run_now(blocks.of("left-pad"))) == ["1.0.0", "2.0.0"]


def test_replacing_a_source_keeps_the_others(tmp_path: Path) -> None:
    """An advisory's blocks are replaced as a set; the admin's blocks of the package stay."""
    blocks, _ = block_list(tmp_path)
    run_now(blocks.add("evil", "1.0.0", "admin says so"))
    assert run_now(blocks.replace_source("evil", "MAL-2025-1", {"*": "malware"}))
    assert not run_now(blocks.replace_source("evil", "MAL-2025-1", {"*": "malware"}))
    assert sorted(b.source for b in run_now(blocks.of("evil"))) == ["MAL-2025-1", "admin"]
    assert run_now(blocks.replace_source("evil", "MAL-2025-1", {}))
    assert [b.source for b in run_now(blocks.of("evil"))] == ["admin"]
