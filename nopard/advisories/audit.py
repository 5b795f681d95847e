"""npm audit answered from the stored advisories, the upstream, or both (NOPARD_AUDIT).

npm 11 posts ``{name: [version, ...]}`` to ``/-/npm/v1/security/advisories/bulk`` and
reads ``{name: [{id, url, title, severity, vulnerable_versions, cwe, cvss}]}`` (arborist's
audit-report.js; metavuln-calculator's advisory.js tests each installed version against
``vulnerable_versions``). Older clients (npm 6, yarn 1, pnpm) post a lockfile-shaped tree
to ``/-/npm/v1/security/audits/quick`` (or ``audits``) and read ``{advisories: {id:
{module_name, vulnerable_versions, findings, ...}}, metadata}``. Both answers carry
numeric ids, as the public registry's do (osv.numeric_id), and name the OSV id in the title.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from nopard.advisories.osv import SEVERITIES, Advisory, numeric_id
from nopard.advisories.store import AdvisoryStore
from nopard.domain.errors import InvalidInput, NotFound, UpstreamUnavailable
from nopard.domain.firewall import in_range
from nopard.settings.config import LiveSettings
from nopard.upstream.audit import AuditForwarder

BULK = "/-/npm/v1/security/advisories/bulk"
MAX_PACKAGES = 200_000  # package entries one quick-audit tree may hold
_IDS = re.compile(r"\b(?:GHSA(?:-[23456789cfghjmpqrvwx]{4}){3}|CVE-\d{4}-\d{4,}|MAL-\d{4}-\d+)\b", re.IGNORECASE)


def bulk_request(payload: Any) -> dict[str, list[str]]:
    """The names and versions of a bulk request; InvalidInput for any other shape."""
    if not isinstance(payload, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in payload.values()):
        raise InvalidInput("a bulk audit body maps package names to lists of versions")
    return payload


def quick_request(payload: Any) -> dict[str, dict[str, list[str]]]:
    """name -> version -> the paths (``a>b``) it is installed at, from a quick-audit tree."""
    if not isinstance(payload, dict):
        raise InvalidInput("an audit body is a JSON object")
    found: dict[str, dict[str, list[str]]] = {}
    pending: list[tuple[str, Any]] = [("", payload.get("dependencies"))]
    seen = 0
    while pending:
        parent, dependencies = pending.pop()
        if not isinstance(dependencies, dict):
            continue
        for name, entry in dependencies.items():
            seen += 1
            if seen > MAX_PACKAGES:
                raise InvalidInput(f"an audit tree of more than {MAX_PACKAGES} packages")
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
                continue
            path = f"{parent}>{name}" if parent else name
            found.setdefault(name, {}).setdefault(entry["version"], []).append(path)
            pending.append((path, entry.get("dependencies")))
    return found


def _title(advisory: Advisory) -> str:
    return advisory.title if advisory.id in advisory.title else f"{advisory.title} ({advisory.id})"


def _url(advisory: Advisory, base_url: str) -> str:
    return advisory.url or f"{base_url}/-/npm/v1/security/advisories/{advisory.id}"


def bulk_entry(advisory: Advisory, base_url: str) -> dict[str, Any]:
    """One advisory as the bulk endpoint lists it."""
    return {"id": numeric_id(advisory.id), "url": _url(advisory, base_url), "title": _title(advisory),
            "severity": advisory.severity, "vulnerable_versions": advisory.range, "cwe": list(advisory.cwe),
            "cvss": advisory.cvss or {"score": 0, "vectorString": None}}


Known = Callable[[str], set[str]]  # name -> the advisory ids the upstream already reports for it
Payload = Callable[[], Awaitable[Any]]  # the request body as JSON, decoded (gunzipped, bounded) by the web layer


def _nothing_known(name: str) -> set[str]:
    return set()


def _ids(advisory: Advisory) -> set[str]:
    return {advisory.id.upper(), *(alias.upper() for alias in advisory.aliases)}


def bulk_answer(found: dict[str, list[Advisory]], asked: dict[str, list[str]], base_url: str,
                known: Known = _nothing_known) -> dict[str, Any]:
    """The bulk answer: per name, the advisories some asked version of it is in (and ``known`` lacks)."""
    answer: dict[str, Any] = {}
    for name, versions in asked.items():
        entries = [bulk_entry(a, base_url) for a in found.get(name, [])
                   if not _ids(a) & known(name) and any(in_range(version, a.range) for version in versions)]
        if entries:
            answer[name] = entries
    return answer


def quick_answer(found: dict[str, list[Advisory]], tree: dict[str, dict[str, list[str]]],
                 base_url: str, known: Known = _nothing_known) -> dict[str, Any]:
    """The quick-audit answer (npm 6's shape, which yarn 1 and pnpm read too)."""
    advisories: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    for name, installed in tree.items():
        for advisory in found.get(name, []):
            findings = [{"version": version, "paths": paths} for version, paths in sorted(installed.items())
                        if in_range(version, advisory.range)]
            if not findings or _ids(advisory) & known(name):
                continue
            entry = bulk_entry(advisory, base_url)
            aliases = (advisory.id, *advisory.aliases)
            advisories[str(entry["id"])] = {
                **entry, "module_name": name, "findings": findings,
                "cves": [a for a in aliases if a.startswith("CVE-")],
                "github_advisory_id": next((a for a in aliases if a.startswith("GHSA-")), None),
                "overview": advisory.title, "recommendation": "", "patched_versions": "",
                "access": "public", "created": advisory.modified, "updated": advisory.modified,
                "deleted": None, "references": "", "found_by": None, "reported_by": None,
            }
            counts[advisory.severity] += sum(len(f["paths"]) for f in findings)
    total = sum(len(versions) for versions in tree.values())
    return {"actions": [], "advisories": advisories, "muted": [],
            "metadata": {"vulnerabilities": {severity: counts[severity] for severity in SEVERITIES},
                         "dependencies": total, "devDependencies": 0, "optionalDependencies": 0,
                         "totalDependencies": total}}


def known_ids(entry: Any) -> set[str]:
    """The advisory ids (GHSA, CVE, MAL) an upstream entry names in its url, title or fields."""
    if not isinstance(entry, dict):
        return set()
    text = " ".join(str(entry.get(k, "")) for k in ("url", "title", "github_advisory_id", "cves"))
    return {match.upper() for match in _IDS.findall(text)}


def merge_bulk(upstream: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The upstream's bulk answer with the local entries (of advisories it lacks) added."""
    result = {name: list(entries) for name, entries in upstream.items() if isinstance(entries, list)}
    for name, entries in local.items():
        result.setdefault(name, []).extend(entries)
    return result


def merge_quick(upstream: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The upstream's quick-audit answer with the local advisories (it lacks) added and counted."""
    advisories = {**(upstream.get("advisories") or {}), **local["advisories"]}
    given = upstream.get("metadata")
    metadata: dict[str, Any] = given if isinstance(given, dict) else local["metadata"]
    counts = dict(metadata.get("vulnerabilities") or {})
    for severity, count in local["metadata"]["vulnerabilities"].items():
        counts[severity] = counts.get(severity, 0) + count
    return {**upstream, "advisories": advisories, "metadata": {**metadata, "vulnerabilities": counts}}


def upstream_known(upstream: dict[str, Any], bulk: bool) -> Known:
    """What the upstream's answer already reports, as ``known`` for the local answer."""
    if bulk:
        by_name = {name: set().union(*(known_ids(e) for e in entries))
                   for name, entries in upstream.items() if isinstance(entries, list)}
        return lambda name: by_name.get(name, set())
    listed = upstream.get("advisories")
    every = set().union(*(known_ids(e) for e in listed.values())) if isinstance(listed, dict) else set()
    return lambda name: every


class Audits:
    """Answers audit requests by NOPARD_AUDIT: the upstream, the stored advisories, or both merged."""

    def __init__(self, settings: LiveSettings, store: AdvisoryStore, forwarder: AuditForwarder) -> None:
        self._settings = settings
        self._store = store
        self._forwarder = forwarder

    async def answer(self, path: str, body: bytes, headers: dict[str, str], base_url: str,
                     payload: Payload) -> tuple[int, bytes, str]:
        """(status, body, content type) of the answer to an audit POST of ``body`` to ``path``
        (``payload``: the body decoded, asked for only when the stored advisories answer).

        Without stored advisories, an upstream that is down stays an error: answering
        "nothing vulnerable" from an empty store would mislead.
        """
        if self._settings.current.audit == "local":
            return await self._local(path, base_url, payload)
        try:
            status, content, content_type = await self._forwarder.forward(path, body, headers)
        except (UpstreamUnavailable, NotFound):  # down, failing (5xx), or none configured
            if not await self._store.has_advisories():
                raise
            return await self._local(path, base_url, payload)
        if self._settings.current.audit != "both" or status != 200:
            return status, content, content_type
        try:
            upstream = orjson.loads(content)
        except orjson.JSONDecodeError:
            return await self._local(path, base_url, payload)
        if not isinstance(upstream, dict):
            return await self._local(path, base_url, payload)
        bulk = path == BULK
        local = await self.local(path, base_url, payload, upstream_known(upstream, bulk))
        answer = merge_bulk(upstream, local) if bulk else merge_quick(upstream, local)
        return 200, orjson.dumps(answer), "application/json"

    async def advisory(self, osv_id: str) -> list[Advisory]:
        """The stored advisories of the record ``osv_id``."""
        return await self._store.advisory(osv_id)

    async def _local(self, path: str, base_url: str, payload: Payload) -> tuple[int, bytes, str]:
        return 200, orjson.dumps(await self.local(path, base_url, payload)), "application/json"

    async def local(self, path: str, base_url: str, payload: Payload, known: Known = _nothing_known) -> dict[str, Any]:
        """The answer from the stored advisories alone (less those ``known`` already)."""
        decoded = await payload()
        if path == BULK:
            asked = bulk_request(decoded)
            return bulk_answer(await self._store.advisories_for(asked), asked, base_url, known)
        tree = quick_request(decoded)
        return quick_answer(await self._store.advisories_for(tree), tree, base_url, known)
