"""Pure functions on package documents ("packuments").

Documents are plain dicts as the npm registry serves them. Nothing here does
I/O or reads a clock: the caller passes the time.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from datetime import datetime
from typing import Any

from nopard.domain import names
from nopard.domain.errors import InvalidInput, NotFound, VersionExists
from nopard.domain.publication import Publication
from nopard.domain.times import iso_time

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
# dist fields a registry writes (its signatures, the attestations it stores), never a publisher.
_REGISTRY_DIST_FIELDS = ("signatures", "attestations")
# What of ``_npmUser`` clients judge trust by (pnpm's trustPolicy): kept in the abbreviated form.
_TRUST_FIELDS = ("trustedPublisher", "approver")


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
    retired: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The document after ``publication`` by ``publisher`` ({name, email}) at ``now``.

    Raises VersionExists if any published version is already in the document,
    or was unpublished (``retired``, plus the document's own record).
    """
    name = publication.name
    merged = copy.deepcopy(document) if document else new_document(name)
    existing = sorted(set(publication.versions) & set(merged["versions"]))
    if existing:
        raise VersionExists(
            "cannot publish over the previously published versions: " + ", ".join(existing)
        )
    gone = sorted(set(publication.versions) & (set(retired) | retired_versions(document)))
    if gone:
        raise VersionExists("cannot publish versions that were unpublished: " + ", ".join(gone))
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
    # What only a registry vouches for: a publisher's own signatures or attestations are not kept.
    dist = {k: v for k, v in stored["dist"].items() if k not in _REGISTRY_DIST_FIELDS}
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
    return f"{base_url}/{name}/-/{names.tarball_file_from_url(tarball)}"


def for_clients(document: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The document as served: every dist.tarball points at ``base_url``.

    Under the file ``version_tarball_file`` names, so a tarball an upstream
    keeps at an odd URL is served at nopard's conventional one.
    """
    served = dict(document)
    served["versions"] = {
        version: _with_tarball_url(manifest, base_url, document["name"], version)
        for version, manifest in document.get("versions", {}).items()
    }
    return served


def _with_tarball_url(manifest: Any, base_url: str, name: str, version: str) -> Any:
    dist = manifest.get("dist") if isinstance(manifest, dict) else None
    if not isinstance(dist, dict) or "tarball" not in dist:
        return manifest
    served = dict(manifest)
    filename = version_tarball_file(name, version, dist) or names.tarball_file_from_url(str(dist["tarball"]))
    served["dist"] = {**dist, "tarball": tarball_url(base_url, name, filename)}
    attestations = dist.get("attestations")
    if isinstance(attestations, dict) and "url" in attestations:
        # Served by nopard too (stored, also offline); clients fetch it from the registry they use.
        served["dist"]["attestations"] = {**attestations, "url": attestations_url(base_url, name, version)}
    return served


def attestations_url(base_url: str, name: str, version: str) -> str:
    """Where this registry serves a version's attestations (``@scope%2fname@1.0.0``, as npm writes it)."""
    return f"{base_url}/-/npm/v1/attestations/{name.replace('/', '%2f')}@{version}"


def abbreviate(document: dict[str, Any]) -> dict[str, Any]:
    """The abbreviated form npm install asks for (with ``time`` kept, for pnpm)."""
    versions = {}
    for version, manifest in document.get("versions", {}).items():
        small = {k: manifest[k] for k in _ABBREVIATED_VERSION_FIELDS if k in manifest}
        if has_install_script(manifest):
            small["hasInstallScript"] = True
        user = manifest.get("_npmUser")
        # This form carries ``time``, so pnpm may judge trust by it alone (registrySupportsTimeField).
        if isinstance(user, dict) and any(field in user for field in _TRUST_FIELDS):
            small["_npmUser"] = user
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


def dist_tarball_file(dist: Any) -> str | None:
    """The file name a dist block's ``tarball`` (bare name or URL) ends in, if it has one.

    As written there (for reading other registries' layouts); the file nopard
    stores and serves a version's tarball under is ``version_tarball_file``.
    """
    if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
        return None
    return names.tarball_file_from_url(dist["tarball"]) or None


def version_tarball_file(name: str, version: str, dist: Any) -> str | None:
    """The file a version's tarball is stored and served under here (names.version_tarball_file).

    None without a ``dist.tarball``, or when no file name of ``name`` fits.
    """
    if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
        return None
    return names.version_tarball_file(name, version, dist["tarball"])


def find_version_by_file(document: dict[str, Any], filename: str) -> dict[str, Any] | None:
    """The manifest whose tarball is stored and served as ``filename``, if any."""
    name = str(document.get("name", ""))
    for version, manifest in document.get("versions", {}).items():
        if isinstance(manifest, dict) and version_tarball_file(name, version, manifest.get("dist")) == filename:
            return manifest
    return None


# Changes to published documents -------------------------------------------
# Each takes the stored document and returns a changed deep copy; the caller
# bumps ``_rev`` and ``time.modified``. Bad input raises before anything changes.

_STAR_KEYS = {"_id", "_rev", "users"}
_OWNER_KEYS = {"_id", "_rev", "maintainers"}
_TIME_KEYS = ("created", "modified", "unpublished")


def change_kind(body: Any) -> str:
    """What a PUT without attachments means: ``star``, ``owners`` or ``versions``.

    ``versions`` is a whole document sent back (deprecate, or the removal step
    of a one-version unpublish). Raises InvalidInput for anything else.
    """
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    keys = set(body)
    if "users" in keys and keys <= _STAR_KEYS:
        return "star"
    if "maintainers" in keys and keys <= _OWNER_KEYS:
        return "owners"
    if isinstance(body.get("versions"), dict):
        return "versions"
    raise InvalidInput("unrecognised change: send a publish, a star, an owner change or the document")


def set_dist_tag(document: dict[str, Any], tag: Any, version: Any) -> dict[str, Any]:
    """``tag`` pointed at ``version``, which must exist; range-like tags are refused."""
    names.validate_tag(tag)
    if not isinstance(version, str) or version not in document.get("versions", {}):
        raise InvalidInput(f"version {version!r} of {document['name']} does not exist")
    names.validate_version(version)  # stored before nopard refused numbers npm cannot read
    changed = copy.deepcopy(document)
    changed.setdefault("dist-tags", {})[tag] = version
    _copy_latest_fields(changed)
    return changed


def remove_dist_tag(document: dict[str, Any], tag: str) -> dict[str, Any]:
    """The document without ``tag``; ``latest`` cannot be removed."""
    if tag == "latest":
        raise InvalidInput("the latest tag cannot be removed")
    if tag not in document.get("dist-tags", {}):
        raise NotFound(f"{document['name']} has no dist-tag {tag!r}")
    changed = copy.deepcopy(document)
    del changed["dist-tags"][tag]
    return changed


def set_maintainers(document: dict[str, Any], maintainers: list[dict[str, str]]) -> dict[str, Any]:
    """The document with its maintainers replaced; at least one must remain."""
    if not maintainers:
        raise InvalidInput("a package needs at least one maintainer")
    changed = copy.deepcopy(document)
    changed["maintainers"] = copy.deepcopy(maintainers)
    return changed


def maintainer_names(body: dict[str, Any]) -> list[str]:
    """The user names of an owner-change body's ``maintainers`` ([{name, email}])."""
    maintainers = body.get("maintainers")
    if not isinstance(maintainers, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"] for m in maintainers
    ):
        raise InvalidInput('maintainers must be a list of {"name": ..., "email": ...}')
    if not maintainers:
        raise InvalidInput("an owner change (a PUT without _attachments) must keep at least one maintainer")
    return list(dict.fromkeys(m["name"] for m in maintainers))


def apply_document(document: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A document sent back: its versions' ``deprecated`` fields, and versions it dropped.

    Returns the changed document and the removed versions. Nothing else in
    ``body`` is taken; versions the body names that are not stored here are
    ignored (a merged document lists upstream ones). Dropping every version is
    refused: a whole package is unpublished with DELETE.
    """
    sent = body["versions"]
    removed = [v for v in document.get("versions", {}) if v not in sent]
    if removed and len(removed) == len(document["versions"]):
        raise InvalidInput("a change cannot remove every version: unpublish the package instead")
    changed = copy.deepcopy(document)
    for version, manifest in changed["versions"].items():
        if version in sent:
            _set_deprecated(manifest, sent[version], version)
    return (_remove_versions(changed, removed) if removed else changed), removed


def _set_deprecated(manifest: dict[str, Any], sent: Any, version: str) -> None:
    if not isinstance(sent, dict):
        raise InvalidInput(f"version {version} must be an object")
    message = sent.get("deprecated", "")
    if not isinstance(message, str):
        raise InvalidInput(f"deprecated of version {version} must be a string")
    if message:
        manifest["deprecated"] = message
    else:
        manifest.pop("deprecated", None)


def _remove_versions(document: dict[str, Any], removed: list[str]) -> dict[str, Any]:
    """Drop versions, the tags naming them, and reset ``latest``; their times stay as a record."""
    for version in removed:
        del document["versions"][version]
    tags = document["dist-tags"]
    for tag in [t for t, v in tags.items() if v in removed]:
        del tags[tag]
    if "latest" not in tags:
        releases = [v for v in document["versions"] if "-" not in v] or list(document["versions"])
        tags["latest"] = max(releases, key=version_key)
    _copy_latest_fields(document)
    return document


# Fields a change may touch without being a change of the package itself.
_BOOKKEEPING = ("_rev", "time", "users")


def required_action(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """The access rule (NOPARD_CONFIG) a change from ``before`` to ``after`` needs.

    ``unpublish`` when a version stored in ``before`` is gone (or the whole
    package is), ``access`` when only stars changed (what any reader may do
    for themselves), else ``publish`` (new versions, tags, deprecations,
    owners). Decided on the document the change is applied to, never an
    earlier read, so a concurrent publish cannot turn a deprecation into an
    unpublish.
    """
    if after is None:
        return "unpublish"
    if before is None:
        return "publish"
    if any(version not in after.get("versions", {}) for version in before.get("versions", {})):
        return "unpublish"
    rest_before = {k: v for k, v in before.items() if k not in _BOOKKEEPING}
    rest_after = {k: v for k, v in after.items() if k not in _BOOKKEEPING}
    return "access" if rest_before == rest_after else "publish"


def unpublished_record(
    record: dict[str, Any] | None, document: dict[str, Any], user: str | None, now: str
) -> dict[str, Any]:
    """The unpublish record (``unpublished.json``) after ``user`` removed the whole ``document`` at ``now``.

    As the npm registry's tombstone: ``time`` keeps every version's time, and
    ``time.unpublished`` says when, by whom, which versions, and who the
    maintainers were (the name stays theirs for NOPARD_UNPUBLISH_GRACE).
    """
    kept = copy.deepcopy(record) if record else {"name": document["name"], "time": {}}
    kept.setdefault("time", {}).update(document.get("time", {}))
    kept["time"]["unpublished"] = {
        "time": now, "name": user, "versions": list(document.get("versions", {})),
        "maintainers": copy.deepcopy(document.get("maintainers", [])),
    }
    return kept


def name_reserved(record: dict[str, Any] | None, user: str, now: float, grace: float) -> str | None:
    """Why ``user`` may not publish a name whose whole package was unpublished less than
    ``grace`` seconds before ``now`` (only its former maintainers may), or None.

    Admins are let through by the caller; a ``grace`` of 0 reserves nothing.
    """
    unpublished = (record or {}).get("time", {}).get("unpublished")
    if grace <= 0 or not isinstance(unpublished, dict):
        return None
    try:
        since = datetime.fromisoformat(str(unpublished.get("time"))).timestamp()
    except ValueError:
        return None
    if now >= since + grace:
        return None
    former = unpublished.get("maintainers") or []
    if any(isinstance(m, dict) and m.get("name") == user for m in former):
        return None
    name = (record or {}).get("name", "this package")
    return (f"{name} was unpublished at {unpublished['time']}; until {iso_time(since + grace)} only its "
            "former maintainers (or an admin) may publish it")


def retired_versions(document: dict[str, Any] | None) -> set[str]:
    """Versions once published and since unpublished: they can never be published again."""
    if not document:
        return set()
    times = document.get("time", {})
    return {v for v in times if v not in _TIME_KEYS and v not in document.get("versions", {})}
