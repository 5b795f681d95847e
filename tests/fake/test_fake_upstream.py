"""The fake upstream registry itself: documents, tarballs, faults and changes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import re
import socket
import tarfile
from collections.abc import Iterator

import pytest

from tests.fake_documents import small_tarball
from tests.fake_publish import next_version, repack
from tests.upstream import FakeUpstream

CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream for the module, with a small big-package to keep start-up quick."""
    with FakeUpstream(extra_args=("--big-versions", "600", "--synthetic", "12")) as fake:
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
    """slow answers correctly, but only after the delay: a client that waits less gets nothing."""
    upstream.fault("slow", delay=0.4)
    with pytest.raises(TimeoutError):
        get(upstream, "/ms", timeout=0.1)
    assert get(upstream, "/ms")[0] == 200


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


@pytest.fixture
def changed(upstream: FakeUpstream) -> Iterator[list[str]]:
    """Names a test changes upstream; restored afterwards, as the module's other tests expect them."""
    names: list[str] = []
    yield names
    for name in names:
        upstream.restore(name)


def unpacked_version(data: bytes) -> str:
    """The version in a tarball's package.json, wherever its root folder is."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        path = next(m.name for m in tar if m.name.count("/") == 1 and m.name.endswith("/package.json"))
        return json.load(tar.extractfile(path))["version"]


def test_change_publishes_a_new_version_with_its_own_tarball(upstream: FakeUpstream, changed: list[str]) -> None:
    """change adds patch + 1 as latest, with a new tarball served at its URL that says the new version."""
    before_headers = get(upstream, "/semver")[1]
    changed.append("semver")
    published = upstream.change("semver")
    _, headers, body = get(upstream, "/semver")
    doc = json.loads(body)
    assert published["version"] == doc["dist-tags"]["latest"] == "7.8.7" and "7.8.6" in doc["versions"]
    assert headers["etag"] != before_headers["etag"] and headers["last-modified"] != before_headers["last-modified"]
    assert get(upstream, "/semver", {"If-None-Match": before_headers["etag"]})[0] == 200
    assert doc["time"]["modified"] == doc["time"]["7.8.7"] == published["modified"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", published["modified"])
    manifest = doc["versions"]["7.8.7"]
    assert manifest["_id"] == "semver@7.8.7" and manifest["name"] == "semver"
    dist = manifest["dist"]
    assert published["tarball"] == path_of(dist["tarball"], upstream) == "/semver/-/semver-7.8.7.tgz"
    status, tarball_headers, data = get(upstream, published["tarball"])
    assert status == 200 and int(tarball_headers["content-length"]) == len(data)
    assert data != get(upstream, "/semver/-/semver-7.8.6.tgz")[2]
    assert integrity(data) == dist["integrity"] == published["integrity"]
    assert hashlib.sha1(data).hexdigest() == dist["shasum"] == published["shasum"]
    assert unpacked_version(data) == "7.8.7"
    status, head_headers, empty = get(upstream, published["tarball"], method="HEAD")
    assert (status, empty, int(head_headers["content-length"])) == (200, b"", len(data))
    abbreviated = json.loads(get(upstream, "/semver", {"Accept": CORGI})[2])
    assert abbreviated["dist-tags"]["latest"] == "7.8.7" and abbreviated["versions"]["7.8.7"]["dist"] == dist


def test_changes_stack_and_restore_brings_back_the_recorded_document(upstream: FakeUpstream,
                                                                      changed: list[str]) -> None:
    """A second change goes one patch higher from the first; restore drops both, reset does not."""
    _, before_headers, before = get(upstream, "/debug")
    changed.append("debug")
    first, second = upstream.change("debug"), upstream.change("debug")
    assert second["version"].split(".")[:2] == first["version"].split(".")[:2]
    assert int(second["version"].split(".")[2]) == int(first["version"].split(".")[2]) + 1
    assert second["modified"] > first["modified"] and second["shasum"] != first["shasum"]
    assert unpacked_version(get(upstream, second["tarball"])[2]) == second["version"]
    upstream.reset()
    assert json.loads(get(upstream, "/debug")[2])["dist-tags"]["latest"] == second["version"]
    assert upstream.restore("debug") == {"name": "debug", "latest": json.loads(before)["dist-tags"]["latest"]}
    _, headers, body = get(upstream, "/debug")
    assert body == before and headers["etag"] == before_headers["etag"]
    assert headers["last-modified"] == before_headers["last-modified"]
    assert get(upstream, first["tarball"])[0] == get(upstream, second["tarball"])[0] == 404
    assert upstream.restore("debug")["latest"] == json.loads(before)["dist-tags"]["latest"]  # a no-op now


@pytest.mark.parametrize("name", ["@babel/parser", "cookie", "busboy", "big-package", "synthetic-00001"])
def test_change_works_for_any_package(upstream: FakeUpstream, changed: list[str], name: str) -> None:
    """Scoped names, a latest whose tarball was not recorded, a tarball whose root is not package/,
    and the synthetic packages: each gets a served tarball that verifies and says its version."""
    changed.append(name)
    published = upstream.change(name)
    doc = json.loads(get(upstream, "/" + name)[2])
    dist = doc["versions"][published["version"]]["dist"]
    assert path_of(dist["tarball"], upstream) == published["tarball"]
    assert published["tarball"] == f"/{name}/-/{name.split('/')[-1]}-{published['version']}.tgz"
    assert "signatures" not in dist and "attestations" not in dist
    data = get(upstream, published["tarball"])[2]
    assert integrity(data) == dist["integrity"] and hashlib.sha1(data).hexdigest() == dist["shasum"]
    assert unpacked_version(data) == published["version"]


def test_change_and_restore_of_an_unknown_name_are_404(upstream: FakeUpstream) -> None:
    """The control port answers 404 for a name the fake does not serve."""
    for command in (upstream.change, upstream.restore):
        with pytest.raises(RuntimeError, match="404"):
            command("no-such-package-here")


def test_next_version_skips_taken_ones_and_repack_is_deterministic() -> None:
    """The new version is above latest even when the next patch exists; packing twice gives the same bytes."""
    doc = {"dist-tags": {"latest": "1.2.3-beta.1"}, "versions": {"1.2.4": {}, "1.2.5": {}}}
    assert next_version(doc) == "1.2.6"
    original = small_tarball("demo", "1.0.0")
    first, second = repack(original, "1.0.1"), repack(original, "1.0.1")
    assert first == second and first[1] == 2 and unpacked_version(first[0]) == "1.0.1"


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


def test_synthetic_packages_are_served_and_their_tarballs_verify(upstream: FakeUpstream) -> None:
    """--synthetic 12 serves synthetic-00000 to synthetic-00011: three versions, latest 2.0.0,
    revalidated with 304s, tarballs that match their integrity and unpack to their version."""
    status, headers, body = get(upstream, "/synthetic-00011")
    doc = json.loads(body)
    assert status == 200 and doc["name"] == "synthetic-00011" and b"{{UPSTREAM}}" not in body
    assert list(doc["versions"]) == ["1.0.0", "1.1.0", "2.0.0"] and doc["dist-tags"] == {"latest": "2.0.0"}
    assert get(upstream, "/synthetic-00011")[2] == body  # generated once, deterministic
    status, _, empty = get(upstream, "/synthetic-00011", {"If-None-Match": headers["etag"]})
    assert (status, empty) == (304, b"")
    assert get(upstream, "/synthetic-00011", {"If-Modified-Since": headers["last-modified"]})[0] == 304
    status, headers, short = get(upstream, "/synthetic-00011", {"Accept": CORGI})
    assert status == 200 and headers["content-type"] == "application/vnd.npm.install-v1+json"
    assert json.loads(short)["versions"]["2.0.0"]["dist"] == doc["versions"]["2.0.0"]["dist"]
    for version, manifest in doc["versions"].items():
        dist = manifest["dist"]
        assert path_of(dist["tarball"], upstream) == f"/synthetic-00011/-/synthetic-00011-{version}.tgz"
        status, headers, data = get(upstream, path_of(dist["tarball"], upstream))
        assert status == 200 and int(headers["content-length"]) == len(data)
        assert integrity(data) == dist["integrity"] and hashlib.sha1(data).hexdigest() == dist["shasum"]
        assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert tar.getnames() == ["package/package.json"]
        assert unpacked_version(data) == version
    assert get(upstream, "/synthetic-00000")[0] == 200


@pytest.mark.parametrize("path", ["/synthetic-00012", "/synthetic-0001", "/synthetic-000001",
                                  "/synthetic-00012/-/synthetic-00012-2.0.0.tgz",
                                  "/synthetic-00003/-/synthetic-00003-3.0.0.tgz"])
def test_unknown_synthetic_names_and_tarballs_are_404(upstream: FakeUpstream, path: str) -> None:
    """An index past --synthetic, a different zero-padding, or a version not generated: 404."""
    assert get(upstream, path)[0] == 404
