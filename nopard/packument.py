"""Pure functions on package documents ("packuments").

Documents are plain dicts as the npm registry serves them. Nothing here does
I/O or reads a clock: the caller passes the time.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from typing import Any

from nopard import names
from nopard.errors import InvalidInput, NotFound, VersionExists
from nopard.publication import Publication

# Top-level fields copied from the latest version, as the npm registry does.
_FROM_LATEST = (
    "description", "keywords", "author", "repository", "homepage", "bugs", "license",
)
# Per-version fields kept in the abbreviated ("corgi") form.
_ABBREVIATED_VERSION_FIELDS = (
    "name", "version", "deprecated", "dependencies", "acceptDependencies",
    "optionalDependencies", "devDependencies", "bundleDependencies",
    "bundledDependencies", "peerDependencies", "peerDependenciesMeta", "bin",
    "directories", "dist", "engines", "_hasShrinkwrap", "funding", "cpu", "os", "libc",
)
_INSTALL_SCRIPTS = ("preinstall", "install", "postinstall")


def new_document(name: str) -> dict[str, Any]:
    """An empty document for a package about to get its first version."""
    return {
        "_id": name, "name": name, "dist-tags": {}, "versions": {}, "time": {},
        "maintainers": [], "users": {}, "readme": "", "readmeFilename": "",
    }


def next_revision(document: dict[str, Any], content: bytes = b"") -> str:
    """A CouchDB-style revision ``<n>-<hex>`` one above the document's."""
    current = str(document.get("_rev", "0-"))
    number = int(current.split("-", 1)[0]) if current.split("-", 1)[0].isdigit() else 0
    digest = hashlib.md5(content or secrets.token_bytes(16), usedforsecurity=False)
    return f"{number + 1}-{digest.hexdigest()}"


def merge_publication(
    document: dict[str, Any] | None,
    publication: Publication,
    publisher: dict[str, str],
    now: str,
) -> dict[str, Any]:
    """The document after ``publication`` by ``publisher`` ({name, email}) at ``now``.

    Raises VersionExists if any published version is already in the document.
    """
    name = publication.name
    merged = copy.deepcopy(document) if document else new_document(name)
    existing = sorted(set(publication.versions) & set(merged["versions"]))
    if existing:
        raise VersionExists(
            "cannot publish over the previously published versions: " + ", ".join(existing)
        )
    if not merged["maintainers"]:
        merged["maintainers"] = [dict(publisher)]
    times = merged.setdefault("time", {})
    times.setdefault("created", now)
    times["modified"] = now
    for version, manifest in publication.versions.items():
        merged["versions"][version] = _stored_manifest(
            name, version, manifest, publisher, merged["maintainers"]
        )
        times[version] = now
    tags = merged.setdefault("dist-tags", {})
    for tag, version in publication.tags.items():
        if version not in merged["versions"]:
            raise InvalidInput(f"dist-tag {tag!r} names version {version}, which does not exist")
        tags[tag] = version
    if "latest" not in tags:
        tags["latest"] = max(publication.versions, key=version_key)
    _keep_readme(merged, publication)
    _copy_latest_fields(merged)
    return merged


def _stored_manifest(
    name: str, version: str, manifest: dict[str, Any], publisher: dict[str, str],
    maintainers: list[dict[str, str]],
) -> dict[str, Any]:
    stored = {k: v for k, v in manifest.items() if k not in ("readme", "readmeFilename")}
    stored["_id"] = f"{name}@{version}"
    stored["_npmUser"] = dict(publisher)
    stored["maintainers"] = copy.deepcopy(maintainers)
    dist = dict(stored["dist"])
    dist["tarball"] = names.tarball_filename(name, version)
    stored["dist"] = dist
    return stored


def _keep_readme(document: dict[str, Any], publication: Publication) -> None:
    """The top-level readme is the latest version's, else the first one published."""
    manifest = publication.versions.get(document["dist-tags"]["latest"])
    if manifest is None and not document.get("readme"):
        manifest = next(iter(publication.versions.values()))
    if manifest is not None and isinstance(manifest.get("readme"), str):
        document["readme"] = manifest["readme"]
        document["readmeFilename"] = manifest.get("readmeFilename") or "README.md"


def _copy_latest_fields(document: dict[str, Any]) -> None:
    latest = document["versions"].get(document["dist-tags"].get("latest"), {})
    for field in _FROM_LATEST:
        if field in latest:
            document[field] = latest[field]
        else:
            document.pop(field, None)


def version_key(version: str) -> tuple:
    """Sort key giving semver precedence (prereleases before their release)."""
    without_build = version.split("+", 1)[0]
    core, _, prerelease = without_build.partition("-")
    numbers = tuple(int(part) for part in core.split("."))
    if not prerelease:
        return numbers + ((1,),)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in prerelease.split("."))
    return numbers + ((0,) + parts,)


def has_install_script(manifest: dict[str, Any]) -> bool:
    """Whether npm would run a script at install time for this version."""
    scripts = manifest.get("scripts")
    if isinstance(scripts, dict) and any(scripts.get(s) for s in _INSTALL_SCRIPTS):
        return True
    return manifest.get("gypfile") is True


def tarball_url(base_url: str, name: str, tarball: str) -> str:
    """The URL of a tarball on this registry: ``<base>/<name>/-/<file>``."""
    filename = tarball.rstrip("/").rsplit("/", 1)[-1]
    return f"{base_url}/{name}/-/{filename}"


def for_clients(document: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The document as served: every dist.tarball points at ``base_url``."""
    served = dict(document)
    served["versions"] = {
        version: _with_tarball_url(manifest, base_url, document["name"])
        for version, manifest in document.get("versions", {}).items()
    }
    return served


def _with_tarball_url(manifest: dict[str, Any], base_url: str, name: str) -> dict[str, Any]:
    dist = manifest.get("dist")
    if not isinstance(dist, dict) or "tarball" not in dist:
        return manifest
    served = dict(manifest)
    served["dist"] = {**dist, "tarball": tarball_url(base_url, name, str(dist["tarball"]))}
    return served


def abbreviate(document: dict[str, Any]) -> dict[str, Any]:
    """The abbreviated form npm install asks for (with ``time`` kept, for pnpm)."""
    versions = {}
    for version, manifest in document.get("versions", {}).items():
        small = {k: manifest[k] for k in _ABBREVIATED_VERSION_FIELDS if k in manifest}
        if has_install_script(manifest):
            small["hasInstallScript"] = True
        versions[version] = small
    times = document.get("time", {})
    abbreviated = {
        "name": document["name"],
        "modified": times.get("modified", ""),
        "dist-tags": document.get("dist-tags", {}),
        "versions": versions,
    }
    if times:
        abbreviated["time"] = times
    return abbreviated


def resolve_version(document: dict[str, Any], version_or_tag: str) -> dict[str, Any]:
    """One version's manifest, by exact version or dist-tag; NotFound otherwise."""
    versions = document.get("versions", {})
    version = document.get("dist-tags", {}).get(version_or_tag, version_or_tag)
    if version not in versions:
        raise NotFound(f"version not found: {document['name']}@{version_or_tag}")
    return versions[version]


def merge_documents(local: dict[str, Any], upstream: dict[str, Any]) -> dict[str, Any]:
    """One document listing upstream and local versions; local ones win on the same number.

    For packages the configuration lists in NOPARD_MERGE_UPSTREAM (overriding a
    public package). Local dist-tags win over upstream tags of the same name.
    """
    merged = copy.deepcopy(upstream)
    merged["versions"] = {**upstream.get("versions", {}), **local.get("versions", {})}
    merged["dist-tags"] = {**upstream.get("dist-tags", {}), **local.get("dist-tags", {})}
    merged["time"] = {**upstream.get("time", {}), **local.get("time", {})}
    times = [t for t in (upstream.get("time", {}).get("modified"), local.get("time", {}).get("modified")) if t]
    if times:
        merged["time"]["modified"] = max(times)
    merged["_rev"] = local.get("_rev", merged.get("_rev"))
    return merged


def find_version_by_file(document: dict[str, Any], filename: str) -> dict[str, Any] | None:
    """The manifest whose dist.tarball ends in ``filename``, if any."""
    for manifest in document.get("versions", {}).values():
        tarball = str((manifest.get("dist") or {}).get("tarball", ""))
        if tarball.rstrip("/").rsplit("/", 1)[-1] == filename:
            return manifest
    return None
