"""NOPARD_TARBALL_REDIRECT=presigned with a real S3 API (moto's server): npm, yarn 1, yarn 4
and pnpm each install a local package and a mirrored one from a registry that needs a login
to read, every tarball answered with a 302 to a presigned GET of its object, and nopard sends
none of the bytes. One moto and one nopard for the module.

boto3 reaches moto as ``localhost`` while clients reach nopard as ``127.0.0.1``: the redirect
changes host name, as it does from a registry to a bucket in production, where every client
drops the token it sent to nopard (S3 refuses a request with two authentications).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.package_managers import PACKAGE_MANAGERS
from tests.s3_server import MotoServer
from tests.support import NopardServer, make_package, publish_directory
from tests.upstream import FakeUpstream

TARBALLS = ("/internal-util/-/internal-util-1.2.0.tgz", "/ms/-/ms-2.1.3.tgz")
ACCESS = re.compile(r" INFO access .*=GET path=(?P<path>\S+\.tgz) status=(?P<status>\d{3}) bytes=(?P<bytes>\d+) ")


@pytest.fixture(scope="module")
def world(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """nopard on S3 with presigned redirects and NOPARD_AUTH_READ, internal-util published to it."""
    upstream.healthy()
    work = tmp_path_factory.mktemp("s3-redirect")
    with MotoServer() as moto:
        bucket = moto.new_bucket()
        server = NopardServer(work / "nopard", {
            **moto.env(), "AWS_ENDPOINT_URL": f"http://localhost:{moto.port}",
            "NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": bucket, "NOPARD_S3_PREFIX": "npm",
            "NOPARD_TARBALL_REDIRECT": "presigned", "NOPARD_TARBALL_REDIRECT_TTL": "120",
            "NOPARD_AUTH_READ": "yes", "NOPARD_FORWARDER_URL": upstream.url, "NOPARD_MAX_USERS": "5",
        })
        server.start()
        try:
            token = server.token("alice", "pw-alice")
            util = make_package(work / "util", "internal-util", "1.2.0", dependencies={"ms": "^2.1.3"})
            answer = publish_directory(server, token, util)
            assert answer.status == 201, answer.body
            yield {"work": work, "server": server, "token": token}
        finally:
            server.stop()


def test_a_tarball_get_is_a_presigned_redirect(world: dict) -> None:
    """The answer: 302 to the object's presigned URL on the bucket's host, no body, kept by no cache."""
    answer = world["server"].request("GET", TARBALLS[0], token=world["token"])
    assert answer.status == 302 and answer.body == b""
    location = answer.headers["location"]
    assert location.startswith("http://localhost:") and "/npm/packages/internal-util/tarballs/" in location
    assert "X-Amz-Expires=120" in location or "Expires=" in location
    assert answer.headers["cache-control"] == "private, no-store"
    assert world["server"].request("GET", TARBALLS[0]).status == 401  # no login: no redirect


@pytest.mark.parametrize("name", list(PACKAGE_MANAGERS))
def test_client_installs_with_tarballs_from_the_bucket(name: str, world: dict) -> None:
    """The client logs in with a token, follows each tarball's redirect to S3 and installs; every
    tarball GET nopard logged during the install is a 302 that sent no bytes."""
    server, work = world["server"], world["work"] / name
    client = PACKAGE_MANAGERS[name](server.url, work / "home")
    client.save_token(world["token"])
    # yarn 1 and yarn 4 send the token for reads only when told to always authenticate.
    if name == "yarn1":
        with open(client.home / ".npmrc", "a") as npmrc:
            npmrc.write("always-auth=true\n")
    if name == "yarn4":
        with open(client.home / ".yarnrc.yml", "a") as rc:
            rc.write("    npmAlwaysAuth: true\n")  # under the registry save_token wrote last
    project = work / "project"
    project.mkdir(parents=True)
    (project / "package.json").write_text(json.dumps({"name": "p", "version": "1.0.0", "private": True,
                                                      "dependencies": {"internal-util": "^1.2.0"}}))
    before = len(server.log().splitlines())
    client.install(project)
    util = project / "node_modules" / "internal-util" / "package.json"
    assert json.loads(util.read_text())["version"] == "1.2.0"
    # pnpm keeps ms under node_modules/.pnpm/, the others beside internal-util.
    assert any(json.loads(path.read_text()).get("version") == "2.1.3"
               for path in project.glob("node_modules/**/ms/package.json")), name
    gets = [(m["path"], int(m["status"]), int(m["bytes"]))
            for m in map(ACCESS.search, server.log().splitlines()[before:]) if m]
    assert {path for path, _, _ in gets} == set(TARBALLS), gets
    assert all(status == 302 and sent == 0 for _, status, sent in gets), gets
