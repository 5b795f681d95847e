"""``nopard-admin block add|list|remove``: blocks through the running nopard's API (so every
instance applies them at once), with the operator token."""

from __future__ import annotations

import argparse
import re
from typing import Any

from nopard.cli.registry import AdminError
from nopard.domain.errors import InvalidInput
from nopard.domain.firewall import ADMIN, Block, parse_spec

_ID = re.compile(r"[0-9a-f]{16}")


def _api(options: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from nopard.cli.admin import call, operator_token

    return call(options.registry, method, path, body, timeout=60, token=operator_token(options, required=True))


def block_add(options: argparse.Namespace) -> int:
    """Block ``name@range`` with a reason."""
    block = _api(options, "POST", "/-/nopard/blocks", {"spec": options.spec, "reason": options.reason})["block"]
    print(f"blocked {block['name']}@{block['range']} ({block['id']}): {block['reason']}")
    return 0


def block_list(options: argparse.Namespace) -> int:
    """Print every block: id, spec, source, created, reason."""
    blocks = _api(options, "GET", "/-/nopard/blocks")["blocks"]
    for block in blocks:
        print(f"{block['id']}  {block['name']}@{block['range']}  {block['source']}  {block['created']}  "
              f"{block['reason']}")
    if not blocks:
        print("no blocks")
    return 0


def block_remove(options: argparse.Namespace) -> int:
    """Remove a block, named by its id or by the ``name@range`` an admin added."""
    if _ID.fullmatch(options.spec):
        block_id = options.spec
    else:
        try:
            name, text = parse_spec(options.spec)
        except InvalidInput as error:
            raise AdminError(error.message) from None
        block_id = Block(name, text, "", ADMIN).id
    removed = _api(options, "DELETE", f"/-/nopard/blocks/{block_id}")["removed"]
    print(f"unblocked {removed['name']}@{removed['range']} ({removed['id']})")
    return 0


def add_block_commands(commands: Any) -> None:
    """``block add|list|remove`` under ``commands`` (the top-level subparsers)."""
    block = commands.add_parser("block", help="block package versions (through the running nopard)",
                                description="Blocked versions vanish from every answer; their tarballs "
                                "answer 451 with the reason. name@range takes npm ranges.")
    actions = block.add_subparsers(dest="block_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="block name@range")
    add.add_argument("spec", metavar="NAME@RANGE", help="e.g. 'left-pad@>=1.2.3 <1.2.6'; a bare name: every version")
    add.add_argument("--reason", required=True, help="what clients are told")
    add.set_defaults(run=block_add)
    actions.add_parser("list", help="every block").set_defaults(run=block_list)
    remove = actions.add_parser("remove", help="remove a block")
    remove.add_argument("spec", metavar="NAME@RANGE|ID", help="the block as added, or its id (block list)")
    remove.set_defaults(run=block_remove)
