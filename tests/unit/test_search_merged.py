"""The pure rules of a search merged with the upstream's: what may be asked, which window, the page."""

from __future__ import annotations

import pytest

from nopard.catalog import merged
from nopard.catalog.search import Entry, parse_query


def query(text: str, offset: int = 0, size: int = 20) -> merged.Query:
    return parse_query({b"text": [text.encode()], b"from": [str(offset).encode()], b"size": [str(size).encode()]})


def entry(name: str) -> Entry:
    return Entry(name, "1.0.0", "", (), "", {}, {"username": "", "email": ""}, ())


def upstream(*names: str, total: int | None = None, offset: int = 0) -> merged.UpstreamAnswer:
    objects = [{"package": {"name": n}} for n in names]
    return merged.UpstreamAnswer(objects, len(names) if total is None else total, offset)


@pytest.mark.parametrize(("text", "asked"), [
    ("widget", True), ("lib", False), ("@acme/lib", False), ("@acme", False), ("scope:acme", False),
    ("@corp/x", False), ("scope:corp", False), ("@other thing", True), ("library", True),
])
def test_what_may_be_asked_upstream(text: str, asked: bool) -> None:
    """Local names (whole or after their scope), their scopes and scopes not forwarded stay here."""
    def forwarded(name: str) -> bool:
        return not name.startswith("@corp/")

    assert merged.may_ask_upstream(query(text), ["@acme/lib"], forwarded) is asked


def test_the_window_is_from_the_top_while_the_page_ends_within_250() -> None:
    """Exact paging from the top (at least 20 results asked); past 250, from where the page starts."""
    assert merged.upstream_window(query("x", 0, 5), 3) == (0, 20)
    assert merged.upstream_window(query("x", 200, 50), 3) == (0, 250)
    assert merged.upstream_window(query("x", 300, 20), 3) == (297, 23)


def test_the_page_is_cut_once_from_the_merged_list() -> None:
    """Local results, then the upstream's not listed or refused; from/size over both; total of both."""
    found = [(10.0, entry("a")), (5.0, entry("b"))]
    answer = upstream("b", "c", "hidden", "d", total=40)
    page = merged.merged_answer(found, answer, query("x", 1, 2), lambda n: n != "hidden", "http://h/", 0.0)
    assert [o["package"]["name"] for o in page["objects"]] == ["b", "c"]
    assert page["total"] == 2 + 40 - 2 and page["time"] == "1970-01-01T00:00:00.000Z"
    deep = merged.merged_answer(found, upstream("x1", "x2", offset=300), query("x", 302, 2), bool, "http://h/", 0.0)
    assert [o["package"]["name"] for o in deep["objects"]] == ["x1", "x2"]


@pytest.mark.parametrize("answer", [None, [], {"objects": "x"}, {"objects": [1, {"package": {"name": 2}}]}])
def test_an_odd_upstream_answer_brings_nothing(answer: object) -> None:
    """What is not a search answer is ignored, never a failure."""
    read = merged.read_upstream_answer(answer, 0)
    assert read is None or read.objects == []
