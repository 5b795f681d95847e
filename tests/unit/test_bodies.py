"""The body rules of nopard.web.bodies: each route's size limit, and what a parse may cost."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nopard.domain.errors import PayloadTooLarge
from nopard.web.bodies import (
    LIST_BODY_LIMIT,
    PARSE_COST_ALLOWANCE,
    SMALL_BODY_LIMIT,
    body_limit,
    check_parse_cost,
    parse_cost,
    parse_cost_limit,
    parse_cost_outside_strings,
)
from tests.support import publish_body

MAX = 100 * 1024 * 1024
PACKUMENTS = Path(__file__).parent.parent / "data" / "upstream" / "packuments"


@pytest.mark.parametrize(("method", "path", "size"), [
    # Package documents: publish, and the whole document npm deprecate / unpublish send back.
    (b"PUT", b"/pkg", MAX), (b"PUT", b"/@scope%2fpkg", MAX), (b"PUT", b"/@scope/pkg", MAX),
    (b"PUT", b"/%40scope%2Fpkg?write=true", MAX), (b"PUT", b"/pkg/-rev/3-abc", MAX),
    # Audits (forwarded, not parsed) and prefetch lists.
    (b"POST", b"/-/npm/v1/security/advisories/bulk", LIST_BODY_LIMIT),
    (b"POST", b"/-/npm/v1/security/audits/quick", LIST_BODY_LIMIT),
    (b"POST", b"/-/nopard/prefetch", LIST_BODY_LIMIT),
    # Everything else is small: logins, tokens, web login, settings, dist-tags, forms, reads.
    (b"PUT", b"/-/user/org.couchdb.user:x", SMALL_BODY_LIMIT),
    (b"PUT", b"/%2D/user/org.couchdb.user:x", SMALL_BODY_LIMIT),
    (b"POST", b"/-/npm/v1/tokens", SMALL_BODY_LIMIT), (b"POST", b"/-/v1/login", SMALL_BODY_LIMIT),
    (b"POST", b"/-/v1/login/abc", SMALL_BODY_LIMIT), (b"PUT", b"/-/nopard/settings", SMALL_BODY_LIMIT),
    (b"POST", b"/-/nopard/sync", SMALL_BODY_LIMIT), (b"PUT", b"/-/package/pkg/dist-tags/next", SMALL_BODY_LIMIT),
    (b"POST", b"/-/web/login", SMALL_BODY_LIMIT), (b"POST", b"/-/web/settings", SMALL_BODY_LIMIT),
    (b"GET", b"/pkg", SMALL_BODY_LIMIT), (b"GET", b"/-/v1/search?text=x", SMALL_BODY_LIMIT),
    (b"DELETE", b"/pkg/-rev/1-a", SMALL_BODY_LIMIT), (b"POST", b"/pkg", SMALL_BODY_LIMIT),
    (b"PUT", b"/pkg/-/pkg-1.0.0.tgz", SMALL_BODY_LIMIT), (b"PUT", b"/..%2f..%2fetc", SMALL_BODY_LIMIT),
    (b"-", b"-", SMALL_BODY_LIMIT),
])
def test_each_route_has_its_limit(method: bytes, path: bytes, size: int) -> None:
    """Only package-document PUTs may send NOPARD_MAX_BODY_SIZE."""
    assert body_limit(method, path, MAX).size == size


def test_no_limit_passes_nopard_max_body_size() -> None:
    """A NOPARD_MAX_BODY_SIZE below a route's own limit is the limit, and named so."""
    limit = body_limit(b"PUT", b"/-/user/org.couchdb.user:x", 1000)
    assert (limit.size, limit.name) == (1000, "NOPARD_MAX_BODY_SIZE")
    assert "NOPARD_MAX_BODY_SIZE" in body_limit(b"PUT", b"/pkg", 1000).name


def _array(unit: bytes, count: int) -> bytes:
    return b"[" + b",".join([unit] * count) + b"]"


@pytest.mark.parametrize("unit", [b"0", b"{}", b"[]", b'{"a":0}', b"[[[[]]]]", b'"ab"', b"{}   "])
def test_amplifying_bodies_are_refused_before_parsing(unit: bytes) -> None:
    """Millions of tiny values (8 to 43 times their size once parsed) are 413."""
    with pytest.raises(PayloadTooLarge, match="too many JSON values"):
        check_parse_cost(_array(unit, 2_000_000))


def test_real_package_documents_are_accepted() -> None:
    """Every recorded packument, one of 600 versions, and a publish body pass."""
    documents: list[Any] = [orjson.loads(path.read_bytes()) for path in PACKUMENTS.rglob("*.json")]
    assert len(documents) > 50
    versions = {f"1.0.{i}": dict(doc["versions"][next(iter(doc["versions"]))], version=f"1.0.{i}")
                for i, doc in enumerate(documents * 10) if doc.get("versions")}
    documents.append({"name": "big", "versions": versions, "time": {v: "2026-01-01T00:00:00.000Z" for v in versions}})
    documents.append(publish_body("pkg", "1.0.0", data=bytes(range(256)) * 40_000))
    for document in documents:
        for raw in (orjson.dumps(document), orjson.dumps(document, option=orjson.OPT_INDENT_2)):
            check_parse_cost(raw)
    assert len(orjson.dumps(documents[-2])) > 2 * PARSE_COST_ALLOWANCE  # the allowance did not let it in


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8), children, max_size=8),
    max_leaves=200,
)


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_the_estimate_bounds_the_objects_a_parse_makes(value: Any) -> None:
    """What orjson allocates for any JSON value stays under parse_cost (give or take a kilobyte,
    and 2 bytes a byte for strings of 4-byte characters): an accepted body costs a bounded multiple of its size."""
    raw = orjson.dumps(value)
    tracemalloc.start()
    try:
        parsed = orjson.loads(raw)
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del parsed
    assert parse_cost_outside_strings(raw) <= parse_cost(raw)
    assert allocated <= parse_cost_outside_strings(raw) + 2 * len(raw) + 1024


@pytest.mark.parametrize("text", ["![" * 300_000, "{[:,]}" * 100_000, 'say \\"[{\\"' * 50_000])
def test_punctuation_inside_strings_is_no_value(text: str) -> None:
    """A readme of 600 KB of `![` (or of JSON examples, escaped quotes and all) is text: accepted."""
    body = publish_body("pkg", "1.0.0", readme=text)
    raw = orjson.dumps(body)
    assert parse_cost(raw.replace(b'"', b" ")) > parse_cost_limit(len(raw))  # as brackets: refused
    check_parse_cost(raw)


def test_escaped_quotes_do_not_hide_values() -> None:
    """Values after an escaped backslash at a string's end still count: `["\\\\",0,0,...]` is refused."""
    with pytest.raises(PayloadTooLarge):
        check_parse_cost(b'["\\\\",' + b"0," * 2_000_000 + b"0]")
