"""`npm search` through a real `twistd -n nopard` mirroring the fake upstream, which answers
searches too: nopard's own packages first, then the upstream's; private scopes never reach it;
with the upstream down, the local results."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support import NopardServer, Npm, make_package, publish_directory
from tests.upstream import FakeUpstream

USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module")
def world(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """nopard with @acme private, debug-toolkit-local and @acme/debug-secret published to it."""
    upstream.healthy()
    work = tmp_path_factory.mktemp("search-upstream")
    server = NopardServer(work / "nopard", {"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_PRIVATE_SCOPES": "@acme"})
    server.start()
    token = server.token(USER, PASSWORD)
    for name in ("debug-toolkit-local", "@acme/debug-secret"):
        answer = publish_directory(server, token, make_package(work / name.replace("/", "+"), name, "1.0.0"))
        assert answer.status == 201, answer.body
    yield {"work": work, "server": server, "upstream": upstream, "npm": Npm(server.url, work / "npm")}
    server.stop()
    upstream.healthy()


def npm_search(world: dict, *words: str) -> list[str]:
    result = world["npm"].run("search", "--json", *words)
    return [item["name"] for item in json.loads(result.stdout)]


def test_npm_search_lists_local_packages_then_the_upstreams(world: dict) -> None:
    """`npm search debug`: nopard's own packages first, then the upstream's debug, each once."""
    world["upstream"].healthy()
    found = npm_search(world, "debug")
    assert found[:2] == ["@acme/debug-secret", "debug-toolkit-local"] or found[:2] == [
        "debug-toolkit-local", "@acme/debug-secret"]
    assert "debug" in found[2:] and len(found) == len(set(found))
    assert world["upstream"].stats()["searches"] == ["debug"]


def test_a_private_scope_or_a_local_name_is_never_searched_upstream(world: dict) -> None:
    """`npm search @acme/debug` and `npm search debug-toolkit-local` are answered by nopard alone."""
    world["upstream"].healthy()
    assert npm_search(world, "@acme/debug") == ["@acme/debug-secret"]
    assert npm_search(world, "debug-toolkit-local") == ["debug-toolkit-local"]
    assert world["upstream"].stats()["searches"] == []


def test_with_the_upstream_down_npm_search_gets_the_local_results(world: dict) -> None:
    """The upstream refusing connections: `npm search debug` still lists nopard's packages."""
    world["upstream"].fault("refused")
    try:
        assert sorted(npm_search(world, "debug")) == ["@acme/debug-secret", "debug-toolkit-local"]
    finally:
        world["upstream"].healthy()


def test_a_search_without_text_is_a_400(world: dict) -> None:
    """GET /-/v1/search with no text: a JSON 400 saying what is missing."""
    answer = world["server"].request("GET", "/-/v1/search?size=5")
    assert answer.status == 400 and "text=" in answer.json()["error"]
