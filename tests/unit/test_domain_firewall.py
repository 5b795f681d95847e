"""The firewall's rules (nopard.domain.firewall): npm ranges, block specs, which versions are withheld."""

from __future__ import annotations

import pytest

from nopard.domain.errors import InvalidInput
from nopard.domain.firewall import (
    BLOCKED,
    QUARANTINED,
    Block,
    hidden_versions,
    in_range,
    next_release,
    parse_spec,
    range_problem,
    withhold,
)
from nopard.domain.times import iso_time

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.mark.parametrize(("version", "text", "expected"), [
    ("1.2.5", ">=1.2.3 <1.2.6", True),
    ("1.2.6", ">=1.2.3 <1.2.6", False),
    ("1.2.2", ">=1.2.3 <1.2.6", False),
    ("1.2.4-evil.0", ">=1.2.3 <1.2.6", True),  # prereleases inside the range are withheld too
    ("1.2.3-beta", ">=1.2.3 <1.2.6", False),  # before 1.2.3, as npm orders them
    ("0.1.0-beta.1", "<0.1.0", True),
    ("1.2.6-rc.1", "<1.2.6", True),
    ("1.9.0", "^1.0.0", True),
    ("2.0.0", "^1.0.0", False),
    ("0.0.1", "*", True),
    ("3.0.0-rc.1", "*", True),
    ("1.2.3", "1.2.3", True),
    ("1.2.4", "1.2.3", False),
    ("2.6.0", "1.x || >=2.5.0", True),
    ("1.0.0", "~1.0.0", True),
    ("1.1.0", "~1.0.0", False),
])
def test_npm_ranges(version: str, text: str, expected: bool) -> None:
    """Ranges match as node-semver does with prereleases included."""
    assert in_range(version, text) is expected


@pytest.mark.parametrize("text", ["", "  ", "!!bad", "1.2.3 <<< 4", "x" * 300, None, 3])
def test_bad_ranges_are_refused(text: object) -> None:
    """What is no npm range is told apart, with a reason."""
    assert range_problem(text)


@pytest.mark.parametrize(("spec", "expected"), [
    ("left-pad@>=1.2.3 <1.2.6", ("left-pad", ">=1.2.3 <1.2.6")),
    ("@scope/pkg@^1.0.0", ("@scope/pkg", "^1.0.0")),
    ("@scope/pkg", ("@scope/pkg", "*")),
    ("left-pad", ("left-pad", "*")),
    ("left-pad@", ("left-pad", "*")),
])
def test_specs(spec: str, expected: tuple[str, str]) -> None:
    """``name@range`` is read the way npm writes a spec; a bare name blocks every version."""
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["Bad Name@1", "left-pad@!!", "@scope@1.0.0", ""])
def test_bad_specs_are_refused(spec: str) -> None:
    """A spec with no valid name or range is an InvalidInput."""
    with pytest.raises(InvalidInput):
        parse_spec(spec)


def test_block_round_trips_and_has_a_stable_id() -> None:
    """A block survives its stored form; its id depends on name, range and source, not the reason."""
    block = Block("left-pad", "^1.0.0", "hijacked", "admin", NOW)
    again = Block.from_json(block.to_json())
    assert again == block
    assert Block("left-pad", "^1.0.0", "other words", "admin").id == block.id
    assert Block("left-pad", "^1.0.0", "hijacked", "MAL-2025-1").id != block.id


def document(times: dict[str, float | None], latest: str) -> dict:
    versions = {v: {"name": "pkg", "version": v} for v in times}
    time = {v: iso_time(t) for v, t in times.items() if t is not None}
    return {"name": "pkg", "versions": versions, "dist-tags": {"latest": latest}, "time": time}


def test_young_and_timeless_versions_are_quarantined() -> None:
    """A version younger than the minimum age, or without a time, is withheld; an old one is not."""
    doc = document({"1.0.0": NOW - 10 * DAY, "1.1.0": NOW - DAY, "1.2.0": None}, "1.2.0")
    hidden = hidden_versions(doc, NOW, 3 * DAY, [])
    assert set(hidden) == {"1.1.0", "1.2.0"}
    assert hidden["1.1.0"].kind == QUARANTINED
    assert hidden["1.1.0"].until == NOW + 2 * DAY
    assert iso_time(NOW + 2 * DAY) in hidden["1.1.0"].reason
    assert hidden["1.2.0"].until is None
    assert next_release(hidden) == NOW + 2 * DAY


def test_no_quarantine_without_a_minimum_age_and_for_exclusions() -> None:
    """min_age None withholds nothing young; excluded (local) versions are never quarantined."""
    doc = document({"1.0.0": NOW - DAY, "1.1.0": NOW}, "1.1.0")
    assert hidden_versions(doc, NOW, None, []) == {}
    assert set(hidden_versions(doc, NOW, 3 * DAY, [], exclusions={"1.1.0"})) == {"1.0.0"}


def test_blocks_withhold_their_range_and_win_over_quarantine() -> None:
    """A blocked version is withheld with the block's reason, young or old, and never released by itself."""
    doc = document({"1.2.2": NOW - 10 * DAY, "1.2.4": NOW - 10 * DAY, "1.2.5": NOW}, "1.2.5")
    blocks = [Block("pkg", ">=1.2.3 <1.2.6", "stole tokens", "admin", NOW), Block("other", "*", "x")]
    hidden = hidden_versions(doc, NOW, 3 * DAY, blocks)
    assert set(hidden) == {"1.2.4", "1.2.5"}
    assert all(entry.kind == BLOCKED and "stole tokens" in entry.reason for entry in hidden.values())
    assert next_release(hidden) is None


def test_withheld_versions_leave_every_part_of_the_document() -> None:
    """A quarantined latest goes with its time; latest moves back to the newest old-enough release."""
    doc = document({"1.0.0": NOW - 20 * DAY, "1.1.0": NOW - 10 * DAY, "2.0.0-rc.1": NOW - 9 * DAY,
                    "1.2.0": NOW - DAY}, "1.2.0")
    doc["dist-tags"]["next"] = "1.2.0"
    hidden = hidden_versions(doc, NOW, 3 * DAY, [])
    served = withhold(doc, hidden, 3 * DAY)
    assert set(served["versions"]) == {"1.0.0", "1.1.0", "2.0.0-rc.1"}
    assert "1.2.0" not in served["time"]
    assert served["dist-tags"] == {"latest": "1.1.0", "next": "1.1.0"}
    assert doc["dist-tags"]["latest"] == "1.2.0"  # the stored document is untouched


def test_a_prerelease_tag_may_move_to_a_prerelease() -> None:
    """A tag naming a prerelease moves to the newest visible version below it, prereleases included."""
    doc = document({"1.0.0": NOW - 20 * DAY, "2.0.0-rc.1": NOW - 10 * DAY, "2.0.0-rc.2": NOW}, "1.0.0")
    doc["dist-tags"]["next"] = "2.0.0-rc.2"
    served = withhold(doc, hidden_versions(doc, NOW, 3 * DAY, []), 3 * DAY)
    assert served["dist-tags"] == {"latest": "1.0.0", "next": "2.0.0-rc.1"}


def test_a_tag_with_nothing_below_goes() -> None:
    """When every version is withheld, no dist-tag names one."""
    doc = document({"1.0.0": NOW}, "1.0.0")
    served = withhold(doc, hidden_versions(doc, NOW, 3 * DAY, []), 3 * DAY)
    assert served["versions"] == {} and served["dist-tags"] == {}


def test_modified_moves_when_a_version_is_released() -> None:
    """Under quarantine ``modified`` is when the newest served version was released, so it changes at a release."""
    doc = document({"1.0.0": NOW - 20 * DAY, "1.1.0": NOW - DAY}, "1.1.0")
    doc["time"]["modified"] = iso_time(NOW - DAY)
    before = withhold(doc, hidden_versions(doc, NOW, 3 * DAY, []), 3 * DAY)
    later = NOW + 2 * DAY
    after = withhold(doc, hidden_versions(doc, later, 3 * DAY, []), 3 * DAY)
    assert "1.1.0" not in before["versions"] and "1.1.0" in after["versions"]
    assert before["time"]["modified"] < after["time"]["modified"] == iso_time(later)
    times = [t for k, t in after["time"].items() if k not in ("modified", "created")]
    assert all(t <= after["time"]["modified"] for t in times)
