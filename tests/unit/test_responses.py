"""The pure helpers of nopard.web.responses: base URLs, content negotiation, ETags, bodies."""

from __future__ import annotations

import gzip
import io
import tracemalloc

import pytest

from nopard.domain.errors import InvalidInput, PayloadTooLarge
from nopard.web.responses import (
    accepts_gzip,
    etag_matches,
    public_base_url,
    read_json_body,
    wants_abbreviated,
)

NPM_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
ETAG = 'W/"abc123"'


def base(configured: str = "", always_https: bool = False, secure: bool = False,
         host: str | None = None, proto: str | None = None, fwd_host: str | None = None) -> str:
    """public_base_url with keyword defaults; the fallback host is 127.0.0.1:5984."""
    return public_base_url(configured, always_https, secure, host, proto, fwd_host, "127.0.0.1:5984")


# public_base_url --------------------------------------------------------------


def test_configured_base_url_wins() -> None:
    """A configured base URL, path prefix included, beats every header."""
    assert base("https://npm.example.com/prefix", host="h", proto="http", fwd_host="f") == (
        "https://npm.example.com/prefix"
    )


def test_always_https_upgrades_configured_url() -> None:
    """always_https turns a configured http:// URL into https://, keeping host and path."""
    assert base("http://npm.example.com/p", always_https=True) == "https://npm.example.com/p"


def test_always_https_upgrades_derived_url() -> None:
    """always_https turns a URL built from Host into https://."""
    assert base(always_https=True, host="npm.example:8080") == "https://npm.example:8080"


def test_host_header_is_used() -> None:
    """Without a configured URL, the Host header and connection scheme make the base."""
    assert base(host="npm.example:8080") == "http://npm.example:8080"


def test_secure_connection_gives_https() -> None:
    """A TLS connection gives https with no forwarding header."""
    assert base(secure=True, host="npm.example") == "https://npm.example"


def test_forwarded_headers_win_over_host() -> None:
    """X-Forwarded-Proto and X-Forwarded-Host (first values) beat the connection and Host."""
    assert base(host="10.0.0.5:5984", proto="HTTPS, http", fwd_host="npm.example.com, proxy") == (
        "https://npm.example.com"
    )


def test_forwarded_proto_http_downgrades_secure() -> None:
    """X-Forwarded-Proto: http is believed even on a TLS connection."""
    assert base(secure=True, host="h.example", proto="http") == "http://h.example"


def test_unknown_forwarded_proto_is_ignored() -> None:
    """An X-Forwarded-Proto that is not http(s) leaves the connection scheme."""
    assert base(host="h.example", proto="javascript") == "http://h.example"


@pytest.mark.parametrize("host", ["[::1]:5984", "[2001:db8::1]", "a-b.example", "h:65535"])
def test_ipv6_and_plain_hosts_are_accepted(host: str) -> None:
    """Bracketed IPv6 literals and host names with ports are used as given."""
    assert base(host=host) == f"http://{host}"


@pytest.mark.parametrize(
    "host",
    ["evil.com/path", "evil.com?x", "user@evil.com", "a b", "<script>", "evil.com\r\nX: y",
     "h:port", "::1", "", "   ", None],
)
def test_hostile_host_falls_back(host: str | None) -> None:
    """A Host that is not a plain host[:port] is not used: the fallback host is."""
    assert base(host=host) == "http://127.0.0.1:5984"


def test_hostile_forwarded_host_falls_back_to_host() -> None:
    """A malformed X-Forwarded-Host is skipped for the Host header."""
    assert base(host="npm.example", fwd_host="evil.com/x") == "http://npm.example"


# Negotiation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (NPM_ACCEPT, True), ("application/vnd.npm.install-v1+json", True),
        ("APPLICATION/VND.NPM.INSTALL-V1+JSON", True),
        ("application/json", False), ("*/*", False), ("", False), (None, False),
    ],
)
def test_wants_abbreviated(accept: str | None, expected: bool) -> None:
    """Only an Accept naming the npm install type asks for the abbreviated form."""
    assert wants_abbreviated(accept) is expected


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("gzip", True), ("gzip, deflate", True), ("deflate, GZIP", True), ("br;q=1, gzip;q=0.5", True),
        ("*", True), ("gzip;q=0.001", True), ("gzip;q=0", False), ("gzip; q=0.0", False),
        ("gzip;Q=0.000", False), ("deflate, br", False), ("identity", False), ("", False),
        (None, False), ("x-gzip-ish", False),
    ],
)
def test_accepts_gzip(encoding: str | None, expected: bool) -> None:
    """gzip or * is accepted unless refused with q=0."""
    assert accepts_gzip(encoding) is expected


def test_explicit_gzip_outranks_refused_wildcard() -> None:
    """'*;q=0, gzip' accepts gzip: * only covers codings not listed (RFC 9110, 12.5.3)."""
    assert accepts_gzip("*;q=0, gzip") is True


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (ETAG, True), ('"abc123"', True), ("*", True), ('"x", W/"abc123"', True),
        ('W/"x",W/"abc123" , "y"', True), ('W/"abc1234"', False), ('"abc"', False),
        ('W/"x", "y"', False), ("abc123", False), ("", False), (None, False),
    ],
)
def test_etag_matches(header: str | None, expected: bool) -> None:
    """If-None-Match matches by weak comparison, in lists, and with *."""
    assert etag_matches(header, ETAG) is expected


def test_etag_matches_strong_etag_of_ours() -> None:
    """A strong ETag of ours matches its weak form in If-None-Match."""
    assert etag_matches('W/"abc123"', '"abc123"') is True


# read_json_body ---------------------------------------------------------------


def test_reads_plain_json() -> None:
    """An identity body is parsed as JSON, read from the start of the stream."""
    content = io.BytesIO(b'{"a": [1, 2]}')
    content.read()
    assert read_json_body(content, None, 100) == {"a": [1, 2]}


@pytest.mark.parametrize("encoding", ["gzip", " GZIP "])
def test_reads_gzipped_json(encoding: str) -> None:
    """A gzip Content-Encoding body is gunzipped, then parsed."""
    content = io.BytesIO(gzip.compress(b'{"audit": true}'))
    assert read_json_body(content, encoding, 100) == {"audit": True}


def test_identity_encoding_is_plain() -> None:
    """Content-Encoding: identity reads the body as is."""
    assert read_json_body(io.BytesIO(b"[1]"), "identity", 100) == [1]


@pytest.mark.parametrize(
    ("raw", "encoding", "message"),
    [
        (b"not gzip at all", "gzip", "gzip"), (b"", None, "empty"), (gzip.compress(b"", mtime=0), "gzip", "empty"),
        (b"{nope", None, "not valid JSON"), (b"\xff\xfe", None, "not valid JSON"),
        (b"{}", "br", "Content-Encoding"),
    ],
)
def test_bad_bodies_are_invalid_input(raw: bytes, encoding: str | None, message: str) -> None:
    """Bad gzip, empty bodies, invalid JSON and unknown encodings raise InvalidInput."""
    with pytest.raises(InvalidInput, match=message):
        read_json_body(io.BytesIO(raw), encoding, 100)


def test_gzip_bomb_is_payload_too_large() -> None:
    """A small gzip that decompresses beyond the limit raises PayloadTooLarge."""
    bomb = gzip.compress(b'["' + b"a" * 10_000 + b'"]')
    assert len(bomb) < 100
    with pytest.raises(PayloadTooLarge):
        read_json_body(io.BytesIO(bomb), "gzip", 1000)


def test_gzip_exactly_at_the_limit_is_read() -> None:
    """A body decompressing to exactly the limit is accepted."""
    payload = b'"' + b"a" * 98 + b'"'
    assert read_json_body(io.BytesIO(gzip.compress(payload)), "gzip", len(payload)) == "a" * 98


# gzip bodies, decoded strictly ------------------------------------------------


def test_gzip_missing_its_trailer_is_refused() -> None:
    """A member cut before its CRC and length trailer is truncated: 400, not the bytes so far."""
    whole = gzip.compress(b'{"audit": true}')
    for cut in (4, 8):
        with pytest.raises(InvalidInput, match="truncated"):
            read_json_body(io.BytesIO(whole[:-cut]), "gzip", 100)


def test_gzip_with_a_wrong_checksum_is_refused() -> None:
    """A trailer whose CRC does not match the data: 400."""
    whole = bytearray(gzip.compress(b'{"audit": true}'))
    whole[-8] ^= 0xFF
    with pytest.raises(InvalidInput, match="not valid gzip"):
        read_json_body(io.BytesIO(bytes(whole)), "gzip", 100)


def test_gzip_with_bytes_after_its_last_member_is_refused() -> None:
    """Garbage after a complete member is no gzip member: 400."""
    with pytest.raises(InvalidInput, match="not valid gzip"):
        read_json_body(io.BytesIO(gzip.compress(b"[1]") + b"garbage!!"), "gzip", 100)


def test_multi_member_gzip_is_one_body() -> None:
    """Concatenated members (RFC 1952) are inflated one after the other, as gzip -d does."""
    body = gzip.compress(b'{"a": ') + gzip.compress(b"") + gzip.compress(b"[1, 2]}")
    assert read_json_body(io.BytesIO(body), "gzip", 100) == {"a": [1, 2]}


def test_multi_member_gzip_is_bounded_across_its_members() -> None:
    """Members each under the limit but together over it: 413."""
    member = gzip.compress(b" " * 60)
    with pytest.raises(PayloadTooLarge, match="100 bytes"):
        read_json_body(io.BytesIO(member + member + gzip.compress(b"[]")), "gzip", 100)


def test_gzip_members_are_bounded_in_number() -> None:
    """Thousands of empty members (each a new inflater) are refused."""
    body = gzip.compress(b"") * 10_000 + gzip.compress(b"[]")
    with pytest.raises(InvalidInput, match="members"):
        read_json_body(io.BytesIO(body), "gzip", 10**6)


def test_a_gzip_bomb_is_never_inflated_past_the_limit() -> None:
    """A 200 MB bomb against a 1 MB limit: memory allocated while refusing it stays near the limit."""
    bomb = gzip.compress(b"0" * (200 * 1024 * 1024), compresslevel=9)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            read_json_body(io.BytesIO(bomb), "gzip", 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 1024 * 1024 + 2 * len(bomb)
