"""GET /-/nopard/sync's ``changes`` and the status page's sync section: what the changes feed
follower (NOPARD_CHANGES_URL) last did, in-process on an injected clock, the feed served by a
stub upstream that can fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest_twisted
from twisted.web.resource import Resource

from tests.unit.route_harness import OPERATOR_TOKEN, UPSTREAM_URL, InProcess, build

OPERATOR = {"X_Nopard_Operator_Token": OPERATOR_TOKEN}


class Feed(Resource):
    """An upstream serving only ``/_changes``: empty pages at ``last_seq`` (``seq``), or 500 while ``failing``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seq = 7
        self.failing = False
        self.garbage = False  # answer a page that is not JSON

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path != b"/_changes":
            request.setResponseCode(404)
            return b'{"error":"Not found"}'
        if self.failing:
            request.setResponseCode(500)
            return b'{"error":"down"}'
        return b"{not json" if self.garbage else orjson.dumps({"results": [], "last_seq": self.seq})


async def refresh_run(app: InProcess) -> dict[str, Any]:
    """One refresh run now (POST /-/nopard/sync), then GET /-/nopard/sync's ``changes``."""
    app.clock.advance(60)  # the sync rate's next slot is free
    assert (await app.call("POST", "/-/nopard/sync", {"job": "refresh"}, **OPERATOR)).status == 200
    answer = await app.call("GET", "/-/nopard/sync", **OPERATOR)
    assert answer.status == 200
    return answer.json()["changes"]


async def status_section(app: InProcess) -> str:
    """The status page's changes feed line."""
    page = (await app.call("GET", "/-/web/status")).body.decode()
    start = page.index('id="changes-feed"')
    return page[page.index(">", start) + 1:page.index("</p>", start)]


@pytest_twisted.ensureDeferred
async def test_without_a_feed_there_is_no_changes_state(tmp_path: Path) -> None:
    """No NOPARD_CHANGES_URL: ``changes`` is null and the status page has no feed line."""
    app = build(tmp_path, upstream=Feed())
    assert await refresh_run(app) is None
    assert 'id="changes-feed"' not in (await app.call("GET", "/-/web/status")).body.decode()


@pytest_twisted.ensureDeferred
async def test_the_follower_state_is_shown_through_start_failure_and_recovery(tmp_path: Path) -> None:
    """First run: the position taken, the run swept; second: followed, last page read; the feed
    failing: the error, when, still failing, swept; back: followed again, the error kept as history."""
    feed = Feed()
    url = UPSTREAM_URL + "_changes"
    app = build(tmp_path, upstream=feed, changes_url=url)
    never = {"url": url, "since": None, "last_page": None, "last_error": None, "last_error_at": None,
             "last_run": None, "failing": False}
    assert (await app.call("GET", "/-/nopard/sync", **OPERATOR)).json()["changes"] == never
    assert await status_section(app) == (f"Changes feed {url}: no refresh run has asked it yet; no position yet; "
                                         "last page read never.")

    first = await refresh_run(app)
    assert (first["since"], first["last_page"], first["last_run"]) == (7, None, "sweep")

    feed.seq = 9
    followed = await refresh_run(app)
    assert (followed["since"], followed["last_run"], followed["failing"]) == (9, "feed", False)
    assert followed["last_page"] is not None and followed["last_error"] is None
    assert await status_section(app) == (f"Changes feed {url}: the last refresh run followed it; position 9; "
                                         f"last page read {followed['last_page']}.")

    feed.failing = True
    failed = await refresh_run(app)
    error = "the upstream http://127.0.0.1:9 answered 500"
    assert (failed["last_error"], failed["failing"], failed["last_run"]) == (error, True, "sweep")
    assert failed["since"] == 9 and failed["last_page"] == followed["last_page"]
    assert failed["last_error_at"] is not None
    assert await status_section(app) == (
        f"Changes feed {url}: the last refresh run swept every mirrored package; position 9; last page read "
        f"{followed['last_page']}; last error at {failed['last_error_at']}: {error} (still failing: runs sweep).")

    feed.failing, feed.seq = False, 10
    back = await refresh_run(app)
    assert (back["since"], back["last_run"], back["failing"], back["last_error"]) == (10, "feed", False, error)
    assert (await status_section(app)).endswith(f"{error} (followed again since).")


@pytest_twisted.ensureDeferred
async def test_a_page_that_cannot_be_trusted_drops_the_position_shown(tmp_path: Path) -> None:
    """A page that is not JSON: the stored position is dropped, and ``since`` says so (null)."""
    feed = Feed()
    app = build(tmp_path, upstream=feed, changes_url=UPSTREAM_URL + "_changes")
    await refresh_run(app)
    feed.garbage = True
    dropped = await refresh_run(app)
    assert (dropped["since"], dropped["last_run"], dropped["failing"]) == (None, "sweep", True)
    assert dropped["last_error"].startswith("the page is not JSON")
    assert "no position yet" in await status_section(app)
