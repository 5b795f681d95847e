"""The warm tarball path: what is stored is known in memory (nopard.storage.index), so a warm
tarball costs no thread-pool hop; small ones come from memory within the shared budget, large
ones are streamed from their file; writes, deletes and files gone behind nopard's back are seen.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.threads import deferToThread

from nopard.storage import keys
from nopard.storage.fs import FilesystemStorage
from nopard.storage.index import FACTS_TTL, MEMORY_TARBALL_MAX, TARBALL_SHARE, IndexedStorage, StoreIndex
from tests.support import publish_body, tarball_bytes
from tests.unit.mirror_harness import FakeRegistry, packument
from tests.unit.mirror_harness import tarball as upstream_tarball
from tests.unit.route_harness import InProcess, build, run_now
from tests.unit.storage_contract import StorageContract

SMALL = b"s" * 58_000
LARGE = bytes(range(256)) * ((MEMORY_TARBALL_MAX // 256) + 300)  # past what memory holds: streamed
RULES = {"packages": [{"pattern": "secret-*", "access": ["alice"], "publish": ["alice"]},
                      {"pattern": "**", "access": ["$all"], "publish": ["$all"], "proxy": ["$all"]}]}


def hops(app: InProcess) -> int:
    assert app.hops is not None
    return app.hops.count


def held(app: InProcess) -> int:
    assert app.index is not None and app.cache is not None
    return app.index.bytes_held + app.cache.bytes_held


async def stored(app: InProcess, kind: str, name: str, data: bytes) -> str:
    """Put a tarball in the store as a publish (local) or a fetch (mirrored) leaves it; its URL path."""
    filename = f"{name}-1.0.0.tgz"
    await app.storage.write(keys.package_key(kind, name, filename), data)
    return f"/{name}/-/{filename}"


async def published(app: InProcess, name: str, version: str, token: str) -> None:
    answer = await app.call("PUT", f"/{name}", publish_body(name, version), token=token)
    assert answer.status == 201, answer.body


@pytest.mark.parametrize("kind, status", [(keys.LOCAL_TARBALL, "LOCAL"), (keys.MIRRORED_TARBALL, "HIT")])
@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
@pytest_twisted.ensureDeferred
async def test_a_warm_tarball_costs_no_thread_hop(tmp_path: Path, kind: str, status: str, data: bytes) -> None:
    """Once a tarball was served, GET and HEAD of it call nothing in the io thread pool, and
    still send the stored bytes, their length and how they were served."""
    app = build(tmp_path)
    path = await stored(app, kind, "demo", data)
    first = await app.call("GET", path)
    assert first.status == 200 and first.body == data
    before = hops(app)
    again = await app.call("GET", path)
    head = await app.call("HEAD", path)
    assert hops(app) == before  # no hop: no open, no document lookup, no read
    assert again.status == 200 and again.body == data and again.headers["x-nopard-cache"] == status
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == str(len(data))
    assert "immutable" in again.headers["cache-control"]


@pytest_twisted.ensureDeferred
async def test_a_cold_tarball_hops_only_to_write(tmp_path: Path) -> None:
    """A tarball nopard never saw asks about keys that are not there (its local copy, the local
    document, its mirrored copy twice, the mirrored document, the firewall's blocks): each is
    answered by a stat where the request runs, and the thread pool only writes (the document, its
    meta, the tarball, the changes feed). Each hop wakes two threads, and on a machine the client
    keeps busy those wake-ups preempted the client (npm ci through an empty nopard)."""
    app = build(tmp_path, upstream=FakeRegistry({"demo": packument("demo", "1.0.0")}))
    answer = await app.call("GET", "/demo/-/demo-1.0.0.tgz")
    assert answer.status == 200 and answer.body == upstream_tarball("demo", "1.0.0")
    assert answer.headers["x-nopard-cache"] == "MISS"
    assert app.hops is not None
    reads = [made for made in app.hops.made if made in ("_read_file", "_open_file", "_read_versioned", "isfile")]
    # The writes: the document, its meta, the changes feed's log and head; then the tarball. The one
    # read is of the tarball just stored (this upstream's answer was over before it could be followed).
    assert app.hops.made == ["_write_file"] * 4 + ["_create_from_file", "_open_file"]
    assert reads == ["_open_file"]


@pytest_twisted.ensureDeferred
async def test_small_tarballs_come_from_memory_within_the_shared_budget(tmp_path: Path) -> None:
    """Small tarballs are held in memory, counted with the prepared documents against
    NOPARD_MEMORY_CACHE_SIZE: tarballs take at most a quarter, both together never more."""
    app = build(tmp_path, memory_cache_size="1mb")
    budget = app.settings.current.memory_cache_size
    token = await app.user("pat")
    for number in range(12):
        await published(app, f"doc-{number}", "1.0.0", token)
        assert (await app.call("GET", f"/doc-{number}")).status == 200
    paths = [await stored(app, keys.LOCAL_TARBALL, f"pkg-{number}", SMALL) for number in range(12)]
    for path in paths:
        for _ in range(2):
            answer = await app.call("GET", path)
            assert answer.status == 200 and answer.body == SMALL
            assert held(app) <= budget
    assert app.index is not None
    assert 0 < app.index.bytes_held <= budget // TARBALL_SHARE
    for number in range(12):  # documents prepared after the tarballs still fit with them
        assert (await app.call("GET", f"/doc-{number}")).status == 200
        assert held(app) <= budget


@pytest_twisted.ensureDeferred
async def test_a_publish_is_served_at_once_after_a_404(tmp_path: Path) -> None:
    """A tarball asked for before it was published (404, remembered as absent) is served once published."""
    app = build(tmp_path)
    token = await app.user("pat")
    await published(app, "demo", "1.0.0", token)
    assert (await app.call("GET", "/demo/-/demo-2.0.0.tgz")).status == 404
    assert (await app.call("GET", "/demo/-/demo-1.0.0.tgz")).status == 200
    await published(app, "demo", "2.0.0", token)
    answer = await app.call("GET", "/demo/-/demo-2.0.0.tgz")
    assert answer.status == 200 and answer.body == tarball_bytes("demo", "2.0.0")


@pytest_twisted.ensureDeferred
async def test_an_unpublished_tarball_is_404_at_once(tmp_path: Path) -> None:
    """npm unpublish --force of a package whose tarball was served warm: the next GET is 404."""
    app = build(tmp_path)
    token = await app.user("pat")
    await published(app, "demo", "1.0.0", token)
    for _ in range(2):
        assert (await app.call("GET", "/demo/-/demo-1.0.0.tgz")).status == 200
    rev = (await app.call("GET", "/demo")).json()["_rev"]
    assert (await app.call("DELETE", f"/demo/-rev/{rev}", token=token)).status == 200
    for method in ("GET", "HEAD"):
        assert (await app.call(method, "/demo/-/demo-1.0.0.tgz")).status == 404


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
@pytest_twisted.ensureDeferred
async def test_a_file_deleted_behind_nopards_back_answers_as_missing(tmp_path: Path, data: bytes) -> None:
    """A warm tarball whose file another process removed (nopard-admin gc, say) is a JSON 404,
    as a missing one, never a 500 nor the bytes it had in memory."""
    app = build(tmp_path)
    path = await stored(app, keys.LOCAL_TARBALL, "demo", data)
    for _ in range(2):
        assert (await app.call("GET", path)).status == 200
    os.unlink(app.storage.path_of(keys.tarball_key("demo", "demo-1.0.0.tgz")))
    answer = await app.call("GET", path)
    assert answer.status == 404 and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_a_file_replaced_behind_nopards_back_is_served_anew(tmp_path: Path) -> None:
    """A held tarball whose file changed since it was read is read again, not served stale."""
    app = build(tmp_path)
    path = await stored(app, keys.MIRRORED_TARBALL, "demo", SMALL)
    for _ in range(2):
        assert (await app.call("GET", path)).body == SMALL
    file = app.storage.path_of(keys.upstream_tarball_key("demo", "demo-1.0.0.tgz"))
    Path(file + ".new").write_bytes(b"n" * 1000)
    os.replace(file + ".new", file)
    assert (await app.call("GET", path)).body == b"n" * 1000


@pytest_twisted.ensureDeferred
async def test_a_tarball_added_behind_nopards_back_is_seen_within_the_ttl(tmp_path: Path) -> None:
    """Absence is remembered for FACTS_TTL at most: a file imported by another process is served after it."""
    app = build(tmp_path)
    assert (await app.call("GET", "/demo/-/demo-1.0.0.tgz")).status == 404
    file = Path(app.storage.path_of(keys.tarball_key("demo", "demo-1.0.0.tgz")))
    file.parent.mkdir(parents=True)
    file.write_bytes(SMALL)
    app.clock.advance(FACTS_TTL)
    answer = await app.call("GET", "/demo/-/demo-1.0.0.tgz")
    assert answer.status == 200 and answer.body == SMALL


@pytest_twisted.ensureDeferred
async def test_a_hidden_warm_tarball_is_404_as_a_missing_one(tmp_path: Path) -> None:
    """A tarball its reader served warm is still hidden from anyone the rules do not let read it."""
    app = build(tmp_path, rules=RULES)
    alice = await app.user("alice")
    await published(app, "secret-thing", "1.0.0", alice)
    for _ in range(2):
        assert (await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz", token=alice)).status == 200
    hidden = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz")
    missing = await app.call("GET", "/secret-other/-/secret-other-1.0.0.tgz")
    assert hidden.status == missing.status == 404
    assert hidden.json()["error"].replace("thing", "X") == missing.json()["error"].replace("other", "X")


@pytest_twisted.ensureDeferred
async def test_changed_forgets_what_another_process_changed(tmp_path: Path) -> None:
    """StoreIndex.changed(name), the news of another process, drops the package's facts and bytes."""
    store = FilesystemStorage(str(tmp_path / "store"), run_now)
    index = StoreIndex(task.Clock(), lambda: 8 * 1024 * 1024)
    indexed = IndexedStorage(store, index)
    key = keys.tarball_key("demo", "demo-1.0.0.tgz")
    await store.write(key, SMALL)
    for _ in range(2):
        blob = await indexed.open(key)
        assert blob is not None and blob.size == len(SMALL)
        blob.close()
    assert index.bytes_held == len(SMALL)
    await store.delete(key)  # as another process would
    index.changed("demo")
    assert index.bytes_held == 0 and await indexed.open(key) is None


@pytest.fixture
def storage(tmp_path: Path) -> IndexedStorage:
    return IndexedStorage(FilesystemStorage(str(tmp_path / "store"), deferToThread),
                          StoreIndex(task.Clock(), lambda: 8 * 1024 * 1024))


class TestIndexedFilesystemContract(StorageContract):
    """The index in front of the filesystem backend keeps the storage contract."""


@pytest_twisted.ensureDeferred
async def test_a_token_reader_of_a_warm_tarball_costs_no_thread_hop(tmp_path: Path) -> None:
    """With NOPARD_AUTH_READ, a bearer token's record is checked against its file, not read
    again: a warm tarball costs no hop, anonymous is still 401, a token revoked is refused at once."""
    app = build(tmp_path, auth_read="yes")
    token = await app.user("pat")
    path = await stored(app, keys.LOCAL_TARBALL, "demo", SMALL)
    assert (await app.call("GET", path)).status == 401
    for _ in range(2):
        assert (await app.call("GET", path, token=token)).status == 200
    before = hops(app)
    answer = await app.call("GET", path, token=token)
    assert hops(app) == before and answer.status == 200 and answer.body == SMALL
    for record in (tmp_path / "registry" / "tokens").iterdir():  # revoked by another process
        record.unlink()
    assert (await app.call("GET", path, token=token)).status == 401


@pytest_twisted.ensureDeferred
async def test_hot_routes_keep_the_package_answers(tmp_path: Path) -> None:
    """GET and HEAD of package paths, served in front of Klein, answer as Klein's routes did:
    ETag and 304, HEAD without a body, a JSON 405 for a method a kind lacks, a query ignored."""
    app = build(tmp_path)
    token = await app.user("pat")
    await published(app, "demo", "1.0.0", token)
    document = await app.call("GET", "/demo")
    assert document.status == 200 and document.headers["x-nopard-cache"] == "LOCAL"
    assert (await app.call("GET", "/demo", If_None_Match=document.headers["etag"])).status == 304
    head = await app.call("HEAD", "/demo")
    assert head.status == 200 and head.body == b""
    unsupported = await app.call("GET", "/demo/-rev/1-abc")
    assert unsupported.status == 405 and "error" in unsupported.json()
    assert (await app.call("GET", "/demo/-/demo-1.0.0.tgz?x=1")).body == tarball_bytes("demo", "1.0.0")


@pytest_twisted.ensureDeferred
async def test_a_mirrored_tarball_stored_by_another_instance_is_not_fetched_again(tmp_path: Path) -> None:
    """The absence of a mirrored tarball is never remembered: a fetch about to start (under the
    tarball lock) sees the copy another instance stored meanwhile, so the upstream is asked once."""
    store = FilesystemStorage(str(tmp_path / "store"), run_now)
    indexed = IndexedStorage(store, StoreIndex(task.Clock(), lambda: 8 * 1024 * 1024))
    key = keys.upstream_tarball_key("demo", "demo-1.0.0.tgz")
    assert await indexed.open(key) is None and not await indexed.exists(key)
    await store.write(key, SMALL)  # another instance fetched it
    assert await indexed.exists(key)
