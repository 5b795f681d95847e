"""What one body can cost nopard, per route that takes a body, counted through its own site:
bytes buffered for a refused body, files written, and parses started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted

from nopard.web import responses
from nopard.web.bodies import SMALL_BODY_LIMIT
from tests.support import files_under
from tests.unit.route_harness import InProcess, build

MAX = 1024 * 1024  # NOPARD_MAX_BODY_SIZE in these tests
PIECE = 4096  # bytes the network hands over at a time

ROUTES = [  # every route an anonymous client can send a body to, and its limit
    ("PUT", "/-/user/org.couchdb.user:x", SMALL_BODY_LIMIT), ("POST", "/-/npm/v1/tokens", SMALL_BODY_LIMIT),
    ("DELETE", "/-/user/token/npd_x", SMALL_BODY_LIMIT), ("POST", "/-/v1/login", SMALL_BODY_LIMIT),
    ("POST", "/-/v1/login/abc", SMALL_BODY_LIMIT), ("PUT", "/-/nopard/settings", SMALL_BODY_LIMIT),
    ("POST", "/-/nopard/sync", SMALL_BODY_LIMIT), ("PUT", "/-/package/pkg/dist-tags/next", SMALL_BODY_LIMIT),
    ("POST", "/-/web/login", SMALL_BODY_LIMIT), ("POST", "/-/web/settings", SMALL_BODY_LIMIT),
    ("POST", "/-/web/package/pkg", SMALL_BODY_LIMIT), ("GET", "/-/v1/search?text=x", SMALL_BODY_LIMIT),
    ("GET", "/pkg", SMALL_BODY_LIMIT),
    ("POST", "/-/nopard/prefetch", MAX), ("POST", "/-/npm/v1/security/advisories/bulk", MAX),
    ("PUT", "/pkg", MAX), ("PUT", "/@scope%2fpkg/-rev/1-abc", MAX),
]


class CountingOrjson:
    """orjson as nopard.web.responses sees it, counting the parses it starts."""

    def __init__(self) -> None:
        self.loads_calls = 0

    def loads(self, raw: Any) -> Any:
        self.loads_calls += 1
        return orjson.loads(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(orjson, name)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> CountingOrjson:
    counting = CountingOrjson()
    monkeypatch.setattr(responses, "orjson", counting)
    return counting


def app_with_store(tmp_path: Path) -> tuple[InProcess, list[str]]:
    app = build(tmp_path, max_body_size=str(MAX))
    return app, files_under(tmp_path / "registry")


def head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]).encode()


@pytest.mark.parametrize(("method", "path", "limit"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_a_declared_length_over_the_limit_is_refused_unread(
    tmp_path: Path, parses: CountingOrjson, method: str, path: str, limit: int
) -> None:
    """Content-Length one past the route's limit: 413 JSON naming it, before a byte is read."""
    app, before = app_with_store(tmp_path)
    exchange = await app.raw(head(method, path, f"Content-Length: {limit + 1}"), [b"[" * PIECE] * 4)
    assert exchange.status == 413 and exchange.closed
    assert f"larger than {limit} bytes" in exchange.json()["error"]
    assert exchange.request.body_received == 0 and exchange.request.content.tell() == 0
    assert parses.loads_calls == 0
    assert files_under(tmp_path / "registry") == before


@pytest.mark.parametrize(("method", "path", "limit"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_cut_off_at_the_limit(
    tmp_path: Path, parses: CountingOrjson, method: str, path: str, limit: int
) -> None:
    """A chunked body that never ends: refused once past the limit, having buffered at most the limit."""
    app, before = app_with_store(tmp_path)
    chunk = b"%x\r\n%s\r\n" % (PIECE, b"[" * PIECE)
    pieces = (chunk for _ in range(10 * limit // PIECE))
    exchange = await app.raw(head(method, path, "Transfer-Encoding: chunked"), pieces)
    assert exchange.status == 413 and exchange.closed
    assert f"larger than {limit} bytes" in exchange.json()["error"]
    assert exchange.request.content.tell() <= limit < exchange.request.body_received <= limit + PIECE
    assert parses.loads_calls == 0
    assert files_under(tmp_path / "registry") == before


@pytest_twisted.ensureDeferred
async def test_a_login_body_within_its_limit_is_served(tmp_path: Path) -> None:
    """The site's limits leave npm's own bodies alone: adduser through the site registers."""
    app, _ = app_with_store(tmp_path)
    body = orjson.dumps({"name": "alice", "password": "secret-pw", "email": "alice@example.test"})
    path = "/-/user/org.couchdb.user:alice"
    exchange = await app.raw(head("PUT", path, "Content-Type: application/json", f"Content-Length: {len(body)}")
                             + body)
    assert exchange.status == 201, exchange.reply


@pytest.mark.parametrize("anonymous", [True, False])
@pytest_twisted.ensureDeferred
async def test_an_amplifying_publish_body_is_refused_unparsed(
    tmp_path: Path, parses: CountingOrjson, anonymous: bool
) -> None:
    """[0,0,...] within the publish limit (it would cost 13 times its size parsed): refused
    without a parse: 401 anonymous (who is asking comes first), 413 for a user."""
    app, _ = app_with_store(tmp_path)
    token = await app.user("alice")
    before = files_under(tmp_path / "registry")
    parses.loads_calls = 0
    body = b"[" + b"0," * (MAX // 2 - 8) + b"0]"
    credentials = [] if anonymous else [f"Authorization: Bearer {token}"]
    exchange = await app.raw(head("PUT", "/pkg", f"Content-Length: {len(body)}", *credentials) + body)
    if anonymous:
        assert exchange.status == 401
    else:
        assert exchange.status == 413 and "too many JSON values" in exchange.json()["error"]
    assert parses.loads_calls == 0
    assert files_under(tmp_path / "registry") == before


@pytest.mark.parametrize("path", ["/-/npm/v1/security/advisories/bulk", "/-/nopard/prefetch"])
@pytest_twisted.ensureDeferred
async def test_a_form_body_on_a_large_route_is_not_parsed_as_a_form(tmp_path: Path, path: str) -> None:
    """A 1 MB urlencoded body of distinct keys (Twisted's form parser makes ~20 times that in
    objects) on a route that takes 16 MB: nothing parsed into the request's arguments."""
    app, before = app_with_store(tmp_path)
    body = b"&".join(b"%d=" % i for i in range(MAX // 8))
    exchange = await app.raw(head("POST", path, "Content-Type: application/x-www-form-urlencoded",
                                  f"Content-Length: {len(body)}") + body)
    assert exchange.request.args == {}
    assert files_under(tmp_path / "registry") == before


@pytest_twisted.ensureDeferred
async def test_the_browser_forms_are_still_parsed(tmp_path: Path) -> None:
    """The login page's form (small, on a small route) still reaches the page as arguments."""
    app, _ = app_with_store(tmp_path)
    body = b"name=alice&password=secret-pw"
    exchange = await app.raw(head("POST", "/-/web/login", "Content-Type: application/x-www-form-urlencoded",
                                  f"Content-Length: {len(body)}") + body)
    assert exchange.request.args[b"name"] == [b"alice"]
