"""``Firewall``: what is withheld of one document now, for the mirror to prepare it so.

It reads the settings (NOPARD_MIN_RELEASE_AGE and its exclusions), the
per-package rules of NOPARD_CONFIG and the package's blocks in the store, and
keeps what the status page and the metrics count: the versions withheld
among the documents this process prepared. Each version that leaves
quarantine is logged once by the process that notices.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from nopard.domain import names, packument
from nopard.domain.firewall import BLOCKED, QUARANTINED, Block, Hidden, hidden_versions, next_release, withhold
from nopard.firewall.blocks import BlockList
from nopard.settings.acl import Policy, glob_to_regex
from nopard.settings.config import LiveSettings

# Names whose counts are kept (the ones with something withheld only); beyond, the oldest go.
MAX_COUNTED = 100_000


@dataclass(frozen=True)
class Verdict:
    """A document as it is served now: ``document`` without the ``hidden`` versions.

    ``files``: each withheld version's tarball file (as served) to the version,
    under quarantine (``strict``) every version's; ``expires``: when the next
    version leaves quarantine (prepare again then).
    """

    document: dict[str, Any]
    hidden: dict[str, Hidden] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    expires: float | None = None
    strict: bool = False


def withheld_files(name: str, document: dict[str, Any], hidden: Collection[str]) -> dict[str, str]:
    """The tarball files of the ``hidden`` versions, by the names nopard serves them under."""
    files = {}
    versions = document.get("versions") or {}
    for version in hidden:
        manifest = versions.get(version)
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        served = packument.version_tarball_file(name, version, dist) if isinstance(dist, dict) else None
        for filename in {served, names.tarball_filename(name, version)}:
            if filename:
                files[filename] = version
    return files


class Firewall:
    """Decides, per document, what quarantine and blocks withhold now."""

    def __init__(self, settings: LiveSettings, policy: Policy, blocks: BlockList, now: Callable[[], float],
                 log: Logger | None = None) -> None:
        self._settings = settings
        self._policy = policy
        self.blocks = blocks
        self._now = now
        self._log = log or Logger()
        self._excluded: tuple[tuple[str, ...], Any] = ((), None)
        self.counts: dict[str, tuple[int, int]] = {}  # name: (quarantined, blocked), nonzero only
        self.refused = {QUARANTINED: 0, BLOCKED: 0}  # tarballs and versions refused since start
        self.block_changes = {"added": 0, "removed": 0}
        self.released = 0
        blocks.listeners.append(lambda what, block: self.block_changes.__setitem__(what, self.block_changes[what] + 1))
        self._quarantined: dict[str, frozenset[str]] = {}

    def min_age(self, name: str) -> float | None:
        """The quarantine of ``name``'s mirrored versions in seconds; None: none."""
        ruled = self._policy.min_release_age(name)
        if ruled is not None:
            return ruled or None
        current = self._settings.current
        if not current.min_release_age or self._is_excluded(name, current.min_release_age_exclude):
            return None
        return current.min_release_age

    def _is_excluded(self, name: str, patterns: tuple[str, ...]) -> bool:
        if not patterns:
            return False
        if self._excluded[0] != patterns:  # compiled once per value of the setting
            self._excluded = (patterns, [glob_to_regex(p) for p in patterns])
        return any(regex.fullmatch(name) for regex in self._excluded[1])

    async def judge(self, name: str, document: dict[str, Any], local_versions: Collection[str] | None,
                    blocks: list[Block] | None = None) -> Verdict:
        """``document`` of ``name`` as served now.

        ``local_versions``: the versions published here, never quarantined
        (None: the whole document is local); ``blocks``: the package's, if already read.
        """
        if blocks is None:
            blocks = await self.blocks.of(name)
        min_age = None if local_versions is None else self.min_age(name)
        exclusions = local_versions or ()
        now = self._now()
        hidden = hidden_versions(document, now, min_age, blocks, exclusions)
        self._note(name, hidden, document)
        if not hidden and not min_age:
            return Verdict(document)
        listed = document.get("versions", {}) if min_age else hidden
        return Verdict(withhold(document, hidden, min_age, exclusions), hidden,
                       withheld_files(name, document, listed), next_release(hidden), bool(min_age))

    def _note(self, name: str, hidden: dict[str, Hidden], document: dict[str, Any]) -> None:
        """Count what is withheld, and log each version that left quarantine since the last look."""
        quarantined = frozenset(v for v, h in hidden.items() if h.kind == QUARANTINED)
        blocked = sum(1 for h in hidden.values() if h.kind == BLOCKED)
        for version in sorted(self._quarantined.get(name, frozenset()) - quarantined):
            if version in document.get("versions", {}) and version not in hidden:
                self._log.info("quarantine-released {name}@{version}", name=name, version=version)
                self.released += 1
        if quarantined:
            self._quarantined[name] = quarantined
        else:
            self._quarantined.pop(name, None)
        if quarantined or blocked:
            self.counts.pop(name, None)
            self.counts[name] = (len(quarantined), blocked)
            while len(self.counts) > MAX_COUNTED:
                self.counts.pop(next(iter(self.counts)))
        else:
            self.counts.pop(name, None)
        while len(self._quarantined) > MAX_COUNTED:
            self._quarantined.pop(next(iter(self._quarantined)))

    def withheld_totals(self) -> dict[str, int]:
        """Versions withheld among the documents this process prepared, by kind."""
        return {QUARANTINED: sum(q for q, _ in self.counts.values()),
                BLOCKED: sum(b for _, b in self.counts.values())}

    def refusing(self, kind: str) -> None:
        """Count one request refused for a version withheld as ``kind``."""
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def status(self) -> dict[str, Any]:
        """For the status page and ``/-/nopard/status``."""
        return {"min_release_age": self._settings.current.min_release_age, "withheld": self.withheld_totals(),
                "refused": dict(self.refused), "released": self.released, "block_changes": dict(self.block_changes)}
