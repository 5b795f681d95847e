"""Hostile clients on every route, generated (hypothesis): nothing they send breaks, writes or tells.

Every route the app mounts (RegistryApp.routes) gets generated methods, hostile
paths and names, headers and bodies, sent as an anonymous caller, an ordinary
user, a read-only token and a token made by ``npm token create``. Each example
runs on a fresh copy of one registry (tests/unit/hostile_world.py) and asserts:

- no answer is a 5xx, and ``/-/ping`` still answers afterwards;
- a refused request (4xx) wrote nothing to the store;
- an accepted one wrote only its own package's keys (account routes: users and tokens);
- no answer shows a hidden package's name or contents to someone it is hidden from;
- on every read route a hidden package is answered as a missing one: as in the
  same registry without it, and as a missing name under the same rule.

Examples are derandomized (no example database), so CI runs the same ones each time;
NOPARD_HOSTILE_EXAMPLES multiplies their number for a longer hunt.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nopard.auth.operator import OPERATOR_HEADER
from nopard.web.app import Route
from tests.support import Response
from tests.unit.hostile_strategies import HEADERS, ROUTE_PATHS, Hostile, hostile_requests
from tests.unit.hostile_world import (
    CALLERS,
    HIDDEN_NAMES,
    World,
    changed_keys,
    fresh_directory,
    leaked,
    make_worlds,
    own_keys,
    snapshot,
)
from tests.unit.route_harness import OPERATOR_TOKEN, InProcess, build

SCALE = int(os.environ.get("NOPARD_HOSTILE_EXAMPLES", "1"))


def examples(count: int) -> settings:
    """Reproducible settings: the same examples every run, no wall-time deadline."""
    return settings(
        max_examples=count * SCALE, deadline=None, derandomize=True, database=None,
        # Each example copies a registry and builds the whole app (~30 ms): slower than
        # hypothesis expects of a strategy-driven test, but bounded by max_examples.
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, World]:
    """The registry without and with hidden packages, made once for this module."""
    return make_worlds(tmp_path_factory.mktemp("worlds"))


@pytest.fixture(scope="module")
def routes(worlds: tuple[World, World]) -> list[Route]:
    """Every route the app mounts."""
    opened = worlds[0].open(fresh_directory())
    assert opened.app is not None
    return opened.app.routes()


@contextmanager
def scratch() -> Iterator[list[Path]]:
    """Directories one example makes, removed after it."""
    made: list[Path] = []
    try:
        yield made
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


async def send(app: InProcess, world: World, request: Hostile) -> Response:
    """``request`` sent to ``app`` with its caller's credentials (unless it brings its own)."""
    headers = dict(request.headers)
    credentials = world.auth[request.caller]
    if credentials is not None and "Authorization" not in headers:
        headers["Authorization"] = credentials
    return await app.call(request.method, request.path, raw=request.body, **headers)


async def opened(world: World, scratch: list[Path]) -> InProcess:
    """A fresh app over a copy of ``world``, in which the operator has just prefetched a hidden package."""
    directory = fresh_directory()
    scratch.append(directory)
    app = world.open(directory)
    body = {"packages": [["secret-mirror", "1.0.0"]]}
    warm = await app.call("POST", "/-/nopard/prefetch", body, **{OPERATOR_HEADER: OPERATOR_TOKEN})
    assert warm.status == 200, warm.body  # the sync report names a hidden package now
    return app


def test_every_route_has_a_strategy(tmp_path: Path) -> None:
    """A route added to the app without a strategy here fails the suite (and a stale strategy too)."""
    app = build(tmp_path)
    assert app.app is not None
    mounted = {route.endpoint for route in app.app.routes()}
    assert mounted - set(ROUTE_PATHS) == set(), "routes the hostile suite does not generate requests for"
    assert set(ROUTE_PATHS) - mounted == set(), "strategies for routes that no longer exist"


@examples(200)
@given(data=st.data())
@pytest_twisted.ensureDeferred
async def test_hostile_requests_break_nothing_write_nothing_tell_nothing(
    worlds: tuple[World, World], routes: list[Route], data: Any,
) -> None:
    """No 5xx, ping still answers, refused requests write nothing, accepted ones only their own keys,
    and nothing hidden is shown."""
    world = worlds[1]
    request = data.draw(hostile_requests(routes, CALLERS), label="request")
    with scratch() as made:
        app = await opened(world, made)
        before = snapshot(app)
        answer = await send(app, world, request)
        changed = changed_keys(before, snapshot(app))
        pinged = await app.call("GET", "/-/ping")
    seen = request.describe()
    assert answer.status < 500, f"{seen} -> {answer.status} {answer.body[:500]!r}"
    assert pinged.status == 200, seen
    if answer.status >= 400:
        assert changed == set(), f"{seen} -> {answer.status}, yet it wrote {sorted(changed)}"
    else:
        own = own_keys(request.method, request.path)
        assert [key for key in changed if not own(key)] == [], f"{seen} -> {answer.status} wrote outside its keys"
    sent = request.path + repr(request.headers) + (request.body or b"").decode("utf-8", "replace")
    assert leaked(answer, sent) == [], f"{seen} -> {answer.status} {answer.body[:500]!r}"


TWINS = {"secret-pkg": "secret-pkq", "@hidden/pkg": "@hidden/pkq", "secret-mirror": "secret-mirroq"}
COMPARED_HEADERS = ("content-type", "content-length", "cache-control", "location", "www-authenticate",
                    "x-nopard-cache", "etag", "retry-after", "vary", "content-encoding")


def twin(text: str) -> str:
    """``text`` naming the missing twins of the hidden names (same length, same rule)."""
    return text.replace("pkg", "pkq").replace("mirror", "mirroq")


# Not a name, so not what these properties look for: the wall-clock creation times of the
# metrics (with labels or without: nopard_mirror_evictions has none), and the store's total size
# on the status page (it counts every package's bytes).
AGGREGATES = (re.compile(rb"(_created(?:\{[^}]*\})?) \S+"), re.compile(rb"(Storage used: )[^<]*"))


AGGREGATE_ROUTES = ("/-/metrics", "/-/web/status")
RANDOM = re.compile(rb"[A-Za-z0-9_-]{32,}")  # a fresh CSRF token or session id on each page


def seen_as(answer: Response, path: str, rename: bool = False) -> tuple[int, dict[str, str], bytes]:
    """What a client tells apart: status, the headers that matter, the body (twins named back)."""
    body = answer.body.replace(b"pkq", b"pkg").replace(b"mirroq", b"mirror") if rename else answer.body
    headers = {k: answer.headers.get(k, "") for k in COMPARED_HEADERS}
    if path.startswith(AGGREGATE_ROUTES) or RANDOM.search(body):
        headers.pop("content-length")
        for aggregate in AGGREGATES:
            body = aggregate.sub(rb"\1...", body)
    return answer.status, headers, RANDOM.sub(b"<random>", body)


@st.composite
def reads(draw: Any, routes: list[Route]) -> Hostile:
    """A read (GET or HEAD) on a route that has one, naming a hidden package, by a caller it is hidden from."""
    readable = [route for route in routes if route.methods is None or "GET" in route.methods]
    route = draw(st.sampled_from(readable))
    path = draw(ROUTE_PATHS[route.endpoint](draw(st.sampled_from(HIDDEN_NAMES))))
    headers = {k: v for k, v in draw(HEADERS).items() if k in ("Accept", "X-Forwarded-Proto")}
    return Hostile(draw(st.sampled_from(CALLERS)), draw(st.sampled_from(("GET", "HEAD"))), path, headers, None)


@examples(50)
@given(data=st.data())
@pytest_twisted.ensureDeferred
async def test_hidden_packages_answer_as_missing_ones(
    worlds: tuple[World, World], routes: list[Route], data: Any,
) -> None:
    """Every read route answers a hidden package exactly as in the registry without it, and as a
    missing name under the same access rule."""
    public, hidden = worlds
    request = data.draw(reads(routes), label="request")
    other = Hostile(request.caller, request.method, twin(request.path), request.headers, None)
    with scratch() as made:
        with_hidden = await send(await opened(hidden, made), hidden, request)
        without = await send(await opened(public, made), public, request)
        missing = await send(await opened(hidden, made), hidden, other)
    assert seen_as(with_hidden, request.path) == seen_as(without, request.path), request.describe()
    assert seen_as(with_hidden, request.path) == seen_as(missing, request.path, rename=True), request.describe()


@pytest.mark.parametrize(("method", "path"), [("POST", "/-/v1/login//."), ("GET", "/-/web")])
@pytest_twisted.ensureDeferred
async def test_paths_werkzeug_would_redirect_are_not_found(tmp_path: Path, method: str, path: str) -> None:
    """Found by the property suite: a path werkzeug would redirect (slashes merged, a trailing
    slash added) answered 500; it is a JSON 404 like any path no route serves."""
    answer = await build(tmp_path).call(method, path)
    assert (answer.status, answer.json()) == (404, {"error": "not found"})


@pytest.mark.parametrize(("method", "path"), [("GET", "/-/web/package//refresh"), ("POST", "/-/web/package//refresh"),
                                              ("GET", "/-/web/static//x")])
@pytest_twisted.ensureDeferred
async def test_page_paths_with_an_empty_segment_are_not_a_5xx(tmp_path: Path, method: str, path: str) -> None:
    """Found by the property suite: werkzeug merges the slashes of these paths by raising a
    redirect inside the pages' app, which answered 500; now the not-found page."""
    answer = await build(tmp_path).call(method, path)
    assert answer.status == 404, answer.body[:300]
