"""The fake upstream registry itself: documents, tarballs, faults and changes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import socket
import tarfile
import time
from typing import Iterator

import pytest

from tests.upstream import FakeUpstream

CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream for the module, with a small big-package to keep start-up quick."""
    with FakeUpstream(extra_args=("--big-versions", "600")) as fake:
        yield fake


@pytest.fixture(autouse=True)
def clean(upstream: FakeUpstream) -> Iterator[None]:
    """Every test starts without a fault and with zeroed counters."""
    upstream.fault("none")
    upstream.reset()
    yield
    upstream.fault("none")


def get(upstream: FakeUpstream, path: str, headers: dict | None = None, method: str = "GET",
        body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def path_of(url: str, upstream: FakeUpstream) -> str:
    """The path of a URL the fake served, checking it points back at the fake."""
    assert url.startswith(upstream.url), url
    return "/" + url[len(upstream.url):]


def integrity(data: bytes) -> str:
    """The sha512 integrity string of some bytes."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_packument_names_the_fake_and_its_tarballs_verify(upstream: FakeUpstream) -> None:
    """A packument has {{UPSTREAM}} replaced by the fake's URL, and its tarball URLs serve verified bytes."""
    status, headers, body = get(upstream, "/express", {"Accept": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert b"{{UPSTREAM}}" not in body
    doc = json.loads(body)
    dist = doc["versions"][doc["dist-tags"]["latest"]]["dist"]
    status, headers, data = get(upstream, path_of(dist["tarball"], upstream))
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert int(headers["content-length"]) == len(data) and integrity(data) == dist["integrity"]


@pytest.mark.parametrize("path", ["/@babel%2fparser", "/@babel%2Fparser", "/@babel/parser", "/%40babel%2fparser"])
def test_scoped_name_spellings(upstream: FakeUpstream, path: str) -> None:
    """Every spelling of a scoped name serves the same document, and its scoped tarball URL works."""
    status, _, body = get(upstream, path)
    assert status == 200 and body == get(upstream, "/@babel/parser")[2]
    tarball = json.loads(body)["versions"]["8.1.2"]["dist"]["tarball"]
    assert path_of(tarball, upstream) == "/@babel/parser/-/parser-8.1.2.tgz"
    assert get(upstream, "/@babel/parser/-/parser-8.1.2.tgz")[0] == 200


def test_unknown_name_is_404(upstream: FakeUpstream) -> None:
    """A name that was never recorded is a JSON 404."""
    status, _, body = get(upstream, "/no-such-package-here")
    assert (status, json.loads(body)) == (404, {"error": "Not found"})


def test_if_none_match_gives_304(upstream: FakeUpstream) -> None:
    """Revalidating with the ETag served gets an empty 304."""
    _, headers, _ = get(upstream, "/debug")
    assert headers["etag"].startswith('"') and "last-modified" in headers
    status, _, body = get(upstream, "/debug", {"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    assert get(upstream, "/debug", {"If-None-Match": '"other"'})[0] == 200


def test_if_modified_since_gives_304(upstream: FakeUpstream) -> None:
    """Without If-None-Match, a Last-Modified date sent back gets a 304."""
    _, headers, _ = get(upstream, "/debug")
    assert get(upstream, "/debug", {"If-Modified-Since": headers["last-modified"]})[0] == 304
    assert get(upstream, "/debug", {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})[0] == 200


def test_abbreviated_document(upstream: FakeUpstream) -> None:
    """The corgi Accept header gets the abbreviated form, with its own ETag and only install fields."""
    _, full_headers, full = get(upstream, "/eslint")
    status, headers, body = get(upstream, "/eslint", {"Accept": CORGI})
    assert status == 200 and headers["content-type"] == "application/vnd.npm.install-v1+json"
    assert headers["etag"] != full_headers["etag"] and len(body) < len(full)
    doc = json.loads(body)
    assert set(doc) == {"name", "modified", "dist-tags", "versions"}
    manifest = doc["versions"][doc["dist-tags"]["latest"]]
    assert manifest["bin"] and "dist" in manifest and "scripts" not in manifest and "_id" not in manifest


def test_tarball_head(upstream: FakeUpstream) -> None:
    """HEAD on a tarball gives its exact length and no body."""
    status, headers, body = get(upstream, "/ms/-/ms-2.1.3.tgz", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(get(upstream, "/ms/-/ms-2.1.3.tgz")[2])


def test_audit_endpoints_accept_gzip(upstream: FakeUpstream) -> None:
    """npm's gzipped bulk advisory request gets {}; the older audit routes an empty report."""
    bulk = gzip.compress(json.dumps({"ms": ["2.1.3"]}).encode())
    status, _, body = get(upstream, "/-/npm/v1/security/advisories/bulk", {"Content-Encoding": "gzip"},
                          "POST", bulk)
    assert (status, json.loads(body)) == (200, {})
    status, _, body = get(upstream, "/-/npm/v1/security/audits/quick", {}, "POST", b"{}")
    assert status == 200 and json.loads(body)["metadata"]["vulnerabilities"]["critical"] == 0


def test_stats_count_connections_and_requests(upstream: FakeUpstream) -> None:
    """/stats counts connections and lists requests by decoded path; reset zeroes them."""
    get(upstream, "/@babel%2fparser")
    get(upstream, "/ms")
    stats = upstream.stats()
    assert stats["connections"] == 2 and stats["requests"] == [["GET", "/@babel/parser"], ["GET", "/ms"]]
    upstream.reset()
    assert upstream.stats()["connections"] == 0 and upstream.stats()["requests"] == []


def test_refused_then_none_listens_again_on_the_same_port(upstream: FakeUpstream) -> None:
    """refused closes the registry port; none opens the same port again."""
    upstream.fault("refused")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", upstream.port), timeout=2).close()
    upstream.fault("none")
    assert get(upstream, "/ms")[0] == 200


def test_blackhole_accepts_and_never_answers(upstream: FakeUpstream) -> None:
    """blackhole reads the request, counts the connection, and leaves the client waiting."""
    upstream.fault("blackhole")
    with pytest.raises(TimeoutError):
        get(upstream, "/ms", timeout=0.5)
    stats = upstream.stats()
    assert stats["connections"] == 1 and stats["requests"] == [["GET", "/ms"]]


def test_slow_delays_answers(upstream: FakeUpstream) -> None:
    """slow answers correctly, but only after the delay."""
    upstream.fault("slow", delay=0.4)
    start = time.monotonic()
    assert get(upstream, "/ms")[0] == 200
    assert time.monotonic() - start >= 0.4


@pytest.mark.parametrize("mode", ["500", "404"])
def test_error_modes(upstream: FakeUpstream, mode: str) -> None:
    """500 and 404 modes answer every registry request with that status and a JSON error."""
    upstream.fault(mode)
    for path in ("/ms", "/ms/-/ms-2.1.3.tgz"):
        status, _, body = get(upstream, path)
        assert status == int(mode) and "error" in json.loads(body)


def test_corrupt_flips_bytes_keeping_length(upstream: FakeUpstream) -> None:
    """corrupt tarballs have the right length but fail their integrity check."""
    good = get(upstream, "/ms/-/ms-2.1.3.tgz")[2]
    upstream.fault("corrupt")
    status, headers, bad = get(upstream, "/ms/-/ms-2.1.3.tgz")
    assert status == 200 and len(bad) == len(good) == int(headers["content-length"]) and bad != good


def test_truncated_drops_the_connection_halfway(upstream: FakeUpstream) -> None:
    """truncated promises the full length, sends half, then closes: the client sees IncompleteRead."""
    upstream.fault("truncated")
    with pytest.raises(http.client.IncompleteRead) as caught:
        get(upstream, "/ms/-/ms-2.1.3.tgz")
    assert len(caught.value.partial) > 0
    assert get(upstream, "/ms")[0] == 200  # documents are not truncated


def test_paths_limit_a_fault(upstream: FakeUpstream) -> None:
    """A fault with paths applies only to requests under those paths."""
    upstream.fault("500", paths=["/debug"])
    assert get(upstream, "/debug")[0] == 500
    assert get(upstream, "/debug/-/debug-4.4.3.tgz")[0] == 500
    assert get(upstream, "/ms")[0] == 200


def test_none_restores_normal_service(upstream: FakeUpstream) -> None:
    """After any fault, none serves normally again."""
    good = get(upstream, "/ms/-/ms-2.1.3.tgz")[2]
    for mode in ("corrupt", "404", "blackhole"):
        upstream.fault(mode)
    upstream.fault("none")
    assert get(upstream, "/ms/-/ms-2.1.3.tgz")[2] == good


def test_change_publishes_a_new_latest(upstream: FakeUpstream) -> None:
    """change adds a new latest version (installable from the old tarball) and changes the ETag."""
    _, before_headers, before = get(upstream, "/semver")
    changed = upstream.change("semver")
    _, headers, body = get(upstream, "/semver")
    doc = json.loads(body)
    assert changed["version"] == "7.8.1007" and doc["dist-tags"]["latest"] == "7.8.1007"
    assert headers["etag"] != before_headers["etag"] and doc["time"]["modified"] == changed["modified"]
    assert get(upstream, "/semver", {"If-None-Match": before_headers["etag"]})[0] == 200
    assert get(upstream, path_of(doc["versions"]["7.8.1007"]["dist"]["tarball"], upstream))[0] == 200
    assert len(json.loads(before)["versions"]) + 1 == len(doc["versions"])


def test_big_package_is_big_and_its_tarballs_verify(upstream: FakeUpstream) -> None:
    """big-package's abbreviated document is over 200 KB and its tarballs match their integrity."""
    status, _, body = get(upstream, "/big-package", {"Accept": CORGI})
    doc = json.loads(body)
    assert status == 200 and len(body) > 200_000 and len(doc["versions"]) == 600
    for version in ("0.0.0", "3.1.4", doc["dist-tags"]["latest"]):
        dist = doc["versions"][version]["dist"]
        data = get(upstream, path_of(dist["tarball"], upstream))[2]
        assert integrity(data) == dist["integrity"] and hashlib.sha1(data).hexdigest() == dist["shasum"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert json.load(tar.extractfile("package/package.json"))["version"] == version


def test_huge_tarball_is_streamed_at_the_exact_size() -> None:
    """huge-tarball-package's tarball has exactly --huge-size bytes, matches its integrity and unpacks."""
    with FakeUpstream(extra_args=("--huge-size", "300000")) as fake:
        doc = json.loads(get(fake, "/huge-tarball-package")[2])
        dist = doc["versions"]["1.0.0"]["dist"]
        status, headers, data = get(fake, path_of(dist["tarball"], fake))
    assert status == 200 and len(data) == int(headers["content-length"]) == 300_000
    assert integrity(data) == dist["integrity"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {member.name for member in tar} == {"package/package.json", "package/blob.bin"}
