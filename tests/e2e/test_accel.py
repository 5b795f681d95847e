"""NOPARD_ACCEL_REDIRECT behind the shipped deploy/nginx/nopard.conf (a real nginx): nopard
decides who may have a tarball and names its file; nginx sends the bytes, and with
NOPARD_ACCEL_CACHE_TTL reuses nopard's yes for the same URL and credentials. One nopard and
one nginx for the module.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator

import pytest

from tests.nginx_server import NginxServer
from tests.support import NopardServer, Npm, make_package, publish_directory
from tests.upstream import FakeUpstream

RULES = """
[[packages]]
pattern = "secret-*"
access = ["alice"]
publish = ["alice"]

[[packages]]
pattern = "**"
access = ["$all"]
publish = ["$authenticated"]
proxy = ["$all"]
"""
LOCAL = "/internal-util/-/internal-util-1.2.0.tgz"
MIRRORED = "/ms/-/ms-2.1.3.tgz"
SCOPED = "/@acme/lib/-/lib-1.0.0.tgz"  # npm asks for the tarball URL as served: an unescaped slash
HIDDEN = "/secret-thing/-/secret-thing-1.0.0.tgz"
# nopard's access line: "... INFO access ... method=GET path=<path> status=<status> bytes=<sent> ..."
NOPARD_ACCESS = re.compile(r" INFO access .*=GET path=(?P<path>\S+) status=(?P<status>\d{3}) bytes=(?P<bytes>\d+) ")
# nginx's default (combined) line of a client's request (the decision cache's, from "unix:", left
# out): 127.0.0.1 ... "GET <path> HTTP/1.1" <status> <body bytes sent> ...
NGINX_ACCESS = re.compile(r'^127\.0\.0\.1 .*"GET (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3}) (?P<bytes>\d+) ')


@pytest.fixture(scope="module")
def world(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """nopard with accel on, mirroring the fake upstream, a local package and a hidden one,
    behind nginx whose internal location aliases nopard's store."""
    upstream.healthy()
    work = tmp_path_factory.mktemp("accel")
    (work / "rules.toml").write_text(RULES)
    server = NopardServer(work / "nopard", {
        "NOPARD_ACCEL_REDIRECT": "/_nopard_store/", "NOPARD_ACCEL_CACHE_TTL": "600",
        "NOPARD_FORWARDER_URL": upstream.url,
        "NOPARD_CONFIG": str(work / "rules.toml"), "NOPARD_MAX_USERS": "5",
    })
    server.start()
    try:
        alice = server.token("alice", "pw-alice")
        lib = make_package(work / "lib", "@acme/lib", "1.0.0")
        util = make_package(work / "util", "internal-util", "1.2.0", dependencies={"ms": "^2.1.3", "@acme/lib": "1"})
        secret = make_package(work / "secret", "secret-thing", "1.0.0")
        for directory in (lib, util, secret):
            answer = publish_directory(server, alice, directory)
            assert answer.status == 201, answer.body
        with NginxServer([server.port], store=server.registry) as nginx:
            yield {"work": work, "server": server, "nginx": nginx, "alice": alice}
    finally:
        server.stop()


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def access(pattern: re.Pattern, text: str, path: str) -> list[tuple[int, int]]:
    """(status, bytes) of every GET of ``path`` in an access log."""
    return [(int(m["status"]), int(m["bytes"])) for m in map(pattern.search, text.splitlines())
            if m and m["path"] == path]


def test_npm_installs_through_nginx_which_sends_the_tarballs(world: dict) -> None:
    """npm installs a local package, a scoped one and a mirrored one through nginx: nopard answers
    each tarball with an empty redirect (its log shows 0 bytes), nginx sends the stored file's
    bytes, and they are the stored ones, with nopard's Content-Type and Cache-Control."""
    server, nginx = world["server"], world["nginx"]
    project = world["work"] / "project"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "p", "version": "1.0.0",
                                                      "dependencies": {"internal-util": "^1.2.0"}}))
    npm = Npm(nginx.url + "/", world["work"] / "npm-home")
    npm.run("install", cwd=project)
    assert json.loads((project / "node_modules" / "internal-util" / "package.json").read_text())["version"] == "1.2.0"
    assert json.loads((project / "node_modules" / "ms" / "package.json").read_text())["version"] == "2.1.3"
    assert (project / "node_modules" / "@acme" / "lib" / "package.json").exists()

    stored = {LOCAL: server.registry / "packages/internal-util/tarballs/internal-util-1.2.0.tgz",
              MIRRORED: server.registry / "packages/ms/upstream/tarballs/ms-2.1.3.tgz",
              SCOPED: server.registry / "packages/@acme/lib/tarballs/lib-1.0.0.tgz"}
    for path, file in stored.items():
        assert access(NOPARD_ACCESS, server.log(), path) == [(200, 0)], path
        assert access(NGINX_ACCESS, (nginx.directory / "access.log").read_text(), path) == [
            (200, file.stat().st_size)], path
        status, headers, body = get(nginx.port, path)
        assert status == 200 and body == file.read_bytes()
        assert headers["content-type"] == "application/octet-stream"
        assert "immutable" in headers["cache-control"] and "x-accel-redirect" not in headers


def test_hidden_tarball_through_nginx_is_a_json_404_and_its_reader_gets_it(world: dict) -> None:
    """The access rules still decide: a reader the rules do not name gets nopard's JSON 404."""
    nginx = world["nginx"]
    status, headers, body = get(nginx.port, HIDDEN)
    assert status == 404 and "error" in json.loads(body)
    status, _, body = get(nginx.port, HIDDEN, Authorization=f"Bearer {world['alice']}")
    assert status == 200
    assert body == (world["server"].registry / "packages/secret-thing/tarballs/secret-thing-1.0.0.tgz").read_bytes()


@pytest.mark.parametrize("path", [
    "/_nopard_store/packages/secret-thing/tarballs/secret-thing-1.0.0.tgz",
    "/_nopard_store/users/htpasswd",
    "/_nopard_store/packages/internal-util/package.json",
])
def test_the_store_location_is_not_served_to_clients(world: dict, path: str) -> None:
    """Asked for directly, nginx's internal location answers 404 (other store files match no
    location of the store and go to nopard) and sends nothing of the store, and nopard itself
    never serves the store's files under that path."""
    for port in (world["nginx"].port, world["server"].port):
        status, _, body = get(port, path)
        assert 400 <= status < 500, (port, status)
        assert b"secret-thing" not in body and b"alice" not in body and b"$2" not in body


def test_nginx_reuses_a_yes_for_the_same_credentials_only(world: dict) -> None:
    """Within NOPARD_ACCEL_CACHE_TTL a repeated GET with the same credentials is answered by
    nginx alone; other credentials, and refusals, are asked of nopard every time (nginx's
    question gets a 403, then the request itself nopard's real answer)."""
    server, nginx, alice = world["server"], world["nginx"], world["alice"]
    path = "/secret-thing/-/secret-thing-1.0.0.tgz"

    def asked(status: int) -> int:
        return [answer for answer, _ in access(NOPARD_ACCESS, server.log(), path)].count(status)

    refused, refusals, yeses = asked(403), asked(404), asked(200)
    for _ in range(3):
        status, _, body = get(nginx.port, path)
        assert status == 404 and "error" in json.loads(body)  # refused: never kept
    assert (asked(403), asked(404)) == (refused + 3, refusals + 3)
    for _ in range(3):
        status, _, body = get(nginx.port, path, Authorization=f"Bearer {alice}")
        assert status == 200 and body.startswith(b"\x1f\x8b")
    assert asked(200) <= yeses + 1  # at most the first of alice's was asked (an earlier test may have)
    assert get(nginx.port, path, Authorization="Bearer not-a-token")[0] in (401, 404)
    assert asked(401) + asked(404) >= refusals + 4 and asked(200) <= yeses + 1


def test_a_head_through_nginx_says_the_size_and_sends_no_bytes(world: dict) -> None:
    """A HEAD gets the stored tarball's size and nopard's Cache-Control, and no body; nopard was
    only asked whether (its access lines for the tarball carry 0 bytes), never for the bytes."""
    server, nginx = world["server"], world["nginx"]
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    try:
        connection.request("HEAD", LOCAL)
        answer = connection.getresponse()
        body = answer.read()
    finally:
        connection.close()
    file = server.registry / "packages/internal-util/tarballs/internal-util-1.2.0.tgz"
    assert answer.status == 200 and answer.getheader("content-length") == str(file.stat().st_size)
    assert body == b"" and "immutable" in (answer.getheader("cache-control") or "")
    asked = access(NOPARD_ACCESS, server.log(), LOCAL)
    assert asked and all(sent == 0 for _, sent in asked)
