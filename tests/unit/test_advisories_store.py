"""Importing OSV records into the store: files, directories, zips, replacement by `modified`,
withdrawn records, malformed records and zip bombs, and nopard-admin advisories import."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from nopard.advisories import sources
from nopard.advisories.sources import SourceError, read_source
from nopard.advisories.store import AdvisoryStore, ImportReport, parse_items
from nopard.cli.admin import main as admin
from nopard.cli.maintenance import open_storage, run_now
from nopard.storage import keys
from tests.support import REPO

DATA = REPO / "tests" / "data" / "advisories"


def write(folder: Path, osv_id: str, package: str = "pkg", modified: str = "2026-11-01T00:00:00Z",
          **fields: Any) -> Path:
    """An npm record file ``<id>.json`` in ``folder`` affecting every version of ``package`` below 2.0.0."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {"id": osv_id, "modified": modified, "summary": f"{osv_id} in {package}",
            "affected": [{"package": {"ecosystem": "npm", "name": package},
                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "2.0.0"}]}]}],
            **fields}
    path = folder / f"{osv_id}.json"
    path.write_text(json.dumps(body))
    return path


def load(store: AdvisoryStore, path: Path | str) -> ImportReport:
    """Import ``path`` into ``store``."""
    report = ImportReport()
    return run_now(store.import_records(parse_items(read_source(str(path)), report), report))


def found(store: AdvisoryStore, *names: str) -> dict[str, list[str]]:
    """name -> the ids of its advisories in force."""
    return {name: [a.id for a in advisories] for name, advisories in run_now(store.advisories_for(names)).items()}


@pytest.fixture
def store(tmp_path: Path) -> AdvisoryStore:
    """An advisory store over a fresh filesystem store."""
    return AdvisoryStore(open_storage(str(tmp_path / "registry")))


def test_a_directory_is_imported_npm_records_only(store: AdvisoryStore) -> None:
    """The test records: two npm ones stored, the PyPI one skipped and counted, one summary line."""
    report = load(store, DATA)
    assert (report.read, report.new, report.other_ecosystems, report.problem_count) == (3, 2, 1, 0)
    assert found(store, "ms", "balanced-match", "bytes") == {"ms": ["GHSA-2222-3333-4444"],
                                                            "balanced-match": ["MAL-2099-0001"]}
    assert report.summary() == ("advisories: 3 records read, 2 new, 0 updated, 0 unchanged, 0 withdrawn, "
                                "1 of other ecosystems skipped, 0 malformed skipped")


def test_importing_the_same_records_again_changes_nothing(store: AdvisoryStore, tmp_path: Path) -> None:
    """A second import finds every record unchanged and writes no shard."""
    load(store, DATA)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "registry" / "advisories" / "packages").iterdir()}
    report = load(store, DATA)
    assert (report.new, report.updated, report.unchanged) == (0, 0, 2)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "registry" / "advisories" / "packages").iterdir()} == before


def test_a_later_modified_replaces_the_record_and_an_earlier_one_does_not(store: AdvisoryStore,
                                                                          tmp_path: Path) -> None:
    """Replacement by id: a newer copy moves the record to another package; an older copy is ignored."""
    load(store, write(tmp_path / "v1", "GHSA-2222-3333-6666", "left-pad"))
    newer = load(store, write(tmp_path / "v2", "GHSA-2222-3333-6666", "right-pad", "2026-11-02T00:00:00Z"))
    older = load(store, write(tmp_path / "v0", "GHSA-2222-3333-6666", "left-pad", "2026-10-01T00:00:00Z"))
    assert (newer.updated, older.unchanged) == (1, 1)
    assert found(store, "left-pad", "right-pad") == {"right-pad": ["GHSA-2222-3333-6666"]}


def test_a_withdrawn_record_takes_its_advisories_out_for_good(store: AdvisoryStore, tmp_path: Path) -> None:
    """Withdrawn: the advisory is gone, and re-importing the older copy does not bring it back."""
    first = write(tmp_path / "v1", "GHSA-2222-3333-7777", "left-pad")
    load(store, first)
    report = load(store, write(tmp_path / "v2", "GHSA-2222-3333-7777", "left-pad", "2026-11-02T00:00:00Z",
                               withdrawn="2026-11-02T00:00:00Z"))
    assert report.withdrawn == 1 and found(store, "left-pad") == {}
    assert load(store, first).unchanged == 1 and found(store, "left-pad") == {}


def test_a_malformed_record_is_reported_by_file_name_and_the_rest_imported(store: AdvisoryStore,
                                                                            tmp_path: Path) -> None:
    """One broken file among good ones: it is named with its reason, the others are stored."""
    folder = tmp_path / "mixed"
    write(folder, "GHSA-2222-3333-8888", "left-pad")
    (folder / "broken.json").write_text('{"id": "GHSA-2222-3333-9999", "modified": "soon"}')
    report = load(store, folder)
    assert report.new == 1 and report.problems == [("broken.json", "modified: not an RFC 3339 time: 'soon'")]
    assert found(store, "left-pad") == {"left-pad": ["GHSA-2222-3333-8888"]}


def test_a_zip_as_osv_publishes_it_is_imported(store: AdvisoryStore, tmp_path: Path) -> None:
    """all.zip: one <id>.json member per record."""
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(DATA.iterdir()):
            zipped.write(path, path.name)
    report = load(store, archive)
    assert (report.read, report.new, report.other_ecosystems) == (3, 2, 1)


def test_a_zip_member_inflating_past_the_bound_is_skipped(store: AdvisoryStore, tmp_path: Path) -> None:
    """A zip bomb member (5 MB of spaces compressing to a few KB) is reported and not read whole."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("BOMB-1.json", b" " * (sources.MAX_RECORD_SIZE + 1024 * 1024))
        zipped.write(write(tmp_path / "good", "GHSA-2222-3333-2222", "left-pad"), "GHSA-2222-3333-2222.json")
    assert archive.stat().st_size < 64 * 1024
    report = load(store, archive)
    assert report.problems == [("bomb.zip:BOMB-1.json", f"larger than {sources.MAX_RECORD_SIZE} bytes")]
    assert report.new == 1


def test_a_path_that_is_no_source_is_refused(tmp_path: Path) -> None:
    """Missing, or a file that is neither JSON nor a zip: SourceError naming it."""
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "missing", tmp_path / "notes.txt"):
        with pytest.raises(SourceError, match=str(path)):
            read_source(str(path))


def test_malware_changes_are_reported_for_the_blocks(store: AdvisoryStore, tmp_path: Path) -> None:
    """A MAL record put in, then withdrawn: each change is listed with whether it is in force."""
    report = load(store, DATA)
    assert [(a.id, a.package, a.range, live) for a, live in report.malware] == \
        [("MAL-2099-0001", "balanced-match", "5.0.0", True)]
    body = json.loads((DATA / "MAL-2099-0001.json").read_text())
    body.update(modified="2026-11-04T00:00:00Z", withdrawn="2026-11-04T00:00:00Z")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "MAL-2099-0001.json").write_text(json.dumps(body))
    withdrawn = load(store, tmp_path / "w")
    assert [(a.id, live) for a, live in withdrawn.malware] == [("MAL-2099-0001", False)]


def test_advisory_keys_are_known_kinds_not_exported(tmp_path: Path, store: AdvisoryStore) -> None:
    """Every key an import writes is of kind "advisories" (so export and fsck know it)."""
    load(store, DATA)
    listing = run_now(open_storage(str(tmp_path / "registry")).list("advisories/"))
    assert listing and {keys.key_kind(key) for key in listing} == {keys.ADVISORIES}


def test_nopard_admin_advisories_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command imports a directory, lists a malformed file on stderr, prints the summary (and the
    malware blocks it changed), exits 1."""
    registry = tmp_path / "registry"
    registry.mkdir()
    folder = tmp_path / "records"
    shutil.copytree(DATA, folder)
    (folder / "broken.json").write_text("[]")
    assert admin(["advisories", "import", str(folder), "--registry-path", str(registry)]) == 1
    out, err = capsys.readouterr()
    assert "skipped broken.json: not a JSON object" in err
    assert out.splitlines() == ["advisories: 4 records read, 2 new, 0 updated, 0 unchanged, 0 withdrawn, "
                                "1 of other ecosystems skipped, 1 malformed skipped",
                                "malware blocks: 1 package changed"]
    assert admin(["advisories", "import", str(DATA), "--registry-path", str(registry)]) == 0
    assert "2 unchanged" in capsys.readouterr().out
