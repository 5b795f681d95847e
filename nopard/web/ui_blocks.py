"""``BlockPages``: the blocks page under /-/web/blocks (admins): the blocks, removing one, adding one."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from nopard.domain.errors import InvalidInput
from nopard.domain.firewall import ADMIN, parse_spec
from nopard.firewall.blocks import BlockList
from nopard.web import pages
from nopard.web.api.common import add_route
from nopard.web.browser import BrowserSessions, form_arg, has_form_arg, html, redirect
from nopard.web.pages_firewall import blocks_page


class BlockPages:
    """The blocks page: what ``nopard-admin block`` does, in a browser."""

    def __init__(self, browser: BrowserSessions, blocks: BlockList) -> None:
        self._browser = browser
        self._blocks = blocks

    def mount(self, app: Klein) -> None:
        """Add this page to ``app``."""
        add_route(app, "pages", "/blocks", ["GET", "POST"], self.blocks)

    async def blocks(self, request: IRequest) -> bytes:
        """GET: the blocks and the form; POST: add one (spec, reason) or remove one (remove=id)."""
        viewer = await self._browser.viewer(request)
        if viewer.user is None:
            return redirect(request, pages.link(viewer, "/-/web/login"))
        if not viewer.admin:
            return await html(request, pages.message_page(
                viewer, "Not allowed", "Only admins may see and change blocks."), 403)
        if request.method == b"POST":
            self._browser.check_csrf(request, viewer)
            try:
                if has_form_arg(request, "remove"):
                    await self._blocks.remove_id(form_arg(request, "remove"), by=viewer.user)
                else:
                    name, text = parse_spec(form_arg(request, "spec"))
                    await self._blocks.add(name, text, form_arg(request, "reason"), ADMIN, by=viewer.user)
            except InvalidInput as error:
                return await html(request, blocks_page(viewer, await self._blocks.all(), error.message), 400)
            return redirect(request, pages.link(viewer, "/-/web/blocks"))
        return await html(request, blocks_page(viewer, await self._blocks.all()))
