"""The runtime settings API (the settings page's JSON twin): GET and PUT /-/nopard/settings, admins only."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.domain.errors import InvalidInput, PermissionDenied
from nopard.settings.config import ConfigError
from nopard.settings.overrides import Overrides
from nopard.web.api.common import Gate, add_route
from nopard.web.responses import Requests, json_response

REFUSAL = "log in as an admin to see or change settings"


class SettingsRoutes:
    """Reading and changing the settings an admin may change at runtime (nopard.settings.overrides)."""

    def __init__(self, requests: Requests, gate: Gate, overrides: Overrides) -> None:
        self._requests = requests
        self._gate = gate
        self._overrides = overrides

    def mount(self, app: Klein) -> None:
        """Add these routes to ``app``."""
        add_route(app, "settings", "/-/nopard/settings", ["GET"], self.get_settings)
        add_route(app, "settings", "/-/nopard/settings", ["PUT"], self.put_settings)

    async def get_settings(self, request: IRequest) -> bytes:
        """The settings an admin may change at runtime: effective value, default, source, help."""
        await self._gate.admin(request, REFUSAL)
        return json_response(request, 200, {"settings": self._overrides.entries()})

    async def put_settings(self, request: IRequest) -> bytes:
        """Change settings at once, on every instance: ``{"values": {name: text}}``; "" removes one.

        A bad value or name answers 400 naming the setting, and nothing changes.
        """
        identity = await self._gate.admin(request, REFUSAL)
        if identity.readonly:
            raise PermissionDenied("a read-only token cannot change settings")
        body = await self._requests.json_body(request)
        values = body.get("values") if isinstance(body, dict) else None
        if not isinstance(values, dict):
            raise InvalidInput('the body must be {"values": {"name": "text", ...}}')
        try:
            entries = await self._overrides.change(values, identity.user)
        except ConfigError as error:
            return json_response(request, 400, {"error": str(error), "setting": getattr(error, "setting", None)})
        return json_response(request, 200, {"settings": entries})
