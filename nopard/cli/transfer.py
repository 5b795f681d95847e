"""Moving packages and users between registries: ``nopard-admin import`` and ``export``.

``import FROM`` reads nopard's own layout, Verdaccio/sinopia storage or nopar,
told apart by what FROM holds (nopard/cli/sources.py reads them).

A package published there becomes a local package here: every version whose
tarball is present and matches its recorded checksums, with its dist-tags,
times, maintainers and readme; other versions are skipped and reported. A
package the old registry only cached from its upstream (Verdaccio: listed in
``_uplinks`` with every tarball in ``_distfiles``; nopar: ``_proxied``) goes
to nopard's mirror area instead, marked stale, so nopard serves it offline
and revalidates it against its own upstream, rather than freezing a public
package as a private one. Users come from the htpasswd file: bcrypt and
{SHA} lines as they are; other hash types are reported and left out.

Everything is written through the Storage interface (atomic) and only where
something is missing, so importing twice changes nothing. ``export TO``
writes a registry's local packages and users in nopard's layout, which
``import`` reads back; tokens are not exported. Profiles go whole, with a user's
two-factor secret (as the htpasswd file goes with its hashes), so a moved account keeps its
second factor: an export is as secret as the htpasswd file.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from nopard.auth.htpasswd import UserTable, parse_htpasswd, validate_user_name
from nopard.cli.maintenance import has_checksums, named_tarballs, parse_document
from nopard.cli.sources import Source, SourceError, SourcePackage
from nopard.domain import names, packument
from nopard.domain.errors import InvalidInput
from nopard.domain.integrity import Digests, integrity_of
from nopard.domain.times import iso_time
from nopard.local.signing import SigningKeys
from nopard.storage import Storage, keys

# Fields other registries keep in their documents, never served by nopard.
FOREIGN_FIELDS = frozenset({
    "_attachments", "_distfiles", "_uplinks", "_proxied", "_mtime", "_local",
    "_inversed-dist-tags", "_highest-version", "_fwd-dists",
})
_SUPPORTED_HASHES = ("$2y$", "$2a$", "$2b$", "{SHA}")

Say = Callable[[str], None]


@dataclass
class TransferReport:
    """Counts for the summary line, and whether anything was left out."""

    local: int = 0
    mirrored: int = 0
    unchanged: int = 0
    versions: int = 0
    users: int = 0
    problems: int = 0
    tarballs: int = 0
    profiles: int = 0
    unpublished: int = 0
    # Export: kinds the store holds more of than were written (a loss), and kinds not exported by design.
    left_out: dict[str, int] = field(default_factory=dict)
    not_exported: dict[str, int] = field(default_factory=dict)


# Pure parts -------------------------------------------------------------------


def bytes_match(data: bytes, dist: dict[str, Any]) -> bool:
    """Whether ``data`` matches dist.integrity (else dist.shasum), as the mirror checks downloads."""
    digests = Digests(dist)
    digests.update(data)
    return digests.matches(dist)


def choose_versions(
    name: str, document: dict[str, Any], find: Callable[[str, dict[str, Any]], bytes | None]
) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """The versions worth importing, with their tarball bytes, and (version, reason) of the others.

    ``find(version, dist)`` returns the version's tarball bytes, or None when it is not there.
    """
    kept, skipped = {}, []
    for version, manifest in (document.get("versions") or {}).items():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        if not names.is_version(version) or not isinstance(dist, dict):
            skipped.append((version, "not a valid version entry"))
            continue
        data = find(version, dist)
        if data is None:
            skipped.append((version, "its tarball is missing"))
        elif has_checksums(dist) and not bytes_match(data, dist):
            skipped.append((version, "its tarball does not match its checksums"))
        else:
            kept[version] = data
    return kept, skipped


def newest(versions: Any) -> str:
    """The highest version, preferring releases over prereleases."""
    ordered = sorted(versions, key=packument.version_key)
    releases = [v for v in ordered if "-" not in v.split("+", 1)[0]]
    return (releases or ordered)[-1]


def local_document(name: str, raw: dict[str, Any], kept: dict[str, bytes], keep_rev: bool = False) -> dict[str, Any]:
    """The local document of ``name`` holding the ``kept`` versions of another registry's document.

    Other registries' private fields are dropped (and ``_rev`` unless
    ``keep_rev``: a nopard document keeps its own); field order is kept, so a
    nopard document with every version kept comes out unchanged.
    """
    document = {
        key: copy.deepcopy(value) for key, value in raw.items()
        if key not in FOREIGN_FIELDS and (keep_rev or key != "_rev")
    }
    document["_id"] = name
    document["name"] = name
    versions = {
        version: _stored_manifest(name, version, manifest, kept[version])
        for version, manifest in raw["versions"].items() if version in kept
    }
    document["versions"] = versions
    raw_tags = raw.get("dist-tags")
    raw_tags = raw_tags if isinstance(raw_tags, dict) else {}
    tags = {tag: version for tag, version in raw_tags.items() if version in versions}
    if "latest" not in tags:
        tags["latest"] = newest(versions)
    document["dist-tags"] = tags
    raw_times = raw.get("time")
    raw_times = raw_times if isinstance(raw_times, dict) else {}
    document["time"] = {k: v for k, v in raw_times.items() if k in ("created", "modified") or k in versions}
    if not document.get("maintainers"):
        document["maintainers"] = _maintainers_of(raw["versions"], versions)
    if not document.get("readme"):
        latest = raw["versions"].get(tags["latest"], {})
        if isinstance(latest.get("readme"), str) and latest["readme"]:
            document["readme"] = latest["readme"]
            document["readmeFilename"] = latest.get("readmeFilename") or "README.md"
    return document


def _stored_manifest(name: str, version: str, manifest: dict[str, Any], data: bytes) -> dict[str, Any]:
    stored = {k: copy.deepcopy(v) for k, v in manifest.items() if k not in ("readme", "readmeFilename")}
    dist = dict(stored["dist"])
    dist["tarball"] = names.tarball_filename(name, version)
    if not has_checksums(dist):
        dist["shasum"] = hashlib.sha1(data).hexdigest()
        dist["integrity"] = integrity_of(data)
    stored["dist"] = dist
    stored.setdefault("_id", f"{name}@{version}")
    return stored


def _maintainers_of(raw_versions: dict[str, Any], kept: dict[str, Any]) -> list[dict[str, str]]:
    """Who may publish next: the versions' maintainers, else their publishers."""
    found: list[dict[str, str]] = []
    for version in sorted(kept, key=packument.version_key, reverse=True):
        manifest = raw_versions[version]
        for person in manifest.get("maintainers") or [manifest.get("_npmUser")]:
            if isinstance(person, dict) and isinstance(person.get("name"), str) and \
                    person["name"] not in [p["name"] for p in found]:
                found.append({"name": person["name"], "email": str(person.get("email") or "")})
    return found


def merge_for_import(existing: dict[str, Any] | None, imported: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with what ``imported`` adds: new versions, tags and times; what is here wins."""
    if existing is None:
        return imported
    merged = copy.deepcopy(existing)
    for key, value in imported.items():
        if key not in merged:
            merged[key] = copy.deepcopy(value)
        elif key in ("versions", "dist-tags", "time") and isinstance(merged[key], dict):
            for inner, inner_value in value.items():
                merged[key].setdefault(inner, copy.deepcopy(inner_value))
    return merged


def mirrored_document(raw: dict[str, Any], upstream_urls: dict[str, str]) -> dict[str, Any]:
    """A cached document as its upstream sent it: private fields gone, tarball URLs the upstream's."""
    document = {k: copy.deepcopy(v) for k, v in raw.items() if k not in FOREIGN_FIELDS and k != "_rev"}
    for manifest in document.get("versions", {}).values():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        filename = packument.dist_tarball_file(dist)
        if filename in upstream_urls and isinstance(dist, dict):  # a file name means a dist block
            dist["tarball"] = upstream_urls[filename]
    return document


def password_hash_kind(hashed: str) -> str | None:
    """None for a hash nopard checks (bcrypt, {SHA}); else the name of its kind."""
    if hashed.startswith(_SUPPORTED_HASHES):
        return None
    if hashed.startswith("$apr1$"):
        return "Apache MD5 ($apr1$)"
    if hashed.startswith(("$5$", "$6$")):
        return "SHA-crypt"
    if len(hashed) == 13:
        return "crypt"
    return "unknown"


def without_rev(document: dict[str, Any] | None) -> dict[str, Any] | None:
    """A document without its ``_rev``, for comparing contents."""
    return None if document is None else {k: v for k, v in document.items() if k != "_rev"}


# Import -----------------------------------------------------------------------


def _tarball_finder(package: SourcePackage) -> Callable[[str, dict[str, Any]], bytes | None]:
    def find(version: str, dist: dict[str, Any]) -> bytes | None:
        candidates = [packument.dist_tarball_file(dist), names.tarball_filename(package.name, version)]
        for filename in candidates:
            if filename and not filename.startswith(".") and "/" not in filename:
                path = os.path.join(package.directory, filename)
                if os.path.isfile(path):
                    with open(path, "rb") as file:
                        return file.read()
        return None
    return find


async def import_source(source: Source, storage: Storage, users: UserTable, say: Say) -> TransferReport:
    """Import every package and user of ``source`` into ``storage``; print what happens with ``say``."""
    report = TransferReport()
    say(f"importing a {source.layout} registry from {source.root}")
    for problem in source.unreadable:
        say(f"unreadable {problem}")
        report.problems += 1
    for package in source.packages:
        if package.cached:
            await _import_mirrored(package, storage, say, report)
        else:
            await _import_local(package, storage, source.layout == "nopard", say, report)
    await _import_unpublished(source, storage, say, report)
    await _import_users(source, storage, users, say, report)
    return report


async def _import_unpublished(source: Source, storage: Storage, say: Say, report: TransferReport) -> None:
    """Records of whole packages unpublished there, so their versions stay refused here too."""
    for name, path in sorted(source.unpublished.items()):
        try:
            key = keys.unpublished_key(name)
            with open(path, "rb") as file:
                data = file.read()
        except (InvalidInput, OSError) as error:
            say(f"unreadable {path}: {getattr(error, 'message', None) or error}")
            report.problems += 1
            continue
        if await storage.create(key, data):
            say(f"imported the unpublishing of {name}")
            report.unpublished += 1


async def _import_local(package: SourcePackage, storage: Storage, keep_rev: bool, say: Say,
                        report: TransferReport) -> None:
    name = package.name
    kept, skipped = choose_versions(name, package.document, _tarball_finder(package))
    for version, reason in skipped:
        say(f"skipped {name}@{version}: {reason}")
        report.problems += 1
    if not kept:
        say(f"skipped {name}: no version with a tarball that verifies")
        return
    raw = await storage.read(keys.local_document_key(name))
    existing = parse_document(raw) if raw is not None else None
    if raw is not None and existing is None:
        say(f"skipped {name}: the document here is unreadable (see nopard-admin fsck)")
        report.problems += 1
        return
    imported = local_document(name, package.document, kept, keep_rev)
    here = (existing or {}).get("versions", {})
    for version in list(imported["versions"]):
        if version in here:
            if _checksums(here[version]) != _checksums(imported["versions"][version]):
                say(f"kept {name}@{version} as it is here: the imported one has other contents")
                report.problems += 1
            continue
        data = kept[version]
        key = keys.tarball_key(name, names.tarball_filename(name, version))
        if not await storage.create(key, data) and await storage.read(key) != data:
            say(f"skipped {name}@{version}: a different tarball is already stored here")
            report.problems += 1
            del imported["versions"][version]
            imported["time"].pop(version, None)
    if added := [v for v in imported["versions"] if v not in here]:  # others' keys: npm's EMISSINGSIGNATUREKEY
        await SigningKeys(storage, time.time).sign_versions(imported, added)
    if not imported["versions"]:
        return
    imported["dist-tags"] = {t: v for t, v in imported["dist-tags"].items() if v in imported["versions"]}
    imported["dist-tags"].setdefault("latest", newest(imported["versions"]))
    merged = merge_for_import(existing, imported)
    if without_rev(merged) == without_rev(existing):
        say(f"unchanged {name}")
        report.unchanged += 1
        return
    if existing is not None or not isinstance(merged.get("_rev"), str):
        merged["_rev"] = packument.next_revision(existing or {}, orjson.dumps(without_rev(merged)))
    await storage.write(keys.local_document_key(name), orjson.dumps(merged))
    added = sorted(set(merged["versions"]) - set(here), key=packument.version_key)
    say(f"imported {name}: {len(added)} versions ({', '.join(added)})")
    report.local += 1
    report.versions += len(added)


def _checksums(manifest: Any) -> tuple[Any, Any]:
    dist = manifest.get("dist") if isinstance(manifest, dict) else None
    dist = dist if isinstance(dist, dict) else {}
    return dist.get("integrity"), dist.get("shasum")


async def _import_mirrored(package: SourcePackage, storage: Storage, say: Say, report: TransferReport) -> None:
    name = package.name
    if await storage.exists(keys.local_document_key(name)):
        say(f"skipped {name}: cached from an upstream, and published here")
        return
    if await storage.exists(keys.upstream_document_key(name)):
        say(f"unchanged {name} (mirrored here already)")
        report.unchanged += 1
        return
    kept, skipped = choose_versions(name, package.document, _tarball_finder(package))
    for version, reason in skipped:
        if "missing" not in reason:  # a cache holds only what someone installed: missing is normal
            say(f"skipped {name}@{version}: {reason}")
            report.problems += 1
    document = mirrored_document(package.document, package.upstream_urls)
    stored = 0
    for version, data in kept.items():
        filename = packument.version_tarball_file(name, version, document["versions"][version]["dist"])
        try:
            key = keys.upstream_tarball_key(name, filename or "")
        except InvalidInput:
            continue
        await storage.create(key, data)
        stored += 1
    if not stored:
        say(f"skipped {name}: cached from an upstream, with no tarball stored")
        return
    await storage.write(keys.upstream_document_key(name), orjson.dumps(document))
    # fetched_at 0: stale at once, so nopard revalidates it with its own upstream when it can.
    meta = {"fetched_at": 0.0, "etag": None, "last_modified": None}
    await storage.write(keys.upstream_meta_key(name), orjson.dumps(meta))
    say(f"mirrored {name}: {stored} of {len(document.get('versions', {}))} tarballs (cached from an upstream)")
    report.mirrored += 1
    report.versions += stored


async def _import_users(source: Source, storage: Storage, users: UserTable, say: Say,
                        report: TransferReport) -> None:
    if source.htpasswd is None:
        if source.layout != "nopar":
            say("no htpasswd file found: no users imported (--htpasswd FILE names one)")
        return
    with open(source.htpasswd, encoding="utf-8") as file:
        entries = parse_htpasswd(file.read())
    here = await users.fresh()
    wanted: dict[str, str] = {}
    for user, hashed in entries.items():
        try:
            validate_user_name(user)
        except InvalidInput:
            say(f"skipped user {user!r}: not a valid user name here")
            report.problems += 1
            continue
        kind = password_hash_kind(hashed)
        if kind is not None:
            say(f"skipped user {user}: nopard cannot check a {kind} password hash "
                f"(add them with nopard-admin user add {user})")
            report.problems += 1
            continue
        if user in here:
            if here[user] != hashed:
                say(f"kept user {user} as they are here (another password was imported)")
            continue
        wanted[user] = hashed
    for user in await users.merge(wanted):  # one change of the users, not one per user
        await storage.create(keys.user_key(user), _profile(source, user))
        say(f"imported user {user}")
        report.users += 1


def _profile(source: Source, user: str) -> bytes:
    if source.profiles:
        path = os.path.join(source.profiles, f"{user}.json")
        try:
            with open(path, "rb") as file:
                profile = orjson.loads(file.read())
            if isinstance(profile, dict) and profile.get("name") == user:
                return orjson.dumps(profile)
        except (OSError, orjson.JSONDecodeError):
            pass
    return orjson.dumps({"name": user, "email": "", "created": iso_time(time.time())})


# Export -----------------------------------------------------------------------


# Kinds an export leaves out by design: secrets, the upstream's packages, per-instance state.
NOT_EXPORTED = frozenset({keys.TOKEN_RECORD, keys.MIRRORED_DOCUMENT, keys.MIRRORED_META, keys.MIRRORED_TARBALL,
                          keys.MIRRORED_ATTESTATIONS, keys.SIGNING,
                          keys.SYNC_LOCK, keys.SETTINGS, keys.HEALTH_PROBE, keys.MARKER,
                          keys.ADVISORIES,  # imported from OSV records: import them again
                          keys.BLOCK_LIST, keys.USAGE_RECORD})


def compare_holdings(held: Counter[str], written: Counter[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(kinds held more often than written: lost by the export, kinds not exported by design), by count."""
    left_out = {kind: count - written[kind] for kind, count in sorted(held.items())
                if kind not in NOT_EXPORTED and count > written[kind]}
    skipped = {kind: count for kind, count in sorted(held.items()) if kind in NOT_EXPORTED}
    return left_out, skipped


async def export_registry(storage: Storage, users: UserTable, target: Storage, say: Say) -> TransferReport:
    """Copy every local package (document, tarballs, unpublishing) and every user of ``storage`` to ``target``,
    then count what the store holds by key kind, independently, against what was written."""
    report = TransferReport()
    written: Counter[str] = Counter()

    async def write(key: str, data: bytes) -> None:
        await target.write(key, data)
        written[keys.key_kind(key)] += 1

    listing = await storage.list("")
    for name in keys.names_of(listing, keys.LOCAL_DOCUMENT):
        key = keys.local_document_key(name)
        raw = await storage.read(key)
        document = parse_document(raw) if raw is not None else None
        if raw is None or document is None:
            say(f"unreadable {key}: not exported (see nopard-admin fsck)")
            report.problems += 1
            continue
        copied = 0
        for filename, (version, dist) in sorted(named_tarballs(document).items()):
            try:
                names.validate_tarball_filename(name, filename)
            except InvalidInput:
                say(f"skipped {name}@{version}: {filename!r} is not a tarball name of {name}")
                report.problems += 1
                continue
            data = await storage.read(keys.tarball_key(name, filename))
            if data is None or (has_checksums(dist) and not bytes_match(data, dist)):
                state = "missing" if data is None else "corrupt"
                say(f"skipped {name}@{version}: its tarball is {state} (see nopard-admin fsck)")
                report.problems += 1
                continue
            await write(keys.tarball_key(name, filename), data)
            copied += 1
        await write(key, raw)
        say(f"exported {name}: {copied} versions")
        report.local += 1
        report.versions += len(document.get("versions") or {})
        report.tarballs += copied
    for name in keys.names_of(listing, keys.UNPUBLISHED):
        data = await storage.read(keys.unpublished_key(name))
        if data is not None:
            await write(keys.unpublished_key(name), data)
            report.unpublished += 1
    entries = await users.fresh()
    # An emptied users/htpasswd is exported too: the store's count of it must match what was written.
    if entries or await storage.exists(keys.USERS_HTPASSWD):
        await write(keys.EXPORTED_HTPASSWD, "".join(f"{user}:{hashed}\n" for user, hashed in entries.items()).encode())
        report.users = len(entries)
    for key in await storage.list(keys.USERS):
        data = await storage.read(key)
        if data is not None and keys.key_kind(key) == keys.USER_PROFILE:
            await write(key, data)
            report.profiles += 1
    say(f"exported {report.users} users (tokens are not exported)")
    marker = {"format": "nopard-export", "version": 1, "exported": iso_time(time.time()),
              "packages": report.local, "users": report.users}
    await target.write(keys.EXPORT_MARKER, orjson.dumps(marker, option=orjson.OPT_INDENT_2))
    held = Counter(keys.key_kind(key) for key in await storage.list(""))
    report.left_out, report.not_exported = compare_holdings(held, written)
    for kind, count in report.left_out.items():
        say(f"left out {count} {kind} {'key' if count == 1 else 'keys'} the store holds "
            f"({held[kind]} held, {written[kind]} written)")
    return report


def check_export_target(path: str) -> None:
    """SourceError unless ``path`` is absent or an empty directory."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise SourceError(f"{path} exists and is not an empty directory: export into a new one")
