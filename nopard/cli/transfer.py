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

A nopard export (nopard/cli/export.py) or registry directory also brings its
mirrored packages, and every other key it holds of a kind kept as it is
(``sources.AS_IS``: token records, settings overrides, blocks, advisories), not its
signing keys: the versions imported are signed with this registry's own key.
Profiles go whole, with a user's two-factor secret.

Everything is written through the Storage interface, on any backend (atomic), and
only where something is missing, so importing twice changes nothing; a
tarball is copied to a temporary file while it is hashed, verified, then stored
from that file (streamed: never held whole), before the document naming it.
"""

from __future__ import annotations

import base64
import copy
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from nopard.auth.htpasswd import UserTable, parse_htpasswd, validate_user_name
from nopard.cli.maintenance import ALL_DIGESTS, has_checksums, parse_document, stream_digests
from nopard.cli.sources import Source, SourcePackage
from nopard.domain import names, packument
from nopard.domain.errors import InvalidInput
from nopard.domain.integrity import Digests
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
    copied: int = 0  # keys of a nopard export copied as they are (tokens, settings, blocks...)


@dataclass
class Copied:
    """A tarball as copied (to ``path``, a temporary file), with every digest import needs of it."""

    path: str
    digests: Digests

    @classmethod
    def of(cls, data: bytes, path: str = "") -> Copied:
        """The digests of ``data`` (for bytes at hand)."""
        digests = Digests(ALL_DIGESTS)
        digests.update(data)
        return cls(path, digests)

    def matches(self, dist: dict[str, Any]) -> bool:
        """Whether it matches dist.integrity (else dist.shasum), as the mirror checks downloads."""
        return self.digests.matches(dist)

    @property
    def shasum(self) -> str:
        return self.digests.digest("sha1").hex()

    @property
    def integrity(self) -> str:
        return "sha512-" + base64.b64encode(self.digests.digest("sha512")).decode()


class Spool:
    """Temporary copies of the source's tarballs, hashed while copied; ``clear`` removes them."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.paths: list[str] = []

    def copy(self, path: str) -> Copied:
        fd, temporary = tempfile.mkstemp(prefix=".tmp-import-", dir=self.directory)
        self.paths.append(temporary)
        digests = Digests(ALL_DIGESTS)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
            while chunk := source.read(1024 * 1024):
                digests.update(chunk)
                out.write(chunk)
        return Copied(temporary, digests)

    def clear(self) -> None:
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.paths.clear()


# Pure parts -------------------------------------------------------------------


def choose_versions(
    name: str, document: dict[str, Any], find: Callable[[str, dict[str, Any]], Copied | None]
) -> tuple[dict[str, Copied], list[tuple[str, str]]]:
    """The versions worth importing, with their tarballs, and (version, reason) of the others.

    ``find(version, dist)`` returns the version's tarball, or None when it is not there.
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
        elif has_checksums(dist) and not data.matches(dist):
            skipped.append((version, "its tarball does not match its checksums"))
        else:
            kept[version] = data
    return kept, skipped


def newest(versions: Any) -> str:
    """The highest version, preferring releases over prereleases."""
    ordered = sorted(versions, key=packument.version_key)
    releases = [v for v in ordered if "-" not in v.split("+", 1)[0]]
    return (releases or ordered)[-1]


def local_document(name: str, raw: dict[str, Any], kept: dict[str, Copied], keep_rev: bool = False) -> dict[str, Any]:
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


def _stored_manifest(name: str, version: str, manifest: dict[str, Any], data: Copied) -> dict[str, Any]:
    stored = {k: copy.deepcopy(v) for k, v in manifest.items() if k not in ("readme", "readmeFilename")}
    dist = dict(stored["dist"])
    dist["tarball"] = names.tarball_filename(name, version)
    if not has_checksums(dist):
        dist["shasum"] = data.shasum
        dist["integrity"] = data.integrity
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


def _tarball_finder(package: SourcePackage, spool: Spool) -> Callable[[str, dict[str, Any]], Copied | None]:
    def find(version: str, dist: dict[str, Any]) -> Copied | None:
        candidates = [packument.dist_tarball_file(dist), names.tarball_filename(package.name, version)]
        for filename in candidates:
            if filename and not filename.startswith(".") and "/" not in filename:
                path = os.path.join(package.directory, filename)
                if os.path.isfile(path):
                    return spool.copy(path)
        return None
    return find


async def _stored_is(storage: Storage, key: str, data: Copied) -> bool:
    """Whether the object at ``key`` has the bytes ``data`` was copied from (compared by SHA-512, streamed)."""
    stored = await stream_digests(storage, key, ALL_DIGESTS)
    return stored is not None and stored.digest("sha512") == data.digests.digest("sha512")


async def import_source(source: Source, storage: Storage, users: UserTable, say: Say,
                        spool: str | None = None) -> TransferReport:
    """Import every package, user and kept key of ``source`` into ``storage``; print what happens with ``say``.

    Tarballs are copied to temporary files in ``spool`` (default: the system's) on their way.
    """
    report = TransferReport()
    say(f"importing a {source.layout} registry from {source.root}")
    for problem in source.unreadable:
        say(f"unreadable {problem}")
        report.problems += 1
    await _import_as_is(source, storage, say, report)
    copies = Spool(spool)
    try:
        for package in source.packages:
            if package.cached:
                await _import_mirrored(package, storage, copies, say, report)
            else:
                await _import_local(package, storage, source.layout == "nopard", copies, say, report)
            copies.clear()
    finally:
        copies.clear()
    await _import_unpublished(source, storage, say, report)
    await _import_users(source, storage, users, say, report)
    return report


async def _import_as_is(source: Source, storage: Storage, say: Say, report: TransferReport) -> None:
    """The keys of a nopard export kept as they are, only where this store has none."""
    for key, path in sorted(source.as_is.items()):
        with open(path, "rb") as file:
            data = file.read()
        if await storage.create(key, data):
            report.copied += 1
        elif await storage.read(key) != data:
            say(f"kept {key} as it is here (the imported one differs)")
    if source.as_is:
        say(f"imported {report.copied} of {len(source.as_is)} other keys (tokens, settings, blocks...)")


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


async def _import_local(package: SourcePackage, storage: Storage, keep_rev: bool, spool: Spool, say: Say,
                        report: TransferReport) -> None:
    name = package.name
    kept, skipped = choose_versions(name, package.document, _tarball_finder(package, spool))
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
        if not await storage.create_from_file(key, data.path) and not await _stored_is(storage, key, data):
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


async def _import_mirrored(package: SourcePackage, storage: Storage, spool: Spool, say: Say,
                           report: TransferReport) -> None:
    name = package.name
    if await storage.exists(keys.local_document_key(name)):
        say(f"skipped {name}: cached from an upstream, and published here")
        return
    if await storage.exists(keys.upstream_document_key(name)):
        say(f"unchanged {name} (mirrored here already)")
        report.unchanged += 1
        return
    kept, skipped = choose_versions(name, package.document, _tarball_finder(package, spool))
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
        await storage.create_from_file(key, data.path)
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
