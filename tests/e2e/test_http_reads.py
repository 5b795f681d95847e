"""Reads over HTTP from a real nopard: forms, encodings, ETags, names, tarballs, base URLs."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator

import pytest

from tests.support import NopardServer, publish_body, tarball_bytes

ABBREVIATED = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NopardServer]:
    server = NopardServer(tmp_path_factory.mktemp("reads"))
    server.start()
    token = server.token("alice", "pw-alice")
    body = publish_body("@acme/lib", "1.0.0", scripts={"postinstall": "node x.js"},
                        dependencies={"left": "^1.0.0"})
    assert server.request("PUT", "/@acme%2flib", body, token=token).status == 201
    assert server.request("PUT", "/plain", publish_body("plain", "0.1.0"), token=token).status == 201
    yield server
    server.stop()


def test_full_document_has_registry_fields(server: NopardServer) -> None:
    """GET /<pkg> without Accept gives the full document with npm's fields."""
    answer = server.request("GET", "/@acme%2flib")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document["_id"] == document["name"] == "@acme/lib"
    assert document["_rev"].startswith("1-")
    assert document["readme"] == "# @acme/lib"
    assert document["versions"]["1.0.0"]["_id"] == "@acme/lib@1.0.0"
    assert document["versions"]["1.0.0"]["_npmUser"] == {"name": "alice", "email": "x@example.com"}
    assert "readme" not in document["versions"]["1.0.0"]
    assert document["maintainers"] == [{"name": "alice", "email": "x@example.com"}]


def test_abbreviated_document_when_accept_asks(server: NopardServer) -> None:
    """npm install's Accept header gets the abbreviated form, with hasInstallScript."""
    answer = server.request("GET", "/@acme%2flib", headers={"Accept": ABBREVIATED})
    assert answer.headers["content-type"] == "application/vnd.npm.install-v1+json"
    document = answer.json()
    assert set(document) == {"name", "modified", "dist-tags", "versions", "time"}
    version = document["versions"]["1.0.0"]
    assert version["hasInstallScript"] is True
    assert version["dependencies"] == {"left": "^1.0.0"}
    assert "scripts" not in version and "_npmUser" not in version


def test_every_scoped_spelling_names_the_same_package(server: NopardServer) -> None:
    """%2f, %2F, a literal slash and %40 all reach the scoped package."""
    bodies = {server.request("GET", path).body for path in
              ("/@acme%2flib", "/@acme%2Flib", "/@acme/lib", "/%40acme%2flib", "/%40acme/lib")}
    assert len(bodies) == 1


def test_gzip_when_accepted_identical_document(server: NopardServer) -> None:
    """Accept-Encoding: gzip gets gzipped bytes of the same document."""
    plain = server.request("GET", "/plain")
    zipped = server.request("GET", "/plain", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain.body
    assert int(zipped.headers["content-length"]) == len(zipped.body)


def test_if_none_match_gets_304(server: NopardServer) -> None:
    """A request carrying the current ETag gets 304 and no body."""
    first = server.request("GET", "/plain", headers={"Accept": ABBREVIATED})
    again = server.request("GET", "/plain", headers={"Accept": ABBREVIATED, "If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b""
    other_form = server.request("GET", "/plain", headers={"If-None-Match": first.headers["etag"]})
    assert other_form.status == 200


def test_documents_say_how_to_cache_them(server: NopardServer) -> None:
    """Documents carry Vary and an explicit Cache-Control."""
    answer = server.request("GET", "/plain")
    assert answer.headers["vary"] == "Accept, Accept-Encoding"
    assert answer.headers["cache-control"] == "private, no-cache"


def test_version_and_tag_routes(server: NopardServer) -> None:
    """GET /<pkg>/<version> and /<pkg>/<tag> give the manifest; others 404."""
    by_version = server.request("GET", "/@acme/lib/1.0.0").json()
    by_tag = server.request("GET", "/@acme%2flib/latest").json()
    assert by_version == by_tag and by_version["version"] == "1.0.0"
    missing = server.request("GET", "/plain/9.9.9")
    assert missing.status == 404 and "plain@9.9.9" in missing.json()["error"]


def test_tarball_bytes_with_exact_length_and_no_encoding(server: NopardServer) -> None:
    """GET and HEAD of a tarball: exact Content-Length, no Content-Encoding, right bytes."""
    data = tarball_bytes("@acme/lib", "1.0.0")
    for path in ("/@acme/lib/-/lib-1.0.0.tgz", "/@acme%2flib/-/lib-1.0.0.tgz"):
        answer = server.request("GET", path, headers={"Accept-Encoding": "gzip"})
        assert answer.status == 200
        assert hashlib.sha1(answer.body).hexdigest() == hashlib.sha1(data).hexdigest()
        assert answer.headers["content-length"] == str(len(data))
        assert "content-encoding" not in answer.headers
    head = server.request("HEAD", "/plain/-/plain-0.1.0.tgz")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(tarball_bytes("plain", "0.1.0")))


def test_missing_things_are_404_json(server: NopardServer) -> None:
    """Unknown packages, tarballs and routes answer 404 with a JSON error."""
    for path in ("/nothing-here", "/plain/-/plain-9.0.0.tgz", "/-/no-such-route", "/@acme/none/1.0.0"):
        answer = server.request("GET", path)
        assert answer.status == 404, path
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]


def test_ping(server: NopardServer) -> None:
    """GET /-/ping answers 200 with a JSON body."""
    answer = server.request("GET", "/-/ping")
    assert answer.status == 200 and answer.json() == {}


def test_tarball_urls_follow_host_and_forwarded_headers(server: NopardServer) -> None:
    """Without NOPARD_BASE_URL, tarball URLs use X-Forwarded-Proto/-Host, else Host."""
    def tarball(headers: dict[str, str]) -> str:
        return server.request("GET", "/plain", headers=headers).json()["versions"]["0.1.0"]["dist"]["tarball"]

    assert tarball({"Host": "npm.corp.example:8080"}) == "http://npm.corp.example:8080/plain/-/plain-0.1.0.tgz"
    assert tarball({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example"}) == \
        "https://registry.example/plain/-/plain-0.1.0.tgz"
    assert tarball({"Host": "bad host/evil"}).startswith("http://127.0.0.1:")


def test_base_url_setting_and_always_https(start_nopard) -> None:
    """NOPARD_BASE_URL (with a path prefix) wins over headers; ALWAYS_HTTPS forces https."""
    server = start_nopard({"NOPARD_BASE_URL": "http://npm.example/registry/", "NOPARD_ALWAYS_HTTPS": "yes"})
    token = server.token("alice", "pw")
    assert server.request("PUT", "/plain", publish_body("plain", "1.0.0"), token=token).status == 201
    document = server.request("GET", "/plain", headers={"Host": "other.example"}).json()
    assert document["versions"]["1.0.0"]["dist"]["tarball"] == "https://npm.example/registry/plain/-/plain-1.0.0.tgz"
