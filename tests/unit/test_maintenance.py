"""fsck/gc scanning, import/export document rules and the admin helpers, without subprocesses."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from nopard.auth.htpasswd import parse_htpasswd, replace_entry
from nopard.auth.tokens import TokenStore
from nopard.cli.export import check_export_target
from nopard.cli.maintenance import (
    QUARANTINE,
    ScanReport,
    is_temporary,
    named_tarballs,
    open_storage,
    parse_document,
    run_now,
    tarball_matches,
)
from nopard.cli.maintenance import collect as collect_in
from nopard.cli.maintenance import scan as scan_in
from nopard.cli.sources import SourceError, detect_source
from nopard.cli.transfer import (
    Copied,
    choose_versions,
    local_document,
    merge_for_import,
    mirrored_document,
    newest,
    password_hash_kind,
)

REPO = Path(__file__).resolve().parent.parent.parent
IMPORTS = REPO / "tests" / "data" / "imports"
HOUR_AGO = time.time() - 3600


def dist_of(data: bytes, tarball: str = "x-1.0.0.tgz", integrity: bool = True, shasum: bool = True) -> dict:
    dist = {"tarball": tarball}
    if integrity:
        dist["integrity"] = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if shasum:
        dist["shasum"] = hashlib.sha1(data).hexdigest()
    return dist


def write(path: Path, data: bytes | str, old: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if old:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return path


def local_package(root: Path, name: str, versions: dict[str, bytes], old: bool = True) -> Path:
    area = root / "packages" / name
    document = {"name": name, "versions": {}}
    for version, data in versions.items():
        filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        write(area / "tarballs" / filename, data, old)
        document["versions"][version] = {"version": version, "dist": dist_of(data, filename)}
    write(area / "package.json", json.dumps(document))
    return area


# The direct runner ---------------------------------------------------------------


def test_run_now_drives_the_fs_storage_without_a_reactor(tmp_path: Path) -> None:
    """Storage calls made through call_directly finish inside run_now."""
    storage = open_storage(str(tmp_path))
    run_now(storage.write("users/a.json", b"{}"))
    assert run_now(storage.read("users/a.json")) == b"{}"
    assert run_now(storage.list("users/")) == ["users/a.json"]


def test_run_now_refuses_a_coroutine_that_waits() -> None:
    """A coroutine that would wait on something is closed and reported, never half-run silently."""
    from twisted.internet.defer import Deferred

    async def waits() -> None:
        await Deferred()

    with pytest.raises(RuntimeError, match="waited"):
        run_now(waits())


# Pure parts of fsck ------------------------------------------------------------


def test_named_tarballs_reads_bare_names_and_urls() -> None:
    """Local documents name bare files, mirrored ones URLs: both give the file name."""
    document = {"versions": {
        "1.0.0": {"dist": {"tarball": "x-1.0.0.tgz"}},
        "2.0.0": {"dist": {"tarball": "https://registry.example/@s/x/-/x-2.0.0.tgz"}},
        "3.0.0": {"dist": {}},
        "4.0.0": "not a manifest",
    }}
    assert named_tarballs(document) == {
        "x-1.0.0.tgz": ("1.0.0", {"tarball": "x-1.0.0.tgz"}),
        "x-2.0.0.tgz": ("2.0.0", {"tarball": "https://registry.example/@s/x/-/x-2.0.0.tgz"}),
    }


def test_tarball_matches_prefers_integrity_over_shasum(tmp_path: Path) -> None:
    """dist.integrity decides when present (as the mirror checks downloads); else dist.shasum."""
    path = write(tmp_path / "t.tgz", b"good bytes")
    good, bad = dist_of(b"good bytes"), dist_of(b"other bytes")
    assert tarball_matches(str(path), good)
    assert not tarball_matches(str(path), bad)
    assert tarball_matches(str(path), {**bad, "integrity": good["integrity"]})
    assert not tarball_matches(str(path), dist_of(b"other bytes", integrity=False))
    assert tarball_matches(str(path), {"tarball": "t.tgz"})  # nothing recorded: nothing contradicts


def test_temporary_file_names() -> None:
    """nopard's own temporary files are recognised; tarballs and documents are not."""
    assert all(map(is_temporary, (".tmp-abc", ".fetch-123", ".htpasswd-q1")))
    assert not any(map(is_temporary, ("x-1.0.0.tgz", "package.json", ".quarantine", "tmp-x")))


def test_parse_document_refuses_what_is_no_document() -> None:
    """Broken JSON, a list, or versions that are not an object: None."""
    assert parse_document(b'{"name": "x", "versions": {}}') == {"name": "x", "versions": {}}
    assert parse_document(b"[1]") is None
    assert parse_document(b'{"versions": []}') is None
    assert parse_document(b'{"versions": {') is None


def test_summary_counts_by_kind() -> None:
    """The summary line: counts checked, then all well or the findings per kind."""
    report = ScanReport(documents=3, tarballs=5)
    assert report.summary() == "fsck: 3 documents, 5 tarballs checked; all well"
    report.findings = [type("F", (), {"kind": k})() for k in ("orphan", "corrupt", "orphan")]
    assert report.summary() == "fsck: 3 documents, 5 tarballs checked; 3 problems (1 corrupt, 2 orphan)"


# The scan ---------------------------------------------------------------------


def scan(root: str, htpasswd_path: str | None = None, quarantine: bool = True) -> ScanReport:
    """fsck's scan of the filesystem store at ``root``."""
    return run_now(scan_in(open_storage(root), htpasswd_path, quarantine=quarantine))


def collect(root: str, report: ScanReport, dry_run: bool = False) -> list:
    """gc's removal in the filesystem store at ``root``."""
    return run_now(collect_in(open_storage(root), report, dry_run=dry_run))


def test_fresh_unnamed_tarball_is_not_an_orphan_yet(tmp_path: Path) -> None:
    """A tarball written minutes ago may be a publish whose document is about to be written."""
    area = local_package(tmp_path, "x", {"1.0.0": b"one"})
    write(area / "tarballs" / "x-2.0.0.tgz", b"publishing")
    assert scan(str(tmp_path)).findings == []


def test_fresh_temporary_files_are_writes_in_progress(tmp_path: Path) -> None:
    """Temporary files younger than the settle time are left alone; older ones reported."""
    write(tmp_path / ".spool" / ".fetch-now", b"...")
    write(tmp_path / ".spool" / ".fetch-old", b"...", old=True)
    assert [f.path for f in scan(str(tmp_path)).findings] == [".spool/.fetch-old"]


def test_a_second_corrupt_copy_does_not_overwrite_the_first_in_quarantine(tmp_path: Path) -> None:
    """Quarantining the same path twice keeps both copies."""
    area = local_package(tmp_path, "x", {"1.0.0": b"one"})
    tarball = area / "tarballs" / "x-1.0.0.tgz"
    for bad in (b"bad one", b"bad two"):
        write(tarball, bad)
        scan(str(tmp_path))
    quarantined = tmp_path / QUARANTINE / "packages" / "x" / "tarballs"
    assert sorted(p.read_bytes() for p in quarantined.iterdir()) == [b"bad one", b"bad two"]


def test_scan_without_quarantine_moves_nothing(tmp_path: Path) -> None:
    """quarantine=False (gc --dry-run) reports the corrupt tarball where it is."""
    area = local_package(tmp_path, "x", {"1.0.0": b"one"})
    write(area / "tarballs" / "x-1.0.0.tgz", b"bad")
    [finding] = scan(str(tmp_path), quarantine=False).findings
    assert (finding.kind, finding.location) == ("corrupt", "packages/x/tarballs/x-1.0.0.tgz")
    assert not (tmp_path / QUARANTINE).exists()


def test_scoped_packages_and_unreadable_meta(tmp_path: Path) -> None:
    """Scoped package folders are scanned; an upstream meta.json that is not JSON is reported."""
    area = local_package(tmp_path, "@s/x", {"1.0.0": b"one"})
    write(area / "upstream" / "meta.json", "garbage")
    report = scan(str(tmp_path))
    assert (report.documents, report.tarballs) == (1, 1)
    assert [f.line() for f in report.findings] == ["unreadable packages/@s/x/upstream/meta.json: not a JSON object"]


def test_htpasswd_temp_files_beside_an_outside_htpasswd(tmp_path: Path) -> None:
    """With NOPARD_HTPASSWD outside the registry, its folder's .htpasswd-* leftovers are reported too."""
    registry, etc = tmp_path / "registry", tmp_path / "etc"
    registry.mkdir()
    write(etc / "htpasswd", "a:b\n")
    left = write(etc / ".htpasswd-xyz", "a:b\n", old=True)
    [finding] = scan(str(registry), str(etc / "htpasswd")).findings
    assert (finding.kind, finding.path) == ("temporary", str(left))


def test_collect_removes_garbage_and_the_quarantine_only(tmp_path: Path) -> None:
    """gc removes orphans, temp files and the quarantine, never a missing-tarball finding's document."""
    area = local_package(tmp_path, "x", {"1.0.0": b"one", "2.0.0": b"two"})
    (area / "tarballs" / "x-2.0.0.tgz").unlink()
    write(area / "tarballs" / "x-0.1.0.tgz", b"orphan", old=True)
    write(area / "tarballs" / "x-1.0.0.tgz", b"corrupt")
    report = scan(str(tmp_path))
    assert sorted(f.kind for f in report.findings) == ["corrupt", "missing", "orphan"]
    assert sorted(f.kind for f in collect(str(tmp_path), report, dry_run=True)) == ["corrupt", "orphan"]
    assert (tmp_path / QUARANTINE).exists()
    removed = collect(str(tmp_path), report)
    assert sorted(f.kind for f in removed) == ["corrupt", "orphan"]
    assert not (tmp_path / QUARANTINE).exists()
    assert sorted(os.listdir(area)) == ["package.json", "tarballs"]
    assert [f.kind for f in scan(str(tmp_path)).findings] == ["missing", "missing"]


# Import rules -----------------------------------------------------------------


def test_choose_versions_keeps_only_verified_tarballs() -> None:
    """Missing, corrupt and invalid versions are skipped with a reason; no checksum at all is accepted."""
    document = {"versions": {
        "1.0.0": {"dist": dist_of(b"one")},
        "1.1.0": {"dist": dist_of(b"eleven")},
        "1.2.0": {"dist": dist_of(b"twelve")},
        "1.3.0": {"dist": {"tarball": "x-1.3.0.tgz"}},
        "latest": {"dist": {}},
    }}
    files = {"1.0.0": b"one", "1.1.0": b"corrupted", "1.3.0": b"unchecked"}
    copies = {version: Copied.of(data) for version, data in files.items()}
    kept, skipped = choose_versions("x", document, lambda version, dist: copies.get(version))
    assert kept == {"1.0.0": copies["1.0.0"], "1.3.0": copies["1.3.0"]}
    assert skipped == [("1.1.0", "its tarball does not match its checksums"),
                       ("1.2.0", "its tarball is missing"), ("latest", "not a valid version entry")]


def test_local_document_drops_foreign_fields_and_skipped_versions() -> None:
    """Verdaccio's private fields go; tags and times of skipped versions go; latest is recomputed."""
    raw = {"_id": "x", "name": "x", "_rev": "3-abc", "_uplinks": {}, "_distfiles": {}, "_attachments": {},
           "dist-tags": {"latest": "2.0.0", "beta": "1.1.0-beta.1"}, "readme": "# x",
           "time": {"created": "c", "modified": "m", "1.0.0": "t1", "2.0.0": "t2", "1.1.0-beta.1": "tb"},
           "maintainers": [{"name": "alice", "email": "a@example.com"}],
           "versions": {v: {"name": "x", "version": v, "readme": "per version", "dist": dist_of(v.encode())}
                        for v in ("1.0.0", "1.1.0-beta.1", "2.0.0")}}
    document = local_document("x", raw, {"1.0.0": Copied.of(b"1.0.0"), "1.1.0-beta.1": Copied.of(b"1.1.0-beta.1")})
    assert not {"_rev", "_uplinks", "_distfiles", "_attachments"} & set(document)
    assert document["dist-tags"] == {"beta": "1.1.0-beta.1", "latest": "1.0.0"}
    assert document["time"] == {"created": "c", "modified": "m", "1.0.0": "t1", "1.1.0-beta.1": "tb"}
    assert document["versions"]["1.0.0"]["dist"]["tarball"] == "x-1.0.0.tgz"
    assert "readme" not in document["versions"]["1.0.0"] and document["readme"] == "# x"


def test_local_document_fills_in_what_nopard_needs() -> None:
    """Maintainers from the versions (so someone may publish next), readme from latest, checksums computed."""
    raw = {"name": "@s/x", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": {
        "version": "1.0.0", "readme": "# readme", "_npmUser": {"name": "bob", "email": "b@example.com"},
        "dist": {"tarball": "http://old.example/@s/x/-/@s/x-1.0.0.tgz"}}}}
    document = local_document("@s/x", raw, {"1.0.0": Copied.of(b"data")})
    assert document["maintainers"] == [{"name": "bob", "email": "b@example.com"}]
    assert (document["readme"], document["readmeFilename"]) == ("# readme", "README.md")
    assert document["versions"]["1.0.0"]["dist"] == {**dist_of(b"data", "x-1.0.0.tgz"),
                                                     "tarball": "x-1.0.0.tgz"}
    assert document["versions"]["1.0.0"]["_id"] == "@s/x@1.0.0"


def test_a_nopard_document_comes_through_unchanged() -> None:
    """keep_rev (nopard's own layout) with every version kept: the very same document."""
    raw = {"_id": "x", "name": "x", "dist-tags": {"latest": "1.0.0"}, "time": {"1.0.0": "t"},
           "maintainers": [{"name": "a", "email": ""}], "readme": "", "readmeFilename": "",
           "versions": {"1.0.0": {"name": "x", "version": "1.0.0", "_id": "x@1.0.0",
                                  "dist": dist_of(b"d", "x-1.0.0.tgz")}},
           "_rev": "2-abc"}
    document = local_document("x", raw, {"1.0.0": Copied.of(b"d")}, keep_rev=True)
    assert document == raw and list(document) == list(raw)


def test_newest_prefers_releases() -> None:
    """latest falls on the highest release, a prerelease only when there is nothing else."""
    assert newest(["1.0.0", "2.0.0-rc.1", "1.10.0"]) == "1.10.0"
    assert newest(["2.0.0-rc.1", "2.0.0-rc.2"]) == "2.0.0-rc.2"


def test_merge_for_import_keeps_what_is_here() -> None:
    """Versions, tags and times already here win; the import only adds."""
    here = {"name": "x", "versions": {"1.0.0": {"here": True}}, "dist-tags": {"latest": "1.0.0"},
            "time": {"1.0.0": "here"}}
    imported = {"name": "x", "versions": {"1.0.0": {"here": False}, "2.0.0": {}},
                "dist-tags": {"latest": "2.0.0", "next": "2.0.0"}, "time": {"1.0.0": "there", "2.0.0": "t"},
                "readme": "# x"}
    merged = merge_for_import(here, imported)
    assert merged["versions"] == {"1.0.0": {"here": True}, "2.0.0": {}}
    assert merged["dist-tags"] == {"latest": "1.0.0", "next": "2.0.0"}
    assert merged["time"] == {"1.0.0": "here", "2.0.0": "t"} and merged["readme"] == "# x"
    assert merge_for_import(None, imported) is imported


def test_mirrored_document_gets_the_upstream_urls_back() -> None:
    """A cached document's tarball URLs become the upstream's again; private fields go."""
    raw = {"name": "ms", "_rev": "7-x", "_distfiles": {}, "versions": {
        "1.0.0": {"dist": {"tarball": "http://localhost:4873/ms/-/ms-1.0.0.tgz"}}}}
    document = mirrored_document(raw, {"ms-1.0.0.tgz": "https://registry.example/ms/-/ms-1.0.0.tgz"})
    assert document == {"name": "ms", "versions": {
        "1.0.0": {"dist": {"tarball": "https://registry.example/ms/-/ms-1.0.0.tgz"}}}}


def test_password_hash_kinds() -> None:
    """bcrypt and {SHA} are imported as they are; the others are named in the report."""
    assert password_hash_kind("$2y$05$abcdefghijklmnopqrstuv") is None
    assert password_hash_kind("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=") is None
    assert password_hash_kind("$apr1$salt$hash") == "Apache MD5 ($apr1$)"
    assert password_hash_kind("abJnggxhB/yWI") == "crypt"
    assert password_hash_kind("plain") == "unknown"


# Layout detection ---------------------------------------------------------------


def test_detects_a_verdaccio_config_folder_and_its_storage() -> None:
    """The config folder and its storage/ both read as Verdaccio, with htpasswd found beside config.yaml."""
    for path in (IMPORTS / "verdaccio", IMPORTS / "verdaccio" / "storage"):
        source = detect_source(str(path))
        assert (source.layout, source.root) == ("verdaccio", str(IMPORTS / "verdaccio" / "storage"))
        assert source.htpasswd == str(IMPORTS / "verdaccio" / "htpasswd")
        cached = {p.name: p.cached for p in source.packages}
        assert cached == {"@acme/strings": False, "greeter": False, "ms": True}


def test_detects_a_nopar_registry() -> None:
    """registry.json and <name>/<name>.json: nopar, with _proxied packages counted as cached."""
    source = detect_source(str(IMPORTS / "nopar"))
    assert source.layout == "nopar" and source.htpasswd is None
    assert {p.name: p.cached for p in source.packages} == {"@acme/strings": False, "greeter": False, "ms": True}
    ms = next(p for p in source.packages if p.name == "ms")
    assert ms.upstream_urls["ms-2.1.3.tgz"] == "https://registry.example/ms/-/ms-2.1.3.tgz"


def test_detects_a_nopard_export_even_when_empty(tmp_path: Path) -> None:
    """The export marker alone says nopard (an export of a registry without packages)."""
    write(tmp_path / "nopard-export.json", "{}")
    assert detect_source(str(tmp_path)).layout == "nopard"


def test_unreadable_documents_are_listed_not_fatal(tmp_path: Path) -> None:
    """A broken package.json in a Verdaccio storage is listed; the other packages still come."""
    write(tmp_path / "good" / "package.json", json.dumps({"name": "good", "versions": {}}))
    write(tmp_path / "bad" / "package.json", "{")
    source = detect_source(str(tmp_path))
    assert [p.name for p in source.packages] == ["good"]
    assert source.unreadable == [f"{tmp_path / 'bad' / 'package.json'}: not a package document"]


def test_a_folder_without_a_registry_is_refused(tmp_path: Path) -> None:
    """No package documents in any known layout: SourceError naming what was looked for."""
    write(tmp_path / "readme.txt", "hi")
    with pytest.raises(SourceError, match="holds no registry nopard can import"):
        detect_source(str(tmp_path))
    with pytest.raises(SourceError, match="--htpasswd .*: no such file"):
        detect_source(str(IMPORTS / "nopar"), str(tmp_path / "missing"))


def test_export_target_must_be_new_or_empty(tmp_path: Path) -> None:
    """An absent or empty TO is fine; a file or a folder with something in it is not."""
    check_export_target(str(tmp_path / "new"))
    check_export_target(str(tmp_path))
    write(tmp_path / "x", "x")
    with pytest.raises(SourceError):
        check_export_target(str(tmp_path))
    with pytest.raises(SourceError):
        check_export_target(str(tmp_path / "x"))


# htpasswd and token helpers ------------------------------------------------------


def test_replace_entry_edits_in_place_and_removes(tmp_path: Path) -> None:
    """A user's line is replaced where it is, comments and others kept; None removes it; no-ops say so."""
    path = tmp_path / "htpasswd"
    path.write_text("# users\nalice:old:autocreated 2025\nbob:b\n")
    assert replace_entry(str(path), "alice", "new")
    assert path.read_text() == "# users\nalice:new\nbob:b\n"
    assert not replace_entry(str(path), "alice", "new")
    assert replace_entry(str(path), "carol", "c") and parse_htpasswd(path.read_text())["carol"] == "c"
    assert replace_entry(str(path), "bob", None)
    assert path.read_text() == "# users\nalice:new\ncarol:c\n"
    assert not replace_entry(str(path), "bob", None)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_token_store_lists_and_revokes_by_key_and_user(tmp_path: Path) -> None:
    """records() never holds tokens; revoke_key and revoke_user remove the right records."""
    storage = open_storage(str(tmp_path))
    tokens = TokenStore(storage)
    first = run_now(tokens.create("alice", "2026-01-01T00:00:00.000Z"))
    run_now(tokens.create("alice", "2026-01-02T00:00:00.000Z", readonly=True))
    bobs = run_now(tokens.create("bob", "2026-01-03T00:00:00.000Z"))
    records = run_now(tokens.records())
    assert [(r.user, r.readonly) for r in records] == [("alice", False), ("alice", True), ("bob", False)]
    assert first not in repr(records)
    assert run_now(tokens.revoke_key(records[0].key)) == records[0]
    assert run_now(tokens.lookup(first)) is None and run_now(tokens.revoke_key(records[0].key)) is None
    assert run_now(tokens.revoke_user("alice")) == 1
    assert [r.user for r in run_now(tokens.records())] == ["bob"] and run_now(tokens.lookup(bobs))
