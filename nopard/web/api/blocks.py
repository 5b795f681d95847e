"""The blocks API (admins and nopard-admin only): GET, POST /-/nopard/blocks, DELETE /-/nopard/blocks/<id>."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.domain.errors import InvalidInput, NotFound, PermissionDenied
from nopard.domain.firewall import ADMIN, parse_spec
from nopard.firewall.blocks import BlockList, block_list_json
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import Requests, json_response

REFUSAL = "log in as an admin to see or change blocks, or run nopard-admin block on the registry's machine"


class BlockRoutes:
    """Listing, adding and removing blocks of package versions (nopard.firewall)."""

    def __init__(self, requests: Requests, gate: Gate, blocks: BlockList) -> None:
        self._requests = requests
        self._gate = gate
        self._blocks = blocks

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "blocks", "/-/nopard/blocks", ["GET"], self.list_blocks)
        add_route(app, "blocks", "/-/nopard/blocks", ["POST"], self.add_block)
        add_route(app, "blocks", "/-/nopard/blocks/<block_id>", ["DELETE"], self.remove_block)

    async def _admin(self, request: IRequest, write: bool) -> str:
        """Who changes blocks: the operator (nopard-admin) or an admin; a read-only token only reads."""
        if self._gate.holds_operator_token(request):
            return "nopard-admin"
        identity = await self._gate.admin(request, REFUSAL)
        if write and identity.readonly:
            raise PermissionDenied("a read-only token cannot change blocks")
        return identity.user or ""

    async def list_blocks(self, request: IRequest) -> bytes:
        """Every block: id, name, range, reason, source, created."""
        await self._admin(request, write=False)
        return json_response(request, 200, block_list_json(await self._blocks.all()))

    async def add_block(self, request: IRequest) -> bytes:
        """Block ``{"spec": "name@range", "reason": "..."}``: those versions vanish at once, everywhere."""
        by = await self._admin(request, write=True)
        body = await self._requests.json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("spec"), str):
            raise InvalidInput('the body must be {"spec": "name@range", "reason": "why"}')
        name, text = parse_spec(body["spec"])
        block = await self._blocks.add(name, text, body.get("reason"), ADMIN, by=by)
        return json_response(request, 201, {"block": block.to_json()})

    async def remove_block(self, request: IRequest, block_id: str) -> bytes:
        """Remove the block with this id: its versions come back (unless another block holds them)."""
        by = await self._admin(request, write=True)
        removed = await self._blocks.remove_id(block_id, by=by)
        if removed is None:
            raise NotFound(f"no block {block_id}")
        return json_response(request, 200, {"removed": removed.to_json()})
