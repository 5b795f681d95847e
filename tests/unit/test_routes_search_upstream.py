"""npm search with an upstream, in-process: local and cached results first, then the upstream's own,
one page over both; nothing hidden, local or private is shown from it or sent to it; down or
silent, the local results come at once or within the stale deadline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted

from tests.support import publish_body
from tests.unit.mirror_harness import FakeRegistry, packument
from tests.unit.route_harness import InProcess, build

RULES = {"packages": [{"pattern": "demo-secret*", "access": ["alice"], "publish": ["alice"], "proxy": ["$all"]},
                      {"pattern": "**", "access": ["$all"], "publish": ["$authenticated"], "proxy": ["$all"]}]}
UPSTREAM_NAMES = ("demo-a", "demo-b", "demo-c", "demo-local", "demo-secret", "other")


def world(tmp_path: Path, *more: str, **settings: str) -> tuple[InProcess, FakeRegistry]:
    upstream = FakeRegistry(documents={n: packument(n, "1.0.0") for n in (*UPSTREAM_NAMES, *more)})
    return build(tmp_path, rules=RULES, upstream=upstream, **settings), upstream


def names(answer: dict) -> list[str]:
    return [item["package"]["name"] for item in answer["objects"]]


async def with_local(app: InProcess) -> str:
    """alice publishes demo-local (the upstream has another package of that name)."""
    token = await app.user("alice")
    answer = await app.call("PUT", "/demo-local", publish_body("demo-local", "1.0.0"), token=token)
    assert answer.status == 201, answer.body
    return token


@pytest.mark.parametrize("query", ["", "?text=", "?text=%20%20", "?size=5"])
@pytest_twisted.ensureDeferred
async def test_a_search_without_text_is_a_400(tmp_path: Path, query: str) -> None:
    """No words to look for: a JSON 400 saying so, and nothing asked upstream."""
    app, upstream = world(tmp_path)
    answer = await app.call("GET", "/-/v1/search" + query)
    assert answer.status == 400 and "text=" in answer.json()["error"]
    assert upstream.searches == []


@pytest_twisted.ensureDeferred
async def test_local_first_then_the_upstream_deduplicated_and_paged_once(tmp_path: Path) -> None:
    """Local demo-local first, then the upstream's demo-* (its own demo-local left out); from/size over
    the merged list; total counts both sides; time is ISO 8601."""
    app, upstream = world(tmp_path)
    await with_local(app)
    whole = (await app.call("GET", "/-/v1/search?text=demo")).json()
    assert names(whole) == ["demo-local", "demo-a", "demo-b", "demo-c"]
    assert whole["total"] == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", whole["time"])
    page = (await app.call("GET", "/-/v1/search?text=demo&from=1&size=2")).json()
    assert names(page) == ["demo-a", "demo-b"] and page["total"] == 4
    assert names((await app.call("GET", "/-/v1/search?text=demo&from=3&size=5")).json()) == ["demo-c"]
    assert upstream.searches == ["demo"] * 3


@pytest_twisted.ensureDeferred
async def test_a_cached_package_is_listed_once_from_the_local_index(tmp_path: Path) -> None:
    """A package fetched before is in the local index, first, and not listed again from the upstream."""
    app, _upstream = world(tmp_path)
    assert (await app.call("GET", "/demo-c")).status == 200
    answer = (await app.call("GET", "/-/v1/search?text=demo")).json()
    assert names(answer) == ["demo-c", "demo-a", "demo-b", "demo-local"] and answer["total"] == 4


@pytest_twisted.ensureDeferred
async def test_hidden_packages_never_appear_from_the_upstream(tmp_path: Path) -> None:
    """demo-secret (readable by alice only) is left out of others' answers and counts; alice sees it."""
    app, _upstream = world(tmp_path)
    token = await app.user("alice")
    anonymous = (await app.call("GET", "/-/v1/search?text=demo")).json()
    assert "demo-secret" not in names(anonymous) and anonymous["total"] == 4
    assert "demo-secret" in names((await app.call("GET", "/-/v1/search?text=demo", token=token)).json())


@pytest.mark.parametrize("text", ["demo-local", "@corp/demo", "@corp", "scope:corp demo", "demo scope:@corp"])
@pytest_twisted.ensureDeferred
async def test_local_names_and_private_scopes_are_never_sent_upstream(tmp_path: Path, text: str) -> None:
    """A query naming a package published here or a private scope is answered from nopard alone."""
    app, upstream = world(tmp_path, private_scopes="@corp")
    await with_local(app)
    answer = await app.call("GET", f"/-/v1/search?text={text}")
    assert answer.status == 200
    assert upstream.searches == []


@pytest_twisted.ensureDeferred
async def test_private_scope_results_of_the_upstream_are_left_out(tmp_path: Path) -> None:
    """The upstream's @corp/demo-x never shows when @corp is private (nopard would never serve it)."""
    app, _upstream = world(tmp_path, "@corp/demo-x", private_scopes="@corp")
    assert "@corp/demo-x" not in names((await app.call("GET", "/-/v1/search?text=demo")).json())
    public, _ = world(tmp_path / "public", "@corp/demo-x")
    assert "@corp/demo-x" in names((await public.call("GET", "/-/v1/search?text=demo")).json())


@pytest_twisted.ensureDeferred
async def test_with_the_upstream_down_local_results_come_without_asking_it(tmp_path: Path) -> None:
    """Failing searches open the breaker; then searches answer locally and the upstream is not asked."""
    app, upstream = world(tmp_path)
    await with_local(app)
    upstream.fault = "5xx"
    for _ in range(3):
        answer = await app.call("GET", "/-/v1/search?text=demo")
        assert answer.status == 200 and names(answer.json()) == ["demo-local"]
    asked = upstream.asked("/-/v1/search")
    answer = await app.call("GET", "/-/v1/search?text=demo")
    assert names(answer.json()) == ["demo-local"] and answer.json()["total"] == 1
    assert upstream.asked("/-/v1/search") == asked


@pytest_twisted.ensureDeferred
async def test_a_silent_upstream_costs_at_most_the_stale_deadline(tmp_path: Path) -> None:
    """An upstream that never answers: the local results once the stale deadline passed (clock driven)."""
    app, upstream = world(tmp_path, stale_deadline="2")
    await with_local(app)
    upstream.fault = "silent"
    app.skip_idle_time = True
    started = app.clock.seconds()
    answer = await app.call("GET", "/-/v1/search?text=demo")
    assert answer.status == 200 and names(answer.json()) == ["demo-local"]
    assert app.clock.seconds() - started <= 2.0
