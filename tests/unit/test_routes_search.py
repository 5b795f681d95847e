"""Search in-process: published packages are found, hidden ones are not; audits without an upstream."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.support import publish_body
from tests.unit.route_harness import InProcess, build

RULES = {"packages": [{"pattern": "secret-*", "access": ["alice"], "publish": ["alice"]},
                      {"pattern": "**", "access": ["$all"], "publish": ["$authenticated"], "proxy": ["$all"]}]}


async def publish(app: InProcess, token: str, name: str, **manifest: str) -> None:
    """Publish version 1.0.0 of ``name``."""
    answer = await app.call("PUT", f"/{name}", publish_body(name, "1.0.0", **manifest), token=token)
    assert answer.status == 201, answer.body


def found(answer_json: dict) -> list[str]:
    """The package names of a search answer."""
    return [item["package"]["name"] for item in answer_json["objects"]]


@pytest_twisted.ensureDeferred
async def test_search_finds_a_published_package(tmp_path: Path) -> None:
    """npm search for a word of the description finds the package just published."""
    app = build(tmp_path)
    token = await app.user("alice")
    await publish(app, token, "widget-maker", description="makes widgets")
    await publish(app, token, "other-thing", description="something else")
    answer = await app.call("GET", "/-/v1/search?text=widgets")
    assert answer.status == 200 and found(answer.json()) == ["widget-maker"]


@pytest_twisted.ensureDeferred
async def test_search_leaves_out_what_the_caller_may_not_read(tmp_path: Path) -> None:
    """A package hidden by the rules is not found by others, and is found by its reader."""
    app = build(tmp_path, rules=RULES)
    alice = await app.user("alice")
    await publish(app, alice, "secret-widget", description="widgets")
    assert found((await app.call("GET", "/-/v1/search?text=widgets")).json()) == []
    assert found((await app.call("GET", "/-/v1/search?text=widgets", token=alice)).json()) == ["secret-widget"]


@pytest_twisted.ensureDeferred
async def test_search_needs_a_login_when_reads_do(tmp_path: Path) -> None:
    """With NOPARD_AUTH_READ on, an anonymous search is 401."""
    answer = await build(tmp_path, auth_read="yes").call("GET", "/-/v1/search?text=x")
    assert answer.status == 401


@pytest_twisted.ensureDeferred
async def test_stars_are_listed_per_user(tmp_path: Path) -> None:
    """npm star then npm stars: the starred package is listed for that user."""
    app = build(tmp_path)
    token = await app.user("alice")
    await publish(app, token, "shiny")
    document = (await app.call("GET", "/shiny")).json()
    starred = await app.call("PUT", "/shiny", {"_id": "shiny", "_rev": document["_rev"], "users": {"alice": True}},
                             token=token)
    assert starred.status == 200
    answer = await app.call("GET", '/-/_view/starredByUser?key="alice"', token=token)
    assert answer.json() == {"rows": [{"value": "shiny"}]}


@pytest_twisted.ensureDeferred
async def test_packages_named_like_a_storage_folder_are_searched_starred_and_listed(tmp_path: Path) -> None:
    """`upstream` and `@scope/upstream` are package names like any other (their keys share a word
    with the mirrored copies' folder): search finds them, npm stars lists them, the home page shows them."""
    app = build(tmp_path)
    token = await app.user("alice")
    for name in ("upstream", "@scope/upstream"):
        await publish(app, token, name, description="folder word")
        document = (await app.call("GET", f"/{name.replace('/', '%2f')}")).json()
        starred = await app.call("PUT", f"/{name.replace('/', '%2f')}",
                                 {"_id": name, "_rev": document["_rev"], "users": {"alice": True}}, token=token)
        assert starred.status == 200, starred.body
    assert sorted(found((await app.call("GET", "/-/v1/search?text=folder")).json())) == ["@scope/upstream", "upstream"]
    stars = (await app.call("GET", '/-/_view/starredByUser?key="alice"', token=token)).json()
    assert sorted(row["value"] for row in stars["rows"]) == ["@scope/upstream", "upstream"]
    home = await app.call("GET", "/", Accept="text/html")
    assert home.status == 200
    assert "@scope/upstream" in home.body.decode() and "/-/web/package/upstream" in home.body.decode()
