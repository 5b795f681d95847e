"""Which versions of a document the firewall withholds, and why: pure values and functions.

A ``Block`` is an admin's (or an advisory's) rule ``name@range``; ranges are
npm's, matched by node-semver's Python port with prereleases included (a
block of ``>=1.2.3 <1.2.6`` also withholds ``1.2.4-evil.0``, as an OSV range
from 1.2.3 to 1.2.6 would). Quarantine withholds a mirrored version until it
is ``min_age`` seconds old by the upstream's ``time``; a version without a
time counts as young. ``hidden_versions`` decides both for one document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import nodesemver

from nopard.domain.errors import InvalidInput
from nopard.domain.names import is_version, validate_name
from nopard.domain.packument import version_key
from nopard.domain.times import iso_time, parse_time

ADMIN = "admin"  # the source of blocks an admin adds (an advisory's blocks carry its id)
BLOCKED = "blocked"
QUARANTINED = "quarantined"
MAX_RANGE_LENGTH = 256
MAX_REASON_LENGTH = 500
MAX_SOURCE_LENGTH = 128


@lru_cache(maxsize=4096)
def _range(text: str) -> Any:
    """node-semver's compiled range (parsed once per range text)."""
    return nodesemver.make_range(text, False)


def range_problem(text: object) -> str | None:
    """Why ``text`` is not an npm version range a block can hold, or None."""
    if not isinstance(text, str) or not text.strip():
        return "a range must be a non-empty string (use * for every version)"
    if len(text) > MAX_RANGE_LENGTH:
        return f"a range is at most {MAX_RANGE_LENGTH} characters"
    try:
        if nodesemver.valid_range(text, False) is None:
            return f"not an npm version range: {text!r}"
        _range(text)
    except (ValueError, TypeError):
        return f"not an npm version range: {text!r}"
    return None


def in_range(version: str, text: str) -> bool:
    """Whether ``version`` satisfies the npm range ``text``, prereleases included."""
    try:
        # A parsed version: given a string with include_prerelease, the port ignores prerelease
        # tags in every comparison (1.2.3-beta would satisfy >=1.2.3); parsed, it compares as npm.
        return bool(_range(text).test(nodesemver.make_semver(version, False), include_prerelease=True))
    except (ValueError, TypeError):  # a version node-semver cannot read matches nothing
        return False


def parse_spec(spec: str) -> tuple[str, str]:
    """``name@range`` (``@scope/name@range``; a bare name means every version) as (name, range)."""
    if not isinstance(spec, str):
        raise InvalidInput("a block is written name@range")
    spec = spec.strip()
    at = spec.find("@", 1)
    name, text = (spec, "*") if at < 0 else (spec[:at], spec[at + 1 :].strip() or "*")
    validate_name(name)
    problem = range_problem(text)
    if problem is not None:
        raise InvalidInput(problem)
    return name, text


@dataclass(frozen=True)
class Block:
    """Versions of ``name`` in ``range`` withheld for ``reason``; ``source`` is ``admin`` or an advisory id."""

    name: str
    range: str
    reason: str
    source: str = ADMIN
    created: float = 0.0

    @property
    def id(self) -> str:
        """Names this block (its name, range and source) in URLs and the command line."""
        text = "\0".join((self.name, self.range, self.source))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def spec(self) -> str:
        """``name@range`` as written."""
        return f"{self.name}@{self.range}"

    def matches(self, version: str) -> bool:
        """Whether this block withholds ``version``."""
        return in_range(version, self.range)

    def to_json(self) -> dict[str, Any]:
        """The stored and served form."""
        return {"id": self.id, "name": self.name, "range": self.range, "reason": self.reason,
                "source": self.source, "created": iso_time(self.created)}

    @classmethod
    def from_json(cls, value: Any) -> Block:
        """A block from its stored form (``to_json``); InvalidInput if it is not one."""
        if not isinstance(value, dict):
            raise InvalidInput("a block is a JSON object")
        return make_block(value.get("name"), value.get("range"), value.get("reason"),
                          value.get("source", ADMIN), parse_time(value.get("created")) or 0.0)


def make_block(name: Any, text: Any, reason: Any, source: Any, created: float) -> Block:
    """A validated block (InvalidInput saying what is wrong)."""
    if not isinstance(name, str):
        raise InvalidInput("a block names a package")
    validate_name(name)
    problem = range_problem(text)
    if problem is not None:
        raise InvalidInput(problem)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(f"a block has a reason of 1 to {MAX_REASON_LENGTH} characters")
    if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_LENGTH or not source.isprintable():
        raise InvalidInput(f"a block's source is 1 to {MAX_SOURCE_LENGTH} printable characters")
    assert isinstance(text, str)
    return Block(name, text.strip(), reason.strip(), source, created)


@dataclass(frozen=True)
class Hidden:
    """Why a version is withheld: ``kind`` BLOCKED or QUARANTINED, what to tell, and until when.

    ``until``: when a quarantined version is released (None: never by itself:
    blocked, or no time known); ``published``: its upstream time, if any.
    """

    kind: str
    reason: str
    until: float | None = None
    published: float | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """For pages and APIs."""
        return {"kind": self.kind, "reason": self.reason, "source": self.source,
                "until": None if self.until is None else iso_time(self.until),
                "published": None if self.published is None else iso_time(self.published)}


def quarantine_reason(name: str, version: str, until: float | None) -> str:
    """What a client asking for a quarantined version is told."""
    if until is None:
        return f"{name}@{version} is quarantined: the upstream gives no publish time, so it counts as new"
    return f"{name}@{version} is quarantined until {iso_time(until)} (published less than the minimum release age ago)"


def block_reason(name: str, version: str, block: Block) -> str:
    """What a client asking for a blocked version is told."""
    return f"{name}@{version} is blocked by {block.spec} ({block.source}): {block.reason}"


def hidden_versions(
    document: dict[str, Any], now: float, min_age: float | None, blocks: Iterable[Block],
    exclusions: Collection[str] = (),
) -> dict[str, Hidden]:
    """The versions of ``document`` withheld at ``now``, each with why.

    ``min_age`` None or 0: no quarantine (the name is excluded, or the setting
    is off). ``exclusions``: versions never quarantined (published here).
    A block wins over quarantine: it does not end by itself.
    """
    name = str(document.get("name", ""))
    versions = document.get("versions")
    if not isinstance(versions, dict):
        return {}
    own = [block for block in blocks if block.name == name]
    times = document.get("time")
    times = times if isinstance(times, dict) else {}
    hidden: dict[str, Hidden] = {}
    for version in versions:
        block = next((b for b in own if b.matches(version)), None)
        if block is not None:
            hidden[version] = Hidden(BLOCKED, block_reason(name, version, block), None,
                                     parse_time(times.get(version)), block.source)
        elif min_age and version not in exclusions:
            published = parse_time(times.get(version))
            if published is None or now - published < min_age:
                until = None if published is None else published + min_age
                hidden[version] = Hidden(QUARANTINED, quarantine_reason(name, version, until), until, published)
    return hidden


def next_release(hidden: dict[str, Hidden]) -> float | None:
    """When the first of the withheld versions leaves quarantine (None: none will by itself)."""
    instants = [entry.until for entry in hidden.values() if entry.until is not None]
    return min(instants) if instants else None


def _is_prerelease(version: str) -> bool:
    return "-" in version.split("+", 1)[0]


def _moved_tag(target: str, visible: list[str]) -> str | None:
    """The newest visible version below ``target`` a tag moves back to; a prerelease only if ``target`` is one."""
    below = version_key(target)
    allowed = _is_prerelease(target)
    candidates = [v for v in visible if version_key(v) < below and (allowed or not _is_prerelease(v))]
    return max(candidates, key=version_key) if candidates else None


def withhold(document: dict[str, Any], hidden: dict[str, Hidden], min_age: float | None = None,
             exclusions: Collection[str] = ()) -> dict[str, Any]:
    """``document`` as served with the ``hidden`` versions gone from it.

    Their manifests and times go; a dist-tag naming one moves back to the
    newest visible version below it (never to a prerelease unless it named
    one) or goes. Under quarantine (``min_age``), ``time.modified`` becomes
    the instant the newest served version was released here, so it moves
    when a version leaves quarantine, and every served version is older.
    """
    if not hidden and not min_age:
        return document
    served = dict(document)
    versions = {v: m for v, m in document.get("versions", {}).items() if v not in hidden}
    served["versions"] = versions
    raw_times = document.get("time")
    times = {k: t for k, t in raw_times.items() if k not in hidden} if isinstance(raw_times, dict) else {}
    if min_age:
        released = [published + (0 if v in exclusions else min_age)
                    for v in versions if (published := parse_time(times.get(v))) is not None]
        if released:
            times["modified"] = iso_time(max(released))
    if times or isinstance(raw_times, dict):
        served["time"] = times
    visible = [v for v in versions if is_version(v)]
    tags = {}
    for tag, target in (document.get("dist-tags") or {}).items():
        if target not in hidden:
            tags[tag] = target
        elif is_version(target):
            moved = _moved_tag(target, visible)
            if moved is not None:
                tags[tag] = moved
    served["dist-tags"] = tags
    return served
