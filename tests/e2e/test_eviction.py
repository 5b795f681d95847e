"""A bounded mirror with the real npm and `twistd -n nopard`, on the filesystem and on S3 (moto).

npm installs three packages through nopard one after the other; a package published here sits
beside them. nopard stops (flushing its record of use) and starts again on the same store with
NOPARD_MIRROR_MAX_SIZE just under what is mirrored: the evict job removes the tarballs used
longest ago (the first install's), keeps the later ones and the local package, and the mirror is
under the limit. A fresh npm then installs everything again: it succeeds, and the fake upstream
is asked for exactly the evicted tarballs again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.s3_server import MotoServer
from tests.support import REPO, NopardServer, Npm, publish_body
from tests.upstream import FakeUpstream

FIXTURES = REPO / "tests" / "data" / "upstream" / "tarballs"
# Installed in this order, a second apart, each with its dependencies (none shared).
INSTALLS = ({"debug": "4.4.3"}, {"commander": "15.1.0"}, {"cookie": "2.0.2"})
FIRST = ("debug-4.4.3.tgz", "ms-2.1.3.tgz")  # what the first install fetched: used longest ago
LATER = ("commander-15.1.0.tgz", "cookie-2.0.2.tgz")


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def install(npm: Npm, work: Path, dependencies: dict[str, str]) -> None:
    project = work / ("project-" + "-".join(dependencies))
    project.mkdir(parents=True)
    (project / "package.json").write_text(json.dumps({"name": "p", "version": "1.0.0",
                                                      "dependencies": dependencies}))
    npm.run("install", "--no-audit", "--no-fund", cwd=project)


def evict(server: NopardServer) -> dict:
    answer = server.request("POST", "/-/nopard/sync", {"job": "evict"}, headers=server.operator_headers())
    assert answer.status == 200, answer.body
    (report,) = answer.json()["reports"]
    return report


def mirror_status(server: NopardServer) -> dict:
    answer = server.request("GET", "/-/nopard/status")
    assert answer.status == 200, answer.body
    return answer.json()["mirror"]


def tarballs_asked(fake: FakeUpstream) -> list[str]:
    return sorted(path.rsplit("/", 1)[-1] for method, path in fake.stats()["requests"] if path.endswith(".tgz"))


@pytest.mark.parametrize("backend", ["fs", "s3"])
def test_the_mirror_is_kept_under_its_limit_and_evicted_tarballs_come_back(
    backend: str, start_nopard: Callable[..., NopardServer], fake: FakeUpstream, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    env = {"NOPARD_FORWARDER_URL": fake.url, "NOPARD_SYNC_INTERVAL": "0",
           "NOPARD_REGISTRY_PATH": str(tmp_path / "registry")}
    if backend == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        env.update({"NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": moto.new_bucket(), **moto.env()})
    first = start_nopard(env, name="first")
    npm = Npm(first.url, tmp_path / "npm-first")
    for dependencies in INSTALLS:
        install(npm, tmp_path / "first", dependencies)
        time.sleep(1.1)  # use is recorded in whole seconds: each install later than the one before
    token = first.token("alice", "pw-alice")
    published = first.request("PUT", "/local-kept", publish_body("local-kept", "1.0.0"), token=token)
    assert published.status in (200, 201), published.body
    evict(first)  # no limit yet: measured only
    size = mirror_status(first)["size"]
    assert size > sum((FIXTURES / name.rsplit("-", 1)[0] / name).stat().st_size for name in FIRST + LATER)
    first.stop()  # flushes the record of use

    freed = sum((FIXTURES / name.rsplit("-", 1)[0] / name).stat().st_size for name in FIRST)
    limit = size - freed + 1000  # the first install's tarballs must go, nothing else need
    second = start_nopard({**env, "NOPARD_MIRROR_MAX_SIZE": str(limit)}, name="second")
    report = evict(second)
    assert (report["changed"], report["bytes"], report["failures"]) == (len(FIRST), freed, [])
    status = mirror_status(second)
    assert status == {**status, "size": size - freed, "limit": limit, "evictions": len(FIRST)}
    assert status["size"] <= limit
    for name in ("local-kept",):
        assert second.request("GET", f"/{name}/-/{name}-1.0.0.tgz").status == 200
    metrics = second.request("GET", "/-/metrics").body.decode()
    assert f"nopard_mirror_evictions_total {float(len(FIRST))}" in metrics
    assert f"nopard_mirror_bytes {float(size - freed)}" in metrics

    fake.reset()
    again = Npm(second.url, tmp_path / "npm-again")  # an empty npm cache: every tarball from nopard
    for dependencies in INSTALLS:
        install(again, tmp_path / "again", dependencies)
    assert tarballs_asked(fake) == sorted(FIRST)  # the evicted ones fetched again, the others served
