"""OSV records read into npm advisories: ranges, severities, and what a malformed record is told."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nopard.advisories.osv import RecordError, numeric_id, parse_record, range_intervals, severity_of_score
from nopard.domain.firewall import in_range
from tests.support import REPO

DATA = REPO / "tests" / "data" / "advisories"


def record(**fields: Any) -> bytes:
    """A minimal npm record for package ``pkg``, with ``fields`` replacing the defaults."""
    base: dict[str, Any] = {"id": "GHSA-2222-3333-5555", "modified": "2026-11-01T00:00:00Z",
                            "affected": [{"package": {"ecosystem": "npm", "name": "pkg"},
                                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}]}
    return orjson.dumps({**base, **fields})


def ranged(*events: dict[str, str], **specific: Any) -> str:
    """The npm range of one SEMVER range with ``events``."""
    item: dict[str, Any] = {"type": "SEMVER", "events": list(events), **specific}
    affected = [{"package": {"ecosystem": "npm", "name": "pkg"}, "ranges": [item]}]
    return parse_record(record(affected=affected)).advisories[0].range


def test_a_github_record_gives_its_range_severity_cvss_and_cwe() -> None:
    """The test GHSA record: `<2.1.3`, high (GitHub's word), CVSS 7.5 with its vector, its CWE and alias."""
    parsed = parse_record((DATA / "GHSA-2222-3333-4444.json").read_bytes())
    [advisory] = parsed.advisories
    assert (advisory.package, advisory.range, advisory.severity) == ("ms", "<2.1.3", "high")
    assert advisory.cvss == {"score": 7.5, "vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"}
    assert advisory.cwe == ("CWE-1333",) and advisory.aliases == ("CVE-2099-0001",)
    assert advisory.title.startswith("Inefficient regular expression in ms") and not advisory.malicious


def test_a_malware_record_lists_exact_versions_and_is_critical() -> None:
    """The test MAL record: exactly version 5.0.0, critical though it gives no severity, malicious."""
    [advisory] = parse_record((DATA / "MAL-2099-0001.json").read_bytes()).advisories
    assert (advisory.range, advisory.severity, advisory.malicious) == ("5.0.0", "critical", True)


def test_a_record_of_another_ecosystem_has_no_npm_advisories() -> None:
    """A PyPI record parses, with nothing for npm."""
    assert parse_record((DATA / "PYSEC-2099-1.json").read_bytes()).advisories == ()


@pytest.mark.parametrize(("events", "expected"), [
    ([{"introduced": "1.0.0"}, {"fixed": "1.2.6"}], ">=1.0.0 <1.2.6"),
    ([{"introduced": "0"}, {"last_affected": "2.0.0"}], "<=2.0.0"),
    ([{"introduced": "0"}], "*"),
    ([{"introduced": "3.0.0"}], ">=3.0.0"),
    ([{"fixed": "1.5.0"}, {"introduced": "2.0.0"}, {"introduced": "1.0.0"}, {"fixed": "2.1.0"}],
     ">=1.0.0 <1.5.0 || >=2.0.0 <2.1.0"),
    ([{"introduced": "1.0.0"}, {"limit": "1.4.0"}], ">=1.0.0 <1.4.0"),
    ([{"introduced": "1.0.0-beta.1"}, {"fixed": "1.0.0"}], ">=1.0.0-beta.1 <1.0.0"),
])
def test_events_become_the_node_semver_range_npm_prints(events: list[dict[str, str]], expected: str) -> None:
    """introduced/fixed/last_affected/limit events, in any order, become one `||`-joined range."""
    assert ranged(*events) == expected


def test_an_open_github_range_ends_at_its_last_known_affected_version() -> None:
    """GitHub's `last_known_affected_version_range` closes a range that has no fixed event."""
    assert ranged({"introduced": "0"}, database_specific={"last_known_affected_version_range": "<= 1.4.2"}) \
        == "<=1.4.2"


def test_listed_versions_outside_the_ranges_are_added_and_the_rest_left_out() -> None:
    """`versions` that the ranges already hold add nothing; others are added exactly."""
    affected = [{"package": {"ecosystem": "npm", "name": "pkg"}, "versions": ["1.0.0", "1.1.0", "3.0.0"],
                 "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.0.0"}, {"fixed": "2.0.0"}]}]}]
    assert parse_record(record(affected=affected)).advisories[0].range == ">=1.0.0 <2.0.0 || 3.0.0"


def test_git_ranges_are_ignored() -> None:
    """A GIT range names commits, not npm versions: only the SEMVER one counts."""
    affected = [{"package": {"ecosystem": "npm", "name": "pkg"},
                 "ranges": [{"type": "GIT", "repo": "x", "events": [{"introduced": "abc123"}]},
                            {"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.0.1"}]}]}]
    assert parse_record(record(affected=affected)).advisories[0].range == "<1.0.1"


@pytest.mark.parametrize(("score", "severity"), [(9.8, "critical"), (9.0, "critical"), (7.5, "high"),
                                                 (5.3, "moderate"), (3.1, "low"), (0.0, "info")])
def test_cvss_scores_fall_in_npm_severity_bands(score: float, severity: str) -> None:
    """CVSS bands: 9 critical, 7 high, 4 moderate, above 0 low, 0 info."""
    assert severity_of_score(score) == severity


def test_the_severity_comes_from_the_cvss_vector_without_a_database_word() -> None:
    """A CVSS 4 vector scored 9.3 makes a record without database_specific.severity critical."""
    vector = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"
    [advisory] = parse_record(record(severity=[{"type": "CVSS_V4", "score": vector}])).advisories
    assert advisory.severity == "critical" and advisory.cvss == {"score": 9.3, "vectorString": vector}


def test_a_record_without_any_severity_is_high_as_npm_assumes() -> None:
    """No word, no vector, no malware: npm's own default, high."""
    assert parse_record(record()).advisories[0].severity == "high"


def test_a_withdrawn_record_is_marked_withdrawn() -> None:
    """`withdrawn` set: the record and its advisories say so."""
    parsed = parse_record(record(withdrawn="2026-11-05T00:00:00Z"))
    assert parsed.withdrawn and parsed.advisories[0].withdrawn


@pytest.mark.parametrize(("fields", "problem"), [
    ({"id": "not an id"}, "id"),
    ({"modified": "yesterday"}, "modified"),
    ({"affected": "pkg"}, "affected"),
    ({"affected": [{"package": {"ecosystem": "npm", "name": "../etc"}, "versions": ["1.0.0"]}]},
     "affected[0].package.name"),
    ({"affected": [{"package": {"ecosystem": "npm", "name": "pkg"},
                    "ranges": [{"type": "SEMVER", "events": [{"introduced": "0", "fixed": "1.0.0"}]}]}]},
     "affected[0].ranges[0].events[0]"),
    ({"affected": [{"package": {"ecosystem": "npm", "name": "pkg"},
                    "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "one"}]}]}]},
     "affected[0].ranges[0].events[1].fixed"),
    ({"affected": [{"package": {"ecosystem": "npm", "name": "pkg"}}]}, "affected[0]: names no npm versions"),
])
def test_a_malformed_record_is_refused_naming_the_field(fields: dict[str, Any], problem: str) -> None:
    """Each broken field is named in the error."""
    with pytest.raises(RecordError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_record(record(**fields))


def test_bytes_that_are_no_json_object_are_refused() -> None:
    """Not JSON, or JSON that is not an object: RecordError."""
    for data in (b"{", b"[1]"):
        with pytest.raises(RecordError):
            parse_record(data)


def test_numeric_ids_are_stable_and_exact_in_javascript() -> None:
    """The same OSV id always gives the same number, below 2**53."""
    assert numeric_id("MAL-2099-0001") == numeric_id("MAL-2099-0001") < 2**53
    assert numeric_id("MAL-2099-0001") != numeric_id("MAL-2099-0002")


VERSIONS = st.builds(lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-{pre}.1" if pre else ""),
                     st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.sampled_from(["", "", "beta"]))
EVENTS = st.lists(st.one_of(st.builds(lambda v: {"introduced": v}, st.one_of(st.just("0"), VERSIONS)),
                            st.builds(lambda v: {"fixed": v}, VERSIONS),
                            st.builds(lambda v: {"last_affected": v}, VERSIONS)), min_size=1, max_size=6)


@given(EVENTS, st.lists(VERSIONS, min_size=1, max_size=8))
def test_the_range_text_holds_exactly_the_versions_the_events_do(events: list[dict[str, str]],
                                                                  probes: list[str]) -> None:
    """node-semver (in_range, prereleases included) reads the range text as holding the same versions as the
    intervals: a version of the range that npm would read otherwise would be audited or blocked wrongly."""
    events = [{"introduced": "0"}, *events]
    intervals = range_intervals({"type": "SEMVER", "events": events})
    text = " || ".join(interval.text() for interval in intervals) or "<0.0.0-0"
    for version in probes:
        assert in_range(version, text) == any(i.contains(version) for i in intervals)


@pytest.mark.parametrize(("version", "text", "expected"), [
    ("0.1.0-beta.1", "<0.1.0", True), ("1.2.6-rc.1", ">=1.0.0 <1.2.6", True),
    ("1.2.3-beta", ">=1.2.3 <1.2.6", False), ("1.2.3-beta", "1.2.3", False), ("2.0.0-beta", "*", True),
])
def test_prereleases_are_ordered_as_npm_orders_them(version: str, text: str, expected: bool) -> None:
    """in_range agrees with npm's semver (includePrerelease) where node-semver's Python port alone does not."""
    assert in_range(version, text) is expected
