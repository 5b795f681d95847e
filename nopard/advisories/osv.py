"""OSV records (the Open Source Vulnerability format) read into what npm's audit needs.

Pure functions: a record's bytes in, its npm advisories out, or a RecordError saying
what is wrong with it. A record names affected packages by ecosystem and name, and
their versions by ``ranges`` (SEMVER or ECOSYSTEM: ordered ``introduced`` / ``fixed``
/ ``last_affected`` / ``limit`` events) and by exact ``versions``; nopard turns those
into the node-semver range string npm prints (``>=1.0.0 <1.2.6 || 2.0.0``).
Severity is the record's ``database_specific.severity`` (GitHub's word), else the
band of its CVSS score, else critical for malware (``MAL-`` ids) and npm's own
default, high, for the rest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

from nopard.domain.errors import InvalidInput
from nopard.domain.names import is_version, validate_name
from nopard.domain.packument import version_key

ECOSYSTEM = "npm"
SEVERITIES = ("info", "low", "moderate", "high", "critical")
MALWARE_PREFIX = "MAL-"
# OSV ids are a database prefix and an id in it (GHSA-xxxx-xxxx-xxxx, MAL-2025-1234, CVE-...).
_ID = re.compile(r"[A-Z][A-Za-z0-9]*-[A-Za-z0-9._:-]{1,120}")
_CWE = re.compile(r"CWE-[0-9]{1,6}")
_WORDS = {"critical": "critical", "high": "high", "moderate": "moderate", "medium": "moderate", "low": "low"}
_SCORES = {"CVSS_V4": CVSS4, "CVSS_V3": CVSS3, "CVSS_V2": CVSS2}
_RANGE_TYPES = ("SEMVER", "ECOSYSTEM")
_EVENTS = ("introduced", "fixed", "last_affected", "limit")
MAX_TITLE = 200
MAX_VERSIONS = 5000  # exact versions one affected package may list


class RecordError(ValueError):
    """A record nopard cannot use; the message says which field and why."""


@dataclass(frozen=True)
class Advisory:
    """What one OSV record says about one npm package."""

    id: str
    package: str
    modified: str  # UTC, ISO 8601: compares as text
    range: str  # node-semver range of the affected versions
    severity: str  # one of SEVERITIES
    title: str
    url: str | None = None
    aliases: tuple[str, ...] = ()
    cwe: tuple[str, ...] = ()
    cvss: dict[str, Any] | None = None
    withdrawn: bool = False

    @property
    def malicious(self) -> bool:
        """Whether the record reports malware (its versions are to be blocked, not just audited)."""
        return self.id.startswith(MALWARE_PREFIX)

    def to_json(self) -> dict[str, Any]:
        """The stored form (nopard.advisories.store)."""
        return {"id": self.id, "package": self.package, "modified": self.modified, "range": self.range,
                "severity": self.severity, "title": self.title, "url": self.url, "aliases": list(self.aliases),
                "cwe": list(self.cwe), "cvss": self.cvss, "withdrawn": self.withdrawn}

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> Advisory:
        """Back from ``to_json``."""
        return cls(stored["id"], stored["package"], stored["modified"], stored["range"], stored["severity"],
                   stored["title"], stored.get("url"), tuple(stored.get("aliases", ())),
                   tuple(stored.get("cwe", ())), stored.get("cvss"), bool(stored.get("withdrawn")))


@dataclass(frozen=True)
class Record:
    """One OSV record: its id, when it last changed, and its npm advisories (none: another ecosystem)."""

    id: str
    modified: str
    advisories: tuple[Advisory, ...] = field(default=())
    withdrawn: bool = False


def numeric_id(osv_id: str) -> int:
    """A stable number for ``osv_id`` (npm's bulk answers carry numbers); below 2**53, exact in JavaScript."""
    return int(hashlib.sha256(osv_id.encode()).hexdigest()[:13], 16)


def parse_record(data: bytes) -> Record:
    """The record in ``data`` (JSON); RecordError when it is no OSV record nopard can use."""
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise RecordError(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    osv_id = record.get("id")
    if not isinstance(osv_id, str) or not _ID.fullmatch(osv_id):
        raise RecordError(f"id: not an OSV id: {str(osv_id)[:80]!r}")
    modified = _time(record.get("modified"), "modified")
    withdrawn = record.get("withdrawn") is not None
    if withdrawn:
        _time(record["withdrawn"], "withdrawn")
    affected = record.get("affected", [])
    if not isinstance(affected, list):
        raise RecordError("affected: not a list")
    aliases = tuple(_strings(record.get("aliases", []), "aliases"))
    specific = record.get("database_specific")
    specific = specific if isinstance(specific, dict) else {}
    cwe = tuple(c for c in _strings(specific.get("cwe_ids", []), "database_specific.cwe_ids") if _CWE.fullmatch(c))
    title = _title(record, osv_id)
    url = _url(record.get("references", []))
    found: dict[str, list[str]] = {}
    scores: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for index, entry in enumerate(affected):
        where = f"affected[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("package"), dict):
            raise RecordError(f"{where}.package: missing")
        package = entry["package"]
        if package.get("ecosystem") != ECOSYSTEM:
            continue
        name = package.get("name")
        try:
            validate_name(name if isinstance(name, str) else "")
        except InvalidInput as error:
            raise RecordError(f"{where}.package.name: {error.message}") from None
        found.setdefault(name, []).append(affected_range(entry, where))
        scores.setdefault(name, _severity(entry, record, osv_id))
    advisories = tuple(
        Advisory(osv_id, name, modified, " || ".join(_unique(ranges)), scores[name][0], title, url, aliases, cwe,
                 scores[name][1], withdrawn)
        for name, ranges in found.items()
    )
    return Record(osv_id, modified, advisories, withdrawn)


def affected_range(entry: dict[str, Any], where: str = "affected") -> str:
    """The node-semver range of the versions one ``affected`` entry names (its ranges and its versions)."""
    ranges = entry.get("ranges", [])
    if not isinstance(ranges, list):
        raise RecordError(f"{where}.ranges: not a list")
    intervals: list[Interval] = []
    for index, item in enumerate(ranges):
        if not isinstance(item, dict):
            raise RecordError(f"{where}.ranges[{index}]: not an object")
        if item.get("type") in _RANGE_TYPES:
            intervals += range_intervals(item, f"{where}.ranges[{index}]")
    versions = _strings(entry.get("versions", []), f"{where}.versions")
    if len(versions) > MAX_VERSIONS:
        raise RecordError(f"{where}.versions: more than {MAX_VERSIONS}")
    exact = [v for v in versions if is_version(v) and not any(i.contains(v) for i in intervals)]
    pieces = [i.text() for i in intervals] + _unique(exact)
    if not pieces:
        raise RecordError(f"{where}: names no npm versions (no SEMVER or ECOSYSTEM range, no versions)")
    return " || ".join(_unique(pieces))


@dataclass(frozen=True)
class Interval:
    """Affected versions from ``lower`` (None: the first) up to ``upper`` (None: every later one)."""

    lower: str | None
    upper: str | None
    upper_included: bool = False

    def contains(self, version: str) -> bool:
        """Whether ``version`` lies in the interval (semver precedence, prereleases included)."""
        key = version_key(version)
        if self.lower is not None and key < version_key(self.lower):
            return False
        if self.upper is None:
            return True
        upper = version_key(self.upper)
        return key <= upper if self.upper_included else key < upper

    def text(self) -> str:
        """As node-semver reads it: ``>=1.0.0 <1.2.6``, ``<=2.0.0``, ``*``."""
        parts = [f">={self.lower}"] if self.lower is not None else []
        if self.upper is not None:
            parts.append(f"{'<=' if self.upper_included else '<'}{self.upper}")
        return " ".join(parts) or "*"


def range_intervals(item: dict[str, Any], where: str = "range") -> list[Interval]:
    """The intervals of one SEMVER/ECOSYSTEM range: its events in version order, as OSV evaluates them.

    ``introduced`` opens an interval ("0": from the first version), ``fixed`` closes it before
    that version, ``last_affected`` after it; ``limit`` ends the whole range. An interval left
    open takes GitHub's ``database_specific.last_known_affected_version_range`` as its end when
    the record gives one.
    """
    events = item.get("events")
    if not isinstance(events, list) or not events:
        raise RecordError(f"{where}.events: missing")
    parsed: list[tuple[str, str]] = []
    for index, event in enumerate(events):
        if not isinstance(event, dict) or len(event) != 1 or next(iter(event)) not in _EVENTS:
            raise RecordError(f"{where}.events[{index}]: one of {', '.join(_EVENTS)} expected")
        kind, version = next(iter(event.items()))
        if not isinstance(version, str) or not (is_version(version) or (kind == "introduced" and version == "0")):
            raise RecordError(f"{where}.events[{index}].{kind}: not a version: {str(version)[:80]!r}")
        parsed.append((kind, version))
    if not any(kind == "introduced" for kind, _ in parsed):
        raise RecordError(f"{where}.events: no introduced event")
    # "0" first; at one version, an introduced event before the event closing it.
    parsed.sort(key=lambda event: ((-1,) if event[1] == "0" else version_key(event[1]), event[0] != "introduced"))
    intervals: list[Interval] = []
    lower: str | None = None
    is_open = False
    for kind, version in parsed:
        if kind == "introduced":
            if not is_open:
                lower, is_open = (None if version == "0" else version), True
        elif kind == "limit":
            if is_open:
                intervals.append(Interval(lower, version))
            return intervals
        elif is_open:
            intervals.append(Interval(lower, version, kind == "last_affected"))
            is_open = False
    if is_open:
        intervals.append(Interval(lower, *_known_end(item)))
    return intervals


def _known_end(item: dict[str, Any]) -> tuple[str | None, bool]:
    """GitHub's ``last_known_affected_version_range`` ("<= 1.2.3", "< 1.2.3") as an upper end, if given."""
    specific = item.get("database_specific")
    text = specific.get("last_known_affected_version_range") if isinstance(specific, dict) else None
    if isinstance(text, str):
        match = re.fullmatch(r"\s*(<=?)\s*(\S+)\s*", text)
        if match and is_version(match[2]):
            return match[2], match[1] == "<="
    return None, False


def severity_of_score(score: float) -> str:
    """npm's word for a CVSS base score: 9+ critical, 7+ high, 4+ moderate, above 0 low, 0 info."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "moderate"
    return "low" if score > 0 else "info"


def _severity(entry: dict[str, Any], record: dict[str, Any], osv_id: str) -> tuple[str, dict[str, Any] | None]:
    """(severity, npm's ``cvss`` object or None) of one affected package of ``record``."""
    cvss: dict[str, Any] | None = None
    score = 0.0
    for holder in (entry, record):
        for item in holder.get("severity", []) if isinstance(holder.get("severity"), list) else []:
            kind = _SCORES.get(str(item.get("type"))) if isinstance(item, dict) else None
            vector = item.get("score") if isinstance(item, dict) else None
            if kind is None or not isinstance(vector, str) or len(vector) > 300:
                continue
            try:
                score = float(kind(vector).base_score)
            except (CVSSError, ValueError, KeyError, IndexError):
                continue
            cvss = {"score": score, "vectorString": vector}
            break
        if cvss:
            break
    specific = record.get("database_specific")
    word = specific.get("severity") if isinstance(specific, dict) else None
    if isinstance(word, str) and word.lower() in _WORDS:
        return _WORDS[word.lower()], cvss
    if cvss is not None:
        return severity_of_score(score), cvss
    return ("critical" if osv_id.startswith(MALWARE_PREFIX) else "high"), None


def _title(record: dict[str, Any], osv_id: str) -> str:
    for field_name in ("summary", "details"):
        text = record.get(field_name)
        if isinstance(text, str) and text.strip():
            line = text.strip().splitlines()[0].strip()
            return line if len(line) <= MAX_TITLE else line[: MAX_TITLE - 1] + "…"
    return osv_id


def _url(references: Any) -> str | None:
    """The record's own advisory link (an ADVISORY reference, else the first WEB one), if it has one."""
    if not isinstance(references, list):
        return None
    links = [r for r in references if isinstance(r, dict) and isinstance(r.get("url"), str)]
    for kind in ("ADVISORY", "WEB"):
        for reference in links:
            if reference.get("type") == kind and reference["url"].startswith(("https://", "http://")):
                return str(reference["url"])[:500]
    return None


def _time(value: Any, where: str) -> str:
    """An RFC 3339 time as UTC ISO text (which compares in time order), or RecordError."""
    if not isinstance(value, str):
        raise RecordError(f"{where}: missing")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RecordError(f"{where}: not an RFC 3339 time: {value[:80]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RecordError(f"{where}: not a list of strings")
    return value


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
