"""Writes and errors over HTTP: every bad request gets a 4xx JSON error and writes nothing."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.support import NopardServer, Response, files_under, publish_body, read_reply

SETTINGS = {"NOPARD_MAX_USERS": "3", "NOPARD_MAX_BODY_SIZE": "64kb"}


@pytest.fixture
def server(start_nopard: Callable[..., NopardServer]) -> NopardServer:
    return start_nopard(SETTINGS)


@pytest.fixture
def token(server: NopardServer) -> str:
    return server.token("alice", "pw-alice")


def assert_refused(answer: Response, status: int, text: str = "") -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert text in answer.json()["error"]


@pytest.fixture
def unchanged(server: NopardServer, token: str) -> Iterator[None]:
    """Asserts, after the test, that the registry directory did not change."""
    before = files_under(server.registry)
    yield
    assert files_under(server.registry) == before


def corrupt(body: dict, change: Callable[[dict, dict], None]) -> dict:
    body = copy.deepcopy(body)
    version = next(iter(body["versions"].values()))
    attachment = next(iter(body["_attachments"].values()))
    change(version, attachment)
    return body


@pytest.mark.usefixtures("unchanged")
class TestRejectedWritesChangeNothing:
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NopardServer]:
        """One nopard for the whole class: a refused write leaves the registry as it was (``unchanged``
        asserts it after each test), so the next test starts from what a fresh one would see."""
        server = NopardServer(tmp_path_factory.mktemp("refused"), SETTINGS).start()
        yield server
        server.stop()

    def test_malformed_json(self, server: NopardServer, token: str) -> None:
        """A body that is not JSON: 400."""
        assert_refused(server.request("PUT", "/pkg", b'{"name": "pkg",', token=token), 400, "not valid JSON")

    def test_publish_without_credentials(self, server: NopardServer) -> None:
        """Anonymous publish: 401 with WWW-Authenticate."""
        answer = server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"))
        assert_refused(answer, 401, "log in")
        assert answer.headers["www-authenticate"].startswith("Basic")

    def test_publish_with_a_revoked_or_made_up_token(self, server: NopardServer) -> None:
        """An unknown Bearer token: 401 that says Bearer."""
        answer = server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token="npd_" + "x" * 43)
        assert_refused(answer, 401, "token")
        assert answer.headers["www-authenticate"].startswith("Bearer")

    def test_publish_with_wrong_basic_password(self, server: NopardServer) -> None:
        """Basic credentials with a wrong password: 401."""
        basic = base64.b64encode(b"alice:nope").decode()
        answer = server.request(
            "PUT", "/pkg", publish_body("pkg", "1.0.0"), headers={"Authorization": f"Basic {basic}"})
        assert_refused(answer, 401, "incorrect")

    @pytest.mark.parametrize("change, message", [
        (lambda v, a: v["dist"].update(integrity="sha512-" + base64.b64encode(b"x" * 64).decode()), "sha512"),
        (lambda v, a: v["dist"].update(shasum="0" * 40), "sha1"),
        (lambda v, a: a.update(length=a["length"] + 1), "length"),
        (lambda v, a: a.update(data="!!not base64!!"), "base64"),
        (lambda v, a: v.update(name="other"), "another package"),
        (lambda v, a: v.pop("dist"), "dist.integrity"),
    ])
    def test_tarball_that_does_not_match_its_manifest(self, server: NopardServer, token: str, change, message) -> None:
        """Attachments are checked (length, sha1, sha512, base64) before anything is stored: 400."""
        body = corrupt(publish_body("pkg", "1.0.0"), change)
        assert_refused(server.request("PUT", "/pkg", body, token=token), 400, message)

    @pytest.mark.parametrize("body", [
        [], "text", 42, {}, {"name": "pkg"}, {"name": "pkg", "versions": "x", "_attachments": {}},
        {"name": "pkg", "versions": {"1.0.0": "x"}, "_attachments": {"pkg-1.0.0.tgz": 1}},
        {"name": "pkg", "versions": {"not-semver": {}}, "_attachments": {"x": {}}},
        {"name": "other", "versions": {}, "_attachments": {}},
    ])
    def test_bodies_of_the_wrong_shape(self, server: NopardServer, token: str, body) -> None:
        """Odd JSON bodies on the publish route are 400, never 500."""
        answer = server.request("PUT", "/pkg", json.dumps(body), token=token)
        assert_refused(answer, 400)

    def test_bad_dist_tag(self, server: NopardServer, token: str) -> None:
        """A dist-tag that reads as a version range is refused."""
        answer = server.request("PUT", "/pkg", publish_body("pkg", "1.0.0", tag="1.x"), token=token)
        assert_refused(answer, 400, "range")

    @pytest.mark.parametrize("path", [
        "/..%2f..%2fetc%2fpasswd", "/%2e%2e", "/%2e%2e/%2e%2e/etc", "/.hidden", "/_private",
        "/foo%00bar", "/foo%5cbar", "/" + "a" * 215, "/@scope%2f..", "/@..%2fx", "/%ff%fe",
        "/@scope/x/-/..%2f..%2fhtpasswd", "/pkg/-/pkg-1.0.0.tgz%00",
    ])
    def test_hostile_names_are_refused(self, server: NopardServer, token: str, path: str) -> None:
        """Traversal, NUL, backslash, over-long and invalid names: 400 for reads and writes."""
        assert_refused(server.request("GET", path), 400)
        assert_refused(server.request("PUT", path, publish_body("pkg", "1.0.0"), token=token), 400)

    def test_names_npm_never_accepts_are_refused_saying_why(self, server: NopardServer, token: str) -> None:
        """A leading "_" is 400 with npm's reason (uppercase names publish: tests/e2e/test_legacy_names.py)."""
        assert_refused(server.request("PUT", "/_x", publish_body("_x", "1.0.0"), token=token), 400, "underscore")

    def test_oversized_body_is_refused_before_it_is_sent(self, server: NopardServer, token: str) -> None:
        """A Content-Length over NOPARD_MAX_BODY_SIZE gets 413 before a byte of body is sent."""
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"PUT /pkg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
            )
            reply = read_reply(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413")
        assert "NOPARD_MAX_BODY_SIZE" in json.loads(body)["error"]

    def test_oversized_chunked_body_is_cut_off(self, server: NopardServer, token: str) -> None:
        """A chunked body that grows past the limit gets 413 and the connection closes."""
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"PUT /pkg HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 16384
            try:
                for _ in range(10):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the server closed the connection: what is being tested
            reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 413")

    def test_owner_change_that_drops_every_maintainer(self, server: NopardServer, token: str) -> None:
        """A PUT of an empty maintainers list is refused with a clear error (never read as a deletion)."""
        answer = server.request("PUT", "/pkg", {"_id": "pkg", "_rev": "1-x", "maintainers": []}, token=token)
        assert_refused(answer, 400, "at least one maintainer")


def test_existing_version_is_refused_and_kept(server: NopardServer, token: str) -> None:
    """Publishing an existing version again: 403, and the stored tarball is unchanged."""
    assert server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    before = server.request("GET", "/pkg/-/pkg-1.0.0.tgz").body
    answer = server.request("PUT", "/pkg", publish_body("pkg", "1.0.0", data=b"other bytes"), token=token)
    assert_refused(answer, 403, "previously published versions: 1.0.0")
    assert server.request("GET", "/pkg/-/pkg-1.0.0.tgz").body == before


def test_only_maintainers_publish_new_versions(server: NopardServer, token: str) -> None:
    """Another user may not publish a version of alice's package: 403."""
    assert server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token).status == 201
    bob = server.token("bob", "pw-bob")
    answer = server.request("PUT", "/pkg", publish_body("pkg", "1.1.0"), token=bob)
    assert_refused(answer, 403, "not a maintainer")
    assert list(server.request("GET", "/pkg").json()["versions"]) == ["1.0.0"]


def test_gzipped_publish_body_is_accepted(server: NopardServer, token: str) -> None:
    """A body sent with Content-Encoding: gzip is unpacked before it is read."""
    body = gzip.compress(json.dumps(publish_body("zipped", "1.0.0")).encode())
    answer = server.request("PUT", "/zipped", body, token=token,
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert answer.status == 201 and answer.json()["ok"] is True


def test_publish_answer_is_what_clients_parse(server: NopardServer, token: str) -> None:
    """A publish answers 201 {"ok": true, "success": true}."""
    answer = server.request("PUT", "/@acme%2fthing", publish_body("@acme/thing", "1.0.0"), token=token)
    assert answer.status == 201
    assert answer.json()["ok"] is True and answer.json()["success"] is True


def parallel(calls: list[Callable[[], Response]]) -> list[Response]:
    results: list[Response | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results  # type: ignore[return-value]


def test_concurrent_publishes_of_different_versions_all_land(server: NopardServer, token: str) -> None:
    """Eight versions of one package published at once: all eight are in the document."""
    versions = [f"1.0.{n}" for n in range(8)]
    answers = parallel([
        (lambda v=v: server.request("PUT", "/busy", publish_body("busy", v), token=token)) for v in versions
    ])
    assert [a.status for a in answers] == [201] * 8
    document = server.request("GET", "/busy").json()
    assert sorted(document["versions"]) == sorted(versions)
    assert document["_rev"].startswith("8-")
    for version in versions:
        assert server.request("GET", f"/busy/-/busy-{version}.tgz").status == 200


def test_concurrent_publishes_of_one_version_have_one_winner(server: NopardServer, token: str) -> None:
    """Six different tarballs for one version at once: exactly one lands, the rest get 403/409."""
    answers = parallel([
        (lambda n=n: server.request(
            "PUT", "/race", publish_body("race", "1.0.0", data=b"bytes %d" % n * 50), token=token))
        for n in range(6)
    ])
    statuses = sorted(a.status for a in answers)
    assert statuses.count(201) == 1
    assert all(s in (403, 409) for s in statuses if s != 201)
    winner = server.request("GET", "/race").json()["versions"]["1.0.0"]["dist"]["shasum"]
    import hashlib
    assert hashlib.sha1(server.request("GET", "/race/-/race-1.0.0.tgz").body).hexdigest() == winner
