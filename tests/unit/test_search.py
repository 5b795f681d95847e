"""Search: entries from documents, query parsing that never fails, ranking, paging, the index."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from nopard.catalog.search import MAX_SIZE, SearchIndex, entry_of, parse_query, search


def document(name: str, description: str = "", keywords: Any = None, **extra: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {"name": name, "version": "1.0.0", "description": description,
                                "_npmUser": {"name": "alice", "email": "a@example.com"}}
    if keywords is not None:
        manifest["keywords"] = keywords
    manifest.update(extra)
    return {
        "name": name, "description": description, "dist-tags": {"latest": "1.0.0"},
        "versions": {"0.9.0": {"name": name, "version": "0.9.0"}, "1.0.0": manifest},
        "time": {"1.0.0": "2026-01-02T00:00:00.000Z", "modified": "2026-01-03T00:00:00.000Z"},
        "maintainers": [{"name": "alice", "email": "a@example.com"}],
    }


def entries(*documents: dict[str, Any]) -> list:
    return [entry_of(d) for d in documents]


def run(text: str = "", **params: str) -> dict[bytes, list[bytes]]:
    args = {b"text": [text.encode()]}
    args.update({k.encode(): [v.encode()] for k, v in params.items()})
    return args


def names_found(answer: dict[str, Any]) -> list[str]:
    return [o["package"]["name"] for o in answer["objects"]]


def find(found: list, text: str, **params: str) -> dict[str, Any]:
    return search(found, parse_query(run(text, **params)), lambda name: True, "http://r.example", 0.0)


def test_entry_has_the_shape_npm_reads() -> None:
    entry = entry_of(document("lib", "a lib", ["x", "y"], homepage="https://h.example",
                              repository={"type": "git", "url": "git+https://g.example"}, bugs={"url": "https://b.example"}))
    summary = entry.summary("http://r.example/")
    assert summary["name"] == "lib" and summary["version"] == "1.0.0"
    assert summary["keywords"] == ["x", "y"] and summary["date"] == "2026-01-02T00:00:00.000Z"
    assert summary["links"] == {"npm": "http://r.example/lib", "homepage": "https://h.example", "repository": "git+https://g.example",
                                "bugs": "https://b.example"}
    assert summary["publisher"] == {"username": "alice", "email": "a@example.com"}
    assert summary["maintainers"] == [{"username": "alice", "email": "a@example.com"}]


def test_odd_documents_still_give_arrays() -> None:
    odd = {"name": "odd", "versions": {"1.0.0": {}}, "maintainers": "nobody", "keywords": "a, b"}
    summary = entry_of(odd).summary("http://r.example")
    assert summary["maintainers"] == [] and summary["keywords"] == ["a", "b"]
    assert summary["publisher"] == {"username": "", "email": ""}
    assert entry_of({"name": "none", "versions": {}}) is None
    assert entry_of({"versions": {"1.0.0": {}}}) is None
    person = entry_of({"name": "p", "versions": {"1.0.0": {}}, "maintainers": ["Bob <b@x>"]})
    assert person.maintainers == ({"username": "Bob", "email": "b@x"},)


def test_ranking_exact_prefix_contains_keyword_description() -> None:
    found = entries(
        document("zzz", "mentions widget in text"),
        document("yyy", "", ["widget"]),
        document("my-widget-tool"),
        document("widget-kit"),
        document("widget"),
        document("unrelated", "nothing"),
    )
    assert names_found(find(found, "widget")) == ["widget", "widget-kit", "my-widget-tool", "yyy", "zzz"]


def test_scoped_names_match_on_their_bare_name_and_all_terms_must_match() -> None:
    found = entries(document("@acme/widget", "fast"), document("widget", "slow"))
    assert names_found(find(found, "widget fast")) == ["@acme/widget"]
    assert names_found(find(found, "scope:acme")) == ["@acme/widget"]
    assert names_found(find(found, "keywords:none")) == []
    assert names_found(find(found, "maintainer:alice widget")) == ["@acme/widget", "widget"]


def test_paging_and_total() -> None:
    found = entries(*(document(f"pkg-{i:02}") for i in range(30)))
    first = find(found, "pkg")
    assert first["total"] == 30 and len(first["objects"]) == 20
    page = find(found, "pkg", size="5", **{"from": "10"})
    assert names_found(page) == [f"pkg-{i:02}" for i in range(10, 15)]
    assert find(found, "pkg", **{"from": "29"})["objects"][0]["package"]["name"] == "pkg-29"
    assert find(found, "pkg", **{"from": "1000"})["objects"] == []


@pytest.mark.parametrize(
    "params, size, offset",
    [
        ({}, 20, 0),
        ({"size": "100000000"}, MAX_SIZE, 0),
        ({"size": "9" * 5000}, 20, 0),
        ({"size": "-3", "from": "-7"}, 0, 0),
        ({"size": "ten", "from": "x"}, 20, 0),
        ({"size": "2.5", "from": "1e3"}, 2, 1000),
        ({"size": "nan", "from": "inf"}, 20, 0),
        ({"size": "\x00"}, 20, 0),
    ],
)
def test_odd_paging_values_fall_back_or_clamp(params: dict[str, str], size: int, offset: int) -> None:
    query = parse_query(run("x", **params))
    assert (query.size, query.offset) == (size, offset)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xff\xfe", "\u00fc\u4e2d\U0001f600".encode(), b"a" * 100_000,
                                 b"keywords:", b":::", b"scope:@", b"* ? [ ( \\"])
def test_odd_texts_never_fail(raw: bytes) -> None:
    query = parse_query({b"text": [raw], b"size": [b"5"]})
    answer = search(entries(document("lib")), query, lambda name: True, "http://r.example", 0.0)
    assert isinstance(answer["objects"], list) and answer["total"] >= 0
    assert parse_query({}).terms == ()


def test_invisible_packages_are_left_out_and_not_counted() -> None:
    found = entries(document("@secret/lib"), document("lib"))
    answer = search(
        found, parse_query(run("lib")), lambda name: not name.startswith("@secret/"), "http://r.example", 0.0)
    assert names_found(answer) == ["lib"] and answer["total"] == 1


class Meta:
    def __init__(self, etag: str) -> None:
        self.etag, self.last_modified, self.fetched_at = etag, None, 1.0


class FakeStore:
    def __init__(self) -> None:
        self.local: dict[str, dict] = {}
        self.mirrored: dict[str, tuple[dict, str]] = {}
        self.reads: list[str] = []

    async def local_names(self) -> list[str]:
        return list(self.local)

    async def document(self, name: str) -> dict | None:
        self.reads.append(name)
        return self.local.get(name)

    async def mirrored_names(self) -> list[str]:
        return list(self.mirrored)

    async def mirrored_meta(self, name: str) -> Meta:
        return Meta(self.mirrored[name][1])

    async def mirrored_document(self, name: str) -> dict:
        self.reads.append(name)
        return self.mirrored[name][0]


def result_of(coroutine: Any) -> Any:
    results: list = []
    ensureDeferred(coroutine).addBoth(results.append)
    assert results, "the coroutine did not finish"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_index_rereads_only_what_changed() -> None:
    store, clock = FakeStore(), Clock()
    index = SearchIndex(store, store, clock, max_age=30)
    store.local["mine"] = document("mine")
    store.mirrored["theirs"] = (document("theirs"), '"1"')
    assert sorted(e.name for e in result_of(index.entries())) == ["mine", "theirs"]
    store.reads.clear()
    store.local["new"] = document("new")
    assert len(result_of(index.entries())) == 2  # not due yet
    index.changed("mine")
    assert len(result_of(index.entries())) == 3
    assert sorted(store.reads) == ["mine", "new"]
    store.reads.clear()
    store.mirrored["theirs"] = (document("theirs", "changed"), '"2"')
    clock.advance(31)
    [theirs] = [e for e in result_of(index.entries()) if e.name == "theirs"]
    assert theirs.description == "changed" and store.reads == ["theirs"]
    del store.local["new"]
    index.changed("new")
    assert sorted(e.name for e in result_of(index.entries())) == ["mine", "theirs"]


class FakeStamps:
    """Stamps as RedisCoordination gives them: another instance's publish bumps one."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.down = False

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        return None if self.down else {name: str(self.values.get(name, 0)) for name in names}


def test_index_rereads_local_documents_other_instances_changed() -> None:
    """A local document changed through another instance (its stamp moved) is read again at the next build."""
    store, clock, stamps = FakeStore(), Clock(), FakeStamps()
    index = SearchIndex(store, store, clock, max_age=30, coordination=stamps)
    store.local["mine"] = document("mine")
    store.local["other"] = document("other")
    result_of(index.entries())
    store.local["mine"] = document("mine", "published elsewhere")
    stamps.values["mine"] = 1
    store.reads.clear()
    clock.advance(31)
    [mine] = [e for e in result_of(index.entries()) if e.name == "mine"]
    assert mine.description == "published elsewhere" and store.reads == ["mine"]
    stamps.down = True  # degraded: nothing tells what changed, so everything is read
    store.reads.clear()
    clock.advance(31)
    result_of(index.entries())
    assert sorted(store.reads) == ["mine", "other"]


def test_concurrent_searches_share_one_update() -> None:
    gate: Deferred = Deferred()

    class Slow(FakeStore):
        calls = 0

        async def local_names(self) -> list[str]:
            Slow.calls += 1
            await gate
            return list(self.local)

    store = Slow()
    store.local["a"] = document("a")
    index = SearchIndex(store, store, Clock())
    first, second = ensureDeferred(index.entries()), ensureDeferred(index.entries())
    gate.callback(None)
    got: list = []
    first.addCallback(got.append)
    second.addCallback(got.append)
    assert [len(g) for g in got] == [1, 1] and Slow.calls == 1
