"""Prepared responses and the byte-bounded cache that holds them."""

from __future__ import annotations

import gzip
from typing import Any

import orjson

from nopard.domain.prepared import CachedDocument, LoadTicket, PreparedBody, PreparedCache, PreparedDocument, prepare


def document(name: str = "pkg", description: str = "x") -> dict[str, Any]:
    """A stored document with one version and a bare tarball file name."""
    short = name.rsplit("/", 1)[-1]
    return {
        "_id": name, "name": name, "description": description,
        "dist-tags": {"latest": "1.0.0"}, "time": {"created": "t0", "modified": "t1", "1.0.0": "t0"},
        "versions": {"1.0.0": {"name": name, "version": "1.0.0", "description": description,
                               "dist": {"shasum": "ab", "tarball": f"{short}-1.0.0.tgz"}}},
    }


def entry(size: int) -> CachedDocument:
    """A cached document holding exactly ``size`` bytes (size >= 4)."""
    half = PreparedBody(b"x" * (size // 2 - 1), b"z", 'W/"e"')
    rest = PreparedBody(b"y" * (size - half.size - 1), b"z", 'W/"f"')
    prepared = PreparedDocument(half, rest, "t1")
    assert prepared.size == size
    return CachedDocument(prepared)


def test_gzip_form_decompresses_to_identity() -> None:
    """The gzip bytes decompress to exactly the identity JSON."""
    body = PreparedBody.of(document())
    assert gzip.decompress(body.gzipped) == body.identity
    assert orjson.loads(body.identity) == document()


def test_etag_is_weak_and_stable_for_same_content() -> None:
    """Equal content gives the same weak ETag, prepared twice."""
    one, two = PreparedBody.of(document()), PreparedBody.of(document())
    assert one.etag == two.etag
    assert one.etag.startswith('W/"') and one.etag.endswith('"')
    assert one.gzipped == two.gzipped


def test_etag_differs_for_different_content() -> None:
    """A one-field change gives a different ETag."""
    assert PreparedBody.of(document(description="x")).etag != PreparedBody.of(document(description="y")).etag


def test_body_size_counts_both_encodings() -> None:
    """A body's size is its identity plus gzip bytes."""
    body = PreparedBody.of(document())
    assert body.size == len(body.identity) + len(body.gzipped)


def test_prepare_full_form_rewrites_tarball_urls() -> None:
    """The full form is the document with dist.tarball under the base URL."""
    full = orjson.loads(prepare(document("@s/n"), "https://h.example/npm").full.identity)
    assert full["versions"]["1.0.0"]["dist"]["tarball"] == "https://h.example/npm/@s/n/-/n-1.0.0.tgz"
    assert full["description"] == "x"


def test_prepare_abbreviated_form() -> None:
    """The abbreviated form has the abbreviated fields and the rewritten tarball URL."""
    small = orjson.loads(prepare(document(), "http://h.example").abbreviated.identity)
    assert set(small) == {"name", "modified", "dist-tags", "versions", "time"}
    assert small["versions"]["1.0.0"] == {
        "name": "pkg", "version": "1.0.0", "dist": {"shasum": "ab", "tarball": "http://h.example/pkg/-/pkg-1.0.0.tgz"}
    }


def test_prepare_keeps_last_modified() -> None:
    """last_modified is the document's time.modified, or empty without one."""
    assert prepare(document(), "http://h.example").last_modified == "t1"
    assert prepare({"name": "p", "versions": {}}, "http://h.example").last_modified == ""


def test_prepared_forms_have_different_etags() -> None:
    """Full and abbreviated forms of one document carry different ETags."""
    prepared = prepare(document(), "http://h.example")
    assert prepared.full.etag != prepared.abbreviated.etag


def test_put_then_get() -> None:
    """A document put with a valid ticket is returned by get for that name and base URL."""
    cache = PreparedCache(lambda: 1000)
    prepared = entry(100)
    cache.put("a", "http://h.example", prepared, LoadTicket("a"))
    assert cache.get("a", "http://h.example") is prepared
    assert cache.get("a", "http://other.example") is None
    assert cache.bytes_held == 100


def test_least_recently_used_is_evicted_to_stay_in_budget() -> None:
    """Going over budget evicts the entry least recently got or put."""
    cache = PreparedCache(lambda: 300)
    for name in "abc":
        cache.put(name, "u", entry(100), LoadTicket(name))
    cache.get("a", "u")
    cache.put("d", "u", entry(100), LoadTicket("d"))
    assert [cache.get(n, "u") is not None for n in "abcd"] == [True, False, True, True]
    assert cache.bytes_held == 300


def test_large_put_evicts_several_entries() -> None:
    """A put larger than the room left evicts as many old entries as needed."""
    cache = PreparedCache(lambda: 300)
    for name in "abc":
        cache.put(name, "u", entry(100), LoadTicket(name))
    cache.put("big", "u", entry(250), LoadTicket("big"))
    assert [cache.get(n, "u") is not None for n in ("a", "b", "c", "big")] == [False, False, False, True]
    assert cache.bytes_held == 250


def test_oversized_entry_is_not_kept() -> None:
    """An entry larger than the whole budget is not cached and evicts nothing."""
    cache = PreparedCache(lambda: 300)
    cache.put("a", "u", entry(100), LoadTicket("a"))
    cache.put("huge", "u", entry(301), LoadTicket("huge"))
    assert cache.get("huge", "u") is None
    assert cache.get("a", "u") is not None
    assert cache.bytes_held == 100


def test_replacing_an_entry_counts_bytes_once() -> None:
    """Putting the same key again replaces the entry and its byte count."""
    cache = PreparedCache(lambda: 1000)
    cache.put("a", "u", entry(100), LoadTicket("a"))
    cache.put("a", "u", entry(40), LoadTicket("a"))
    assert cache.bytes_held == 40


def test_budget_is_read_on_each_put() -> None:
    """A smaller budget set at runtime is enforced at the next put."""
    budget = [1000]
    cache = PreparedCache(lambda: budget[0])
    cache.put("a", "u", entry(400), LoadTicket("a"))
    cache.put("b", "u", entry(400), LoadTicket("b"))
    budget[0] = 500
    cache.put("c", "u", entry(50), LoadTicket("c"))
    assert (cache.get("a", "u"), cache.bytes_held) == (None, 450)


def test_invalidate_drops_every_base_url_of_a_name() -> None:
    """invalidate forgets the name under all base URLs and keeps other names."""
    cache = PreparedCache(lambda: 1000)
    for base in ("http://a.example", "https://b.example/npm"):
        cache.put("pkg", base, entry(100), LoadTicket("pkg"))
    cache.put("other", "http://a.example", entry(100), LoadTicket("other"))
    cache.invalidate("pkg")
    assert cache.get("pkg", "http://a.example") is None and cache.get("pkg", "https://b.example/npm") is None
    assert cache.get("other", "http://a.example") is not None
    assert cache.bytes_held == 100


def test_put_after_invalidate_during_load_is_ignored() -> None:
    """A document loaded before an invalidate is not cached after it."""
    cache = PreparedCache(lambda: 1000)
    with cache.loading("pkg") as ticket:
        cache.invalidate("pkg")
        cache.put("pkg", "u", entry(100), ticket)
    assert cache.get("pkg", "u") is None
    assert cache.bytes_held == 0


def test_invalidating_another_name_keeps_the_load_valid() -> None:
    """Only loads of the invalidated name are voided."""
    cache = PreparedCache(lambda: 1000)
    with cache.loading("pkg") as ticket:
        cache.invalidate("other")
        cache.put("pkg", "u", entry(100), ticket)
    assert cache.get("pkg", "u") is not None


def test_load_after_invalidate_is_kept() -> None:
    """A document loaded after the invalidate is cached."""
    cache = PreparedCache(lambda: 1000)
    cache.invalidate("pkg")
    with cache.loading("pkg") as ticket:
        cache.put("pkg", "u", entry(100), ticket)
    assert cache.get("pkg", "u") is not None


def test_touch_updates_freshness_of_every_base_url() -> None:
    """touch() records the upstream confirmation on all entries of a name."""
    cache = PreparedCache(lambda: 1000)
    for base in ("http://a.example", "http://b.example"):
        cache.put("pkg", base, entry(100), LoadTicket("pkg"))
    cache.touch("pkg", 123.0, '"e2"')
    both = (cache.get("pkg", "http://a.example"), cache.get("pkg", "http://b.example"))
    assert {(e.fetched_at, e.etag) for e in both} == {(123.0, '"e2"')}


def test_invalidate_keeps_the_changing_load_valid() -> None:
    """The load that stored a new document may cache it; other loads of the name may not."""
    cache = PreparedCache(lambda: 1000)
    with cache.loading("pkg") as changer, cache.loading("pkg") as other:
        cache.invalidate("pkg", keep=changer)
        assert changer.valid and not other.valid
