"""nopard-admin fsck and gc on every backend: the same test bodies on a registry directory and
on a bucket of moto's S3 server, through the installed console script, as an operator runs it.

Only what has no S3 counterpart (temporary files of interrupted writes, the htpasswd file's
folder) is tested on the filesystem alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nopard.auth.htpasswd import parse_htpasswd
from tests.admin_stores import FsStore, S3Store, Store, flip_a_byte, local_copy, mirror_copy, unsigned
from tests.polling import poll_until
from tests.redis_server import RedisServer
from tests.s3_server import MotoServer
from tests.support import NopardServer, Npm, free_port, make_package, publish_body, publish_directory
from tests.upstream import FakeUpstream

MS = "packages/ms/upstream/tarballs/ms-2.1.3.tgz"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty store of each backend; its local directory is where start_nopard's registry is."""
    local = tmp_path / "nopard" / "registry"
    if request.param == "fs":
        return FsStore(local)
    return S3Store(request.getfixturevalue("moto_server"), local)


@pytest.fixture
def fs_store(tmp_path: Path) -> FsStore:
    return FsStore(tmp_path / "nopard" / "registry")


def lines(result: object) -> list[str]:
    return result.stdout.splitlines()  # type: ignore[attr-defined]


# fsck ---------------------------------------------------------------------------


def test_fsck_of_a_healthy_store_is_exit_0(store: Store) -> None:
    """Local and mirrored packages whose tarballs all verify: 'all well', exit 0."""
    mirror_copy(store, "ms")
    local_copy(store, "@acme/tool", "1.0.0", "1.1.0")
    result = store.admin("fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 2 documents, 4 tarballs checked; all well\n"), \
        result.stderr


def test_fsck_agrees_with_what_nopard_publishes(store: Store, start_nopard: Callable[..., NopardServer]) -> None:
    """Packages published over HTTP to a running nopard on the store pass fsck."""
    server = start_nopard(store.env)
    token = server.token("alice", "pw")
    for name, version in (("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")):
        answer = server.request("PUT", "/" + name.replace("/", "%2f"), publish_body(name, version), token=token)
        assert answer.status in (200, 201), answer.body
    result = store.admin("fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 2 documents, 3 tarballs checked; all well\n")


def test_fsck_quarantines_a_corrupt_tarball(store: Store) -> None:
    """A flipped byte: the tarball moves to .quarantine/<same key>, is reported, exit 1."""
    mirror_copy(store, "ms")
    corrupted = flip_a_byte(store, MS)
    result = store.admin("fsck")
    assert result.returncode == 1
    assert lines(result) == [
        f"corrupt {MS}: does not match the checksums of version 2.1.3; moved to .quarantine/{MS}",
        "fsck: 1 documents, 2 tarballs checked; 1 problems (1 corrupt)",
    ]
    assert store.get(MS) is None
    assert store.objects()[f".quarantine/{MS}"] == corrupted


def test_gc_after_fsck_leaves_a_clean_store(store: Store) -> None:
    """fsck (exit 1) quarantines; gc removes the quarantine (exit 0); a second fsck exits 0."""
    mirror_copy(store, "ms")
    key = "packages/ms/upstream/tarballs/ms-2.0.0.tgz"
    flip_a_byte(store, key)
    assert store.admin("fsck").returncode == 1
    again = store.admin("fsck")
    assert again.returncode == 1 and lines(again)[0] == f"quarantined .quarantine/{key}: awaiting gc"
    collected = store.admin("gc")
    assert collected.returncode == 0
    assert lines(collected)[0].startswith(f"removed .quarantine/{key} (quarantined, ")
    assert not [path for path in store.objects() if path.startswith(".quarantine")]
    if isinstance(store, FsStore):
        assert not (store.root / ".quarantine").exists()
    assert store.admin("fsck").returncode == 0


def test_fsck_reports_a_missing_tarball_of_a_local_document(store: Store) -> None:
    """A local document naming a tarball that is not stored is reported (gc cannot fix it), exit 1."""
    area = local_copy(store, "tool", "1.0.0", "2.0.0")
    store.delete(f"{area}/tarballs/tool-1.0.0.tgz")
    result = store.admin("fsck")
    assert result.returncode == 1
    assert lines(result) == [
        "missing packages/tool/tarballs/tool-1.0.0.tgz: version 1.0.0 names it, but it is not stored",
        "fsck: 1 documents, 1 tarballs checked; 1 problems (1 missing)",
    ]
    collected = store.admin("gc")
    assert collected.stdout == (
        "gc: removed 0 files (0 bytes); 1 problems gc cannot fix (nopard-admin fsck lists them)\n")


def test_mirrored_documents_may_name_tarballs_not_fetched(store: Store) -> None:
    """A mirrored document naming versions never downloaded is normal: not reported."""
    mirror_copy(store, "ms")
    store.delete("packages/ms/upstream/tarballs/ms-2.0.0.tgz")
    assert store.admin("fsck").returncode == 0


def test_gc_removes_orphans_and_keeps_every_named_tarball(store: Store) -> None:
    """Tarballs no document names (old enough) are orphans: gc removes exactly those; every object a
    document names, and the documents, stay."""
    area = local_copy(store, "tool", "1.0.0", "1.1.0")
    mirror_copy(store, "ms")
    store.put(f"{area}/tarballs/tool-0.9.0.tgz", b"x", old=True)
    store.put("packages/ms/upstream/tarballs/ms-0.1.0.tgz", b"yy", old=True)
    kept = store.objects()
    del kept[f"{area}/tarballs/tool-0.9.0.tgz"], kept["packages/ms/upstream/tarballs/ms-0.1.0.tgz"]
    result = store.admin("fsck")
    assert result.returncode == 1
    assert lines(result) == [
        "orphan packages/ms/upstream/tarballs/ms-0.1.0.tgz: no document names it",
        "orphan packages/tool/tarballs/tool-0.9.0.tgz: no document names it",
        "fsck: 2 documents, 4 tarballs checked; 2 problems (2 orphan)",
    ]
    collected = store.admin("gc")
    assert lines(collected) == [
        "removed packages/ms/upstream/tarballs/ms-0.1.0.tgz (orphan, 2 bytes)",
        "removed packages/tool/tarballs/tool-0.9.0.tgz (orphan, 1 bytes)",
        "gc: removed 2 files (3 bytes)",
    ]
    assert store.objects() == kept
    assert store.admin("fsck").returncode == 0


def test_fresh_unnamed_tarballs_are_left_alone(store: Store) -> None:
    """A tarball written just now may be a publish whose document is coming: neither orphan nor removed."""
    area = local_copy(store, "tool", "1.0.0")
    store.put(f"{area}/tarballs/tool-2.0.0.tgz", b"publishing")
    before = store.objects()
    assert store.admin("fsck", "--settle", "3600").returncode == 0
    assert store.admin("gc", "--settle", "3600").stdout == "gc: removed 0 files (0 bytes)\n"
    assert store.objects() == before


def test_fsck_reports_an_unreadable_document(store: Store) -> None:
    """A document that is not JSON is reported and its tarballs are left alone, even by gc."""
    area = local_copy(store, "tool", "1.0.0")
    store.put(f"{area}/package.json", '{"name": "tool", "versions": ')
    result = store.admin("fsck")
    assert result.returncode == 1
    assert lines(result)[0] == \
        "unreadable packages/tool/package.json: not a package document (tarballs beside it left alone)"
    store.admin("gc")
    assert store.get(f"{area}/tarballs/tool-1.0.0.tgz") is not None


def test_gc_dry_run_removes_nothing(store: Store) -> None:
    """`gc --dry-run` prints what it would remove and leaves every object (and no quarantine)."""
    mirror_copy(store, "ms")
    flip_a_byte(store, MS)
    store.put("packages/ms/upstream/tarballs/ms-0.0.1.tgz", b"x", old=True)
    before = store.objects()
    size = len(before[MS])
    result = store.admin("gc", "--dry-run")
    assert result.returncode == 0
    assert lines(result) == [
        "would remove packages/ms/upstream/tarballs/ms-0.0.1.tgz (orphan, 1 bytes)",
        f"would remove {MS} (corrupt, {size} bytes)",
        f"gc: would remove 2 files ({1 + size} bytes)",
    ]
    assert store.objects() == before


def test_fsck_quarantined_tarball_is_fetched_again(store: Store, start_nopard: Callable[..., NopardServer],
                                                   fake: FakeUpstream) -> None:
    """On a running mirror: a corrupted cached tarball is quarantined and nopard fetches a good copy again."""
    server = start_nopard({**store.env, "NOPARD_FORWARDER_URL": fake.url, "NOPARD_SYNC_INTERVAL": "0"})
    document = server.request("GET", "/ms").json()
    path = "/" + document["versions"]["2.1.3"]["dist"]["tarball"][len(server.url):]
    good = server.request("GET", path).body
    # A copy fetched for a client is written once fetches pause (NOPARD_MIRROR_WRITE_DELAY).
    poll_until(lambda: store.get(MS) == good, "the fetched tarball written to the store")
    assert store.admin("fsck").returncode == 0
    flip_a_byte(store, MS)
    assert store.admin("fsck").returncode == 1
    again = server.request("GET", path)
    assert again.status == 200 and again.body == good and again.headers["x-nopard-cache"] == "MISS"
    poll_until(lambda: store.get(MS) == good, "the good copy written to the store again")
    assert store.admin("gc").returncode == 0
    assert store.admin("fsck").returncode == 0


# What only the filesystem has ------------------------------------------------------------


def test_fsck_reports_leftover_temporary_files(fs_store: FsStore) -> None:
    """Old .tmp-*, .spool/.fetch-* and .htpasswd-* files are reported; fresh ones (writes in progress) are not."""
    local_copy(fs_store, "tool", "1.0.0")
    old = ["packages/tool/.tmp-abc123", ".spool/.fetch-xyz", ".htpasswd-q1w2e3"]
    for path in old:
        fs_store.put(path, b"x", old=True)
    fs_store.put(".spool/.fetch-fresh", b"downloading")
    result = fs_store.admin("fsck")
    assert result.returncode == 1
    reported = [line.split(":")[0] for line in lines(result)[:-1]]
    assert reported == ["temporary .htpasswd-q1w2e3", "temporary .spool/.fetch-xyz",
                        "temporary packages/tool/.tmp-abc123"]
    assert fs_store.admin("gc").returncode == 0
    assert not any((fs_store.root / path).exists() for path in old)
    assert (fs_store.root / ".spool" / ".fetch-fresh").exists()


def test_s3_store_needs_no_registry_directory(moto_server: MotoServer, tmp_path: Path) -> None:
    """With NOPARD_STORAGE=s3, fsck works on the bucket though NOPARD_REGISTRY_PATH does not exist."""
    store = S3Store(moto_server, tmp_path / "local")
    local_copy(store, "tool", "1.0.0")
    store.local.rmdir()
    result = store.admin("fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 1 documents, 1 tarballs checked; all well\n")
    assert not store.local.exists()


# export and import ---------------------------------------------------------------------------


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str, str], Store]:
    """A new empty store of a backend ("fs" or "s3"); ``name`` is start_nopard's name for it."""
    def make(backend: str, name: str) -> Store:
        local = tmp_path / name / "registry"
        if backend == "fs":
            return FsStore(local)
        return S3Store(request.getfixturevalue("moto_server"), local)
    return make


@pytest.mark.parametrize(("source", "destination"), [("s3", "fs"), ("fs", "s3")])
def test_export_then_import_into_the_other_backend_carries_every_key(
        source: str, destination: str, make_store: Callable[[str, str], Store],
        start_nopard: Callable[..., NopardServer], fake: FakeUpstream, tmp_path: Path) -> None:
    """Published, logged in, mirrored, blocked and overridden on one backend; exported; imported into
    a fresh store of the other: every key but per-instance state and the signing keys is there with
    the same bytes (local documents signed again, by the new store's own key), and a nopard on it
    installs with real npm, the upstream gone, honours the block and knows the old token."""
    old = make_store(source, "old")
    server = start_nopard({**old.env, "NOPARD_FORWARDER_URL": fake.url, "NOPARD_SYNC_INTERVAL": "0"}, name="old")
    token = server.token("alice", "pw")
    for name, version in (("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")):
        answer = publish_directory(server, token, make_package(tmp_path / name / version, name, version))
        assert answer.status in (200, 201), answer.body
    ms = server.request("GET", "/ms").json()["versions"]["2.1.3"]["dist"]["tarball"]
    assert server.request("GET", "/" + ms[len(server.url):]).status == 200
    blocked = old.admin("--registry", server.url, "block", "add", "tool@1.1.0", "--reason", "bad release")
    assert blocked.returncode == 0, blocked.stderr
    old.put("settings/overrides.json", '{"values": {"meta_ttl": "60"}, "changed_by": "alice", '
                                       '"changed_at": "2026-12-03T00:00:00Z"}')
    server.stop()
    held = old.objects()
    assert {"blocks/tool.json", "signing/keys.json", "packages/ms/upstream/tarballs/ms-2.1.3.tgz"} <= set(held)

    target = tmp_path / "export"
    result = old.admin("export", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result)[-1] == (f"export: packages 2, versions 3, tarballs 3, unpublished 0, users 1, profiles 1, "
                                 f"mirrored 1, blocks 1, settings 1, token 1, usage 1 to {target}; "
                                 "not exported: changes feed 2, signing keys 1")
    new = make_store(destination, "new")
    imported = new.admin("import", str(target))
    assert imported.returncode == 0, imported.stdout + imported.stderr

    moved = new.objects()
    users = [parse_htpasswd(files.pop("users/htpasswd").decode()) for files in (moved, held)]
    assert users[0] == users[1] and list(users[0]) == ["alice"]
    for files in (moved, held):  # the changes feed is each store's own (left out, like signing keys)
        for key in [key for key in files if key.startswith("changes/")]:
            del files[key]
    assert set(moved) == set(held)  # signing/keys.json: the new store's own
    del moved["signing/keys.json"], held["signing/keys.json"]
    assert not [path for path in (tmp_path / "new").rglob(".tmp-*")]
    for key, data in unsigned(held).items():
        if key.endswith("/upstream/package.json"):
            assert json.loads(moved[key])["versions"] == json.loads(data)["versions"]
        elif not key.endswith("/upstream/meta.json"):  # imported stale: revalidated when it can be
            assert unsigned({key: moved[key]})[key] == data, key

    mirror = start_nopard({**new.env, "NOPARD_FORWARDER_URL": "http://127.0.0.1:9", "NOPARD_SYNC_INTERVAL": "0"},
                          name="new")
    assert mirror.request("GET", "/-/whoami", token=token).json() == {"username": "alice"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    Npm(mirror.url, tmp_path / "npm-home").run("install", "tool", "@acme/lib", "ms@2.1.3", cwd=project)
    installed = {name: json.loads((project / "node_modules" / name / "package.json").read_text())["version"]
                 for name in ("tool", "@acme/lib", "ms")}
    assert installed == {"tool": "1.0.0", "@acme/lib": "0.1.0", "ms": "2.1.3"}  # tool@1.1.0 is blocked


def test_export_fails_when_the_store_holds_more_than_it_wrote(store: Store, tmp_path: Path) -> None:
    """Keys of no kind nopard knows: export still writes the rest, then exits 1 saying what the store
    holds that it did not write."""
    local_copy(store, "greeter", "1.0.0")
    store.put("packages/greeter/notes.json", "{}")
    store.put("misc/thing.json", "{}")
    target = tmp_path / "export"
    result = store.admin("export", str(target))
    assert result.returncode == 1
    assert "left out misc/thing.json: no kind of key nopard knows" in lines(result)
    assert "left out 2 unknown keys the store holds (2 held, 0 written)" in lines(result)
    assert result.stderr.startswith("nopard-admin: export INCOMPLETE: the store holds more than was written "
                                    "(2 unknown)")
    assert (target / "packages" / "greeter" / "package.json").exists()


def test_export_fails_on_a_corrupt_or_orphan_tarball(store: Store, tmp_path: Path) -> None:
    """A tarball that no longer matches its document, and one no document names: not written, listed, exit 1."""
    area = local_copy(store, "tool", "1.0.0", "1.1.0")
    flip_a_byte(store, f"{area}/tarballs/tool-1.0.0.tgz")
    store.put(f"{area}/tarballs/tool-0.1.0.tgz", b"x")
    result = store.admin("export", str(tmp_path / "export"))
    assert result.returncode == 1
    assert "skipped tool@1.0.0: its tarball is corrupt (see nopard-admin fsck)" in lines(result)
    assert "left out 2 local tarball keys the store holds (3 held, 1 written)" in lines(result)
    assert not (tmp_path / "export" / area / "tarballs" / "tool-1.0.0.tgz").exists()


# Running instances are told ------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_an_import_is_served_at_once_by_a_running_nopard(store: Store, start_nopard: Callable[..., NopardServer],
                                                         redis: RedisServer, tmp_path: Path) -> None:
    """nopard-admin import with NOPARD_REDIS_URL bumps the changed packages' stamps and announces them:
    a running nopard that had served (and cached) a package serves its imported versions at once
    (as soon as the announcement, a Redis message, reaches it: on a loaded machine a GET made the
    instant import returned could come first, which failed this test once; well before the 10 s
    after which an instance would find the change without being told)."""
    server = start_nopard({**store.env, "NOPARD_REDIS_URL": redis.url})
    token = server.token("alice", "pw")
    answer = publish_directory(server, token, make_package(tmp_path / "tool-1", "tool", "1.0.0"))
    assert answer.status in (200, 201), answer.body
    assert list(server.request("GET", "/tool").json()["versions"]) == ["1.0.0"]
    assert server.request("GET", "/tool/-/tool-1.1.0.tgz").status == 404
    source = FsStore(tmp_path / "elsewhere")
    local_copy(source, "tool", "1.1.0")
    imported = store.admin("import", str(source.root), env={"NOPARD_REDIS_URL": redis.url})
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "told the running instances: 1 packages changed" in lines(imported)
    poll_until(lambda: list(server.request("GET", "/tool").json()["versions"]) == ["1.0.0", "1.1.0"],
               "the running nopard to serve the imported 1.1.0", timeout=3)
    tarball = server.request("GET", "/tool/-/tool-1.1.0.tgz")
    assert tarball.status == 200 and tarball.body == source.get("packages/tool/tarballs/tool-1.1.0.tgz")


def test_an_unreachable_redis_is_reported_and_the_import_made(store: Store, tmp_path: Path) -> None:
    """Redis down: the import is written all the same; nopard-admin says the instances were not told."""
    source = FsStore(tmp_path / "elsewhere")
    local_copy(source, "tool", "1.0.0")
    result = store.admin("import", str(source.root), env={"NOPARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.startswith("nopard-admin: could not tell the running instances through NOPARD_REDIS_URL")
    assert store.get("packages/tool/tarballs/tool-1.0.0.tgz") is not None
