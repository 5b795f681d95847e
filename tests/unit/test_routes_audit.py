"""npm's audit endpoints in-process, answered by NOPARD_AUDIT: the stored advisories alone, the
upstream with the stored advisories when it fails, or both merged without duplicates."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.web.resource import Resource

from nopard.advisories.osv import numeric_id
from nopard.advisories.sources import read_source
from nopard.advisories.store import AdvisoryStore, ImportReport, parse_items
from tests.fake_advisories import AdvisoryZip, ZipServer
from tests.unit.route_harness import OPERATOR_TOKEN, InProcess, build

DATA = Path(__file__).parents[1] / "data" / "advisories"
BULK = "/-/npm/v1/security/advisories/bulk"
QUICK = "/-/npm/v1/security/audits/quick"
GHSA = "GHSA-2222-3333-4444"
OPERATOR = {"X_Nopard_Operator_Token": OPERATOR_TOKEN}


class AuditUpstream(Resource):
    """An upstream whose audits answer ``status`` with ``answer`` (and 404 for everything else)."""

    isLeaf = True

    def __init__(self, status: int, answer: Any) -> None:
        super().__init__()
        self.status, self.answer, self.audits = status, answer, 0

    def render(self, request: Any) -> bytes:
        self.audits += request.path.startswith(b"/-/npm/v1/security/")
        request.setResponseCode(self.status if request.path.startswith(b"/-/npm/v1/security/") else 404)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.answer).encode()


async def imported(app: InProcess) -> None:
    """The test records, imported into the app's store."""
    report = ImportReport()
    await AdvisoryStore(app.storage).import_records(parse_items(read_source(str(DATA)), report), report)
    assert report.new == 2


async def bulk(app: InProcess, asked: dict[str, list[str]], gzipped: bool = False) -> Any:
    """The bulk answer to ``asked``."""
    raw = json.dumps(asked).encode()
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    answer = await app.call("POST", BULK, raw=gzip.compress(raw) if gzipped else raw,
                            Content_Type="application/json", **headers)
    assert answer.status == 200, answer.body
    return answer.json()


@pytest_twisted.ensureDeferred
async def test_a_local_bulk_audit_lists_the_stored_advisory_as_npm_reads_it(tmp_path: Path) -> None:
    """NOPARD_AUDIT=local: ms 2.0.0 is in `<2.1.3` (high, CWE, CVSS, numeric id, OSV id in the title)."""
    app = build(tmp_path, audit="local")
    await imported(app)
    answer = await bulk(app, {"ms": ["2.0.0"], "bytes": ["3.1.2"]}, gzipped=True)
    [entry] = answer["ms"]
    assert set(answer) == {"ms"}
    assert entry == {"id": numeric_id(GHSA), "url": f"http://127.0.0.1:5984/-/npm/v1/security/advisories/{GHSA}",
                     "title": "Inefficient regular expression in ms (a record written for nopard's tests) "
                              f"({GHSA})", "severity": "high", "vulnerable_versions": "<2.1.3",
                     "cwe": ["CWE-1333"],
                     "cvss": {"score": 7.5, "vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"}}


@pytest_twisted.ensureDeferred
async def test_a_version_outside_the_range_gets_no_advisory(tmp_path: Path) -> None:
    """ms 2.1.3 is fixed: nothing to report."""
    app = build(tmp_path, audit="local")
    await imported(app)
    assert await bulk(app, {"ms": ["2.1.3"]}) == {}


@pytest_twisted.ensureDeferred
async def test_the_stored_advisories_answer_when_the_upstream_fails(tmp_path: Path) -> None:
    """Default NOPARD_AUDIT=upstream: a 500 from it is replaced by the stored answer."""
    upstream = AuditUpstream(500, {"error": "down"})
    app = build(tmp_path, upstream=upstream)
    await imported(app)
    answer = await bulk(app, {"ms": ["2.0.0"], "balanced-match": ["5.0.0"]})
    assert upstream.audits == 1
    assert [e["severity"] for e in answer["balanced-match"]] == ["critical"] and answer["ms"]


@pytest_twisted.ensureDeferred
async def test_without_stored_advisories_a_failing_upstream_stays_a_failure(tmp_path: Path) -> None:
    """Nothing imported: the upstream's 500 stays a failure (503), not "nothing vulnerable"."""
    app = build(tmp_path, upstream=AuditUpstream(500, {"error": "down"}))
    answer = await app.call("POST", BULK, body={"ms": ["2.0.0"]})
    assert answer.status == 503 and "answered 500" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_upstream_mode_passes_the_upstream_answer_on(tmp_path: Path) -> None:
    """With the upstream answering, its answer is the answer (the stored advisories are not added)."""
    app = build(tmp_path, upstream=AuditUpstream(200, {}))
    await imported(app)
    assert await bulk(app, {"ms": ["2.0.0"]}) == {}


@pytest_twisted.ensureDeferred
async def test_both_merges_without_repeating_an_advisory_the_upstream_has(tmp_path: Path) -> None:
    """NOPARD_AUDIT=both: the upstream's entry for the GHSA id stays alone; the stored malware one is added."""
    theirs = {"id": 1100001, "url": f"http://127.0.0.1:9/advisories/{GHSA}", "title": "ReDoS in ms",
              "severity": "moderate", "vulnerable_versions": "<2.1.3", "cwe": [], "cvss": {"score": 5}}
    app = build(tmp_path, audit="both", upstream=AuditUpstream(200, {"ms": [theirs]}))
    await imported(app)
    answer = await bulk(app, {"ms": ["2.0.0"], "balanced-match": ["5.0.0"]})
    assert answer["ms"] == [theirs]
    assert [e["id"] for e in answer["balanced-match"]] == [numeric_id("MAL-2099-0001")]


@pytest_twisted.ensureDeferred
async def test_a_quick_audit_is_answered_with_findings_and_counts(tmp_path: Path) -> None:
    """The quick audit (yarn 1, pnpm, npm 6): the advisory with the paths of the vulnerable copies."""
    app = build(tmp_path, audit="local")
    await imported(app)
    tree = {"name": "app", "version": "1.0.0", "requires": {"ms": "2.0.0", "debug": "2.6.9"},
            "dependencies": {"ms": {"version": "2.1.3"},
                             "debug": {"version": "2.6.9", "dependencies": {"ms": {"version": "2.0.0"}}}}}
    answer = await app.call("POST", QUICK, body=tree)
    assert answer.status == 200
    [advisory] = answer.json()["advisories"].values()
    assert advisory["module_name"] == "ms" and advisory["findings"] == [{"version": "2.0.0", "paths": ["debug>ms"]}]
    assert advisory["cves"] == ["CVE-2099-0001"] and advisory["github_advisory_id"] == GHSA
    assert answer.json()["metadata"]["vulnerabilities"]["high"] == 1


@pytest_twisted.ensureDeferred
async def test_names_that_are_no_package_names_have_no_advisories(tmp_path: Path) -> None:
    """pnpm's quick-audit tree names its importer "."; that and other non-names are simply not found."""
    app = build(tmp_path, audit="local")
    await imported(app)
    tree = {"name": "app", "dependencies": {".": {"version": "1.0.0", "dependencies": {"ms": {"version": "2.0.0"}}},
                                            "../x": {"version": "1.0.0"}}}
    answer = await app.call("POST", QUICK, body=tree)
    assert answer.status == 200
    assert [a["findings"] for a in answer.json()["advisories"].values()] == [[{"version": "2.0.0", "paths": [".>ms"]}]]
    assert await bulk(app, {".": ["1.0.0"], "ms": ["2.0.0"]}) != {}


@pytest_twisted.ensureDeferred
async def test_a_gzip_bomb_audit_body_is_refused(tmp_path: Path) -> None:
    """A gzipped body inflating past the audit bodies' limit: 413, nothing inflated beyond it."""
    app = build(tmp_path, audit="local")
    bomb = gzip.compress(b'{"ms": ["' + b"1" * (80 * 1024 * 1024) + b'"]}')
    answer = await app.call("POST", BULK, raw=bomb, Content_Type="application/json", Content_Encoding="gzip")
    assert answer.status == 413 and "decompressed body is larger" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_bulk_body_of_another_shape_is_refused(tmp_path: Path) -> None:
    """A bulk body must map names to lists of versions."""
    app = build(tmp_path, audit="local")
    answer = await app.call("POST", BULK, body={"ms": "2.0.0"})
    assert answer.status == 400


@pytest_twisted.ensureDeferred
async def test_the_advisory_url_serves_the_stored_record(tmp_path: Path) -> None:
    """An audit entry's url (the record gave none) shows the stored advisory; an unknown id is 404."""
    app = build(tmp_path, audit="local")
    await imported(app)
    answer = await app.call("GET", f"/-/npm/v1/security/advisories/{GHSA}")
    assert answer.status == 200 and answer.json()["advisories"][0]["range"] == "<2.1.3"
    assert (await app.call("GET", "/-/npm/v1/security/advisories/GHSA-2222-3333-0000")).status == 404


@pytest_twisted.ensureDeferred
async def test_the_advisories_sync_job_runs_on_demand_and_shows_in_the_status(tmp_path: Path) -> None:
    """POST /-/nopard/sync {"job": "advisories"} imports NOPARD_ADVISORIES_URL's zip; the status lists its run."""
    app = build(tmp_path, audit="local", advisories_url="http://127.0.0.1:9/osv/npm/all.zip",
                upstream=ZipServer(AdvisoryZip(DATA)))
    answer = await app.call("POST", "/-/nopard/sync", {"job": "advisories"}, **OPERATOR)
    assert answer.status == 200
    [report] = answer.json()["reports"]
    assert (report["job"], report["checked"], report["changed"]) == ("advisories", 3, 2)
    status = (await app.call("GET", "/-/nopard/sync")).json()
    assert status["jobs"]["advisories"]["changed"] == 2
    assert (await bulk(app, {"ms": ["2.0.0"]}))["ms"][0]["vulnerable_versions"] == "<2.1.3"
