"""Every storage key nopard uses, built and parsed here and nowhere else.

The layout (the same on every backend)::

    packages/<name>/package.json                    a package published here
    packages/<name>/unpublished.json                a whole package's unpublishing
    packages/<name>/tarballs/<file>                 a tarball published here
    packages/<name>/upstream/package.json           the document mirrored from the upstream
    packages/<name>/upstream/meta.json              what nopard knows of that copy (ETag, time)
    packages/<name>/upstream/tarballs/<file>        a tarball fetched from the upstream
    packages/<name>/upstream/attestations/<v>.json  a version's attestations, from the upstream
    users/<user>.json                               a user's profile (email, creation time)
    users/htpasswd                                  every user's password hash (htpasswd format)
    tokens/<sha256 of the token>.json               an access token's record
    sync/<job>.lock                                 which instance runs a sync job
    settings/overrides.json                         settings changed at runtime
    signing/keys.json                               nopard's signing keys (private: never served)
    signing/upstream-<sha256 of its URL>.json       an upstream's public keys (/-/npm/v1/keys)
    health/probe-<unique>                           the readiness check's write-read-delete
    advisories/index.json                           every OSV record imported: id -> modified, packages
    advisories/packages/<2 hex>.json                the advisories of the packages whose names hash there
    advisories/source.json                          NOPARD_ADVISORIES_URL's last import (ETag, time, summary)
    blocks/<name>.json                              the blocks of a package's versions (nopard.firewall)
    usage/<2 hex>.json                              when clients last used the mirrored packages hashing there
    usage/pinned.json                               the versions prefetched lockfiles pinned (kept by eviction)
    changes/log/<n>.json                            the n-th segment of this registry's changes feed
    changes/head.json                               which segment of the feed was begun last (a hint)
    changes/followed.json                           where in NOPARD_CHANGES_URL's feed the sync worker is

and, in an export directory, ``htpasswd`` and ``nopard-export.json``.

Keys are built only from names that passed validation, so no request can name
a key outside the store. A key is parsed back by its structure (a name is one
segment, or two when it starts with ``@``), never by looking for a word in it:
a package may be called ``upstream`` or ``tarballs``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from nopard.domain.errors import InvalidInput
from nopard.domain.names import validate_name, validate_tarball_filename, validate_version
from nopard.storage import InvalidKey, check_key

PACKAGES_FOLDER = "packages"
PACKAGES = PACKAGES_FOLDER + "/"
USERS_FOLDER = "users"
USERS = USERS_FOLDER + "/"
# The users' htpasswd file (no user's profile: those end in .json); NOPARD_HTPASSWD keeps one elsewhere.
USERS_HTPASSWD = USERS + "htpasswd"
TOKENS = "tokens/"
SETTINGS_OVERRIDES = "settings/overrides.json"
SIGNING_FOLDER = "signing"
SIGNING_KEYS = SIGNING_FOLDER + "/keys.json"
BLOCKS_FOLDER = "blocks"
BLOCKS = BLOCKS_FOLDER + "/"
# In an export directory, next to packages/ and users/.
EXPORTED_HTPASSWD = "htpasswd"
EXPORT_MARKER = "nopard-export.json"
# In a registry directory: the htpasswd file an older nopard read, renamed once moved into the
# store (auth/stored_users.py's ADOPTED_SUFFIX): the operator's copy, no data of the store's.
ADOPTED_HTPASSWD = EXPORTED_HTPASSWD + ".moved-to-store"

# The segments of a package's places after packages/<name>/ (fsck walks the same folders).
DOCUMENT_FILE = "package.json"
META_FILE = "meta.json"
TARBALLS_FOLDER = "tarballs"
MIRRORED_FOLDER = "upstream"

# What a package key holds (PackageKey.kind), and where: the one table keys are built and parsed by.
LOCAL_DOCUMENT = "local document"
UNPUBLISHED = "unpublished"
LOCAL_TARBALL = "local tarball"
MIRRORED_DOCUMENT = "mirrored document"
MIRRORED_META = "mirrored meta"
MIRRORED_TARBALL = "mirrored tarball"
MIRRORED_ATTESTATIONS = "mirrored attestations"
ATTESTATIONS_FOLDER = "attestations"
_FILES = {
    LOCAL_DOCUMENT: (DOCUMENT_FILE,),
    UNPUBLISHED: ("unpublished.json",),
    MIRRORED_DOCUMENT: (MIRRORED_FOLDER, DOCUMENT_FILE),
    MIRRORED_META: (MIRRORED_FOLDER, META_FILE),
}
_TARBALL_FOLDERS = {LOCAL_TARBALL: (TARBALLS_FOLDER,), MIRRORED_TARBALL: (MIRRORED_FOLDER, TARBALLS_FOLDER)}
_FILE_KINDS = {place: kind for kind, place in _FILES.items()}
_FOLDER_KINDS = {place: kind for kind, place in _TARBALL_FOLDERS.items()}
_HASH = re.compile(r"[0-9a-f]{64}")
_JOB = re.compile(r"[a-z][a-z0-9-]{0,63}")


# Packages -------------------------------------------------------------------


def package_prefix(name: str) -> str:
    """The key prefix holding everything of one package (no trailing slash)."""
    return PACKAGES + validate_name(name)


@lru_cache(maxsize=8192)  # every tarball request asks for two or three keys; validating the name costs
def package_key(kind: str, name: str, filename: str | None = None) -> str:
    """The key of ``kind`` (LOCAL_DOCUMENT, ..., MIRRORED_TARBALL, which take a ``filename``) of ``name``."""
    if kind in _FILES:
        return "/".join((package_prefix(name), *_FILES[kind]))
    return tarballs_prefix(kind, name) + validate_tarball_filename(name, filename or "")


def tarballs_prefix(kind: str, name: str) -> str:
    """The listing prefix of a package's tarballs of ``kind`` (LOCAL_TARBALL or MIRRORED_TARBALL)."""
    return "/".join((package_prefix(name), *_TARBALL_FOLDERS[kind])) + "/"


def local_document_key(name: str) -> str:
    """Key of the document of a package published here."""
    return package_key(LOCAL_DOCUMENT, name)


def unpublished_key(name: str) -> str:
    """Key of the record of a whole package's unpublishing (its versions never come back)."""
    return package_key(UNPUBLISHED, name)


def upstream_document_key(name: str) -> str:
    """Key of the document mirrored from the upstream, as the upstream sent it."""
    return package_key(MIRRORED_DOCUMENT, name)


def upstream_meta_key(name: str) -> str:
    """Key of what nopard knows about its mirrored copy (ETag, fetch time)."""
    return package_key(MIRRORED_META, name)


def tarball_key(name: str, filename: str) -> str:
    """Key of one tarball of a package published here."""
    return package_key(LOCAL_TARBALL, name, filename)


def upstream_tarball_key(name: str, filename: str) -> str:
    """Key of a tarball fetched from the upstream."""
    return package_key(MIRRORED_TARBALL, name, filename)


def upstream_attestations_key(name: str, version: str) -> str:
    """Key of a version's attestations fetched from the upstream (``filename`` is the version when parsed)."""
    return "/".join((package_prefix(name), MIRRORED_FOLDER, ATTESTATIONS_FOLDER, validate_version(version) + ".json"))


def local_tarballs_prefix(name: str) -> str:
    """The listing prefix of a published package's tarballs."""
    return tarballs_prefix(LOCAL_TARBALL, name)


def upstream_tarballs_prefix(name: str) -> str:
    """The listing prefix of a package's tarballs fetched from the upstream."""
    return tarballs_prefix(MIRRORED_TARBALL, name)


@dataclass(frozen=True)
class PackageKey:
    """What a key under ``packages/`` holds: ``kind`` (LOCAL_DOCUMENT, ...), the package, the tarball file."""

    kind: str
    name: str
    filename: str | None = None


def parse_package_key(key: str) -> PackageKey | None:
    """The package key ``key`` is, or None when it is none nopard writes."""
    if not isinstance(key, str) or not key.startswith(PACKAGES):
        return None
    segments = key[len(PACKAGES) :].split("/")
    count = 2 if segments[0].startswith("@") else 1
    name, place = "/".join(segments[:count]), tuple(segments[count:])
    try:
        validate_name(name)
        if place[:2] == (MIRRORED_FOLDER, ATTESTATIONS_FOLDER) and len(place) == 3 and place[2].endswith(".json"):
            version = validate_version(place[2].removesuffix(".json"))
            return PackageKey(MIRRORED_ATTESTATIONS, name, version)
        if place in _FILE_KINDS:
            return PackageKey(_FILE_KINDS[place], name)
        if place[:-1] in _FOLDER_KINDS:
            filename = validate_tarball_filename(name, place[-1])
            return PackageKey(_FOLDER_KINDS[place[:-1]], name, filename)
    except InvalidInput:  # not a name nopard validated, so not a key it made
        return None
    return None


def names_of(keys: Iterable[str], kind: str) -> list[str]:
    """The package names of those ``keys`` that are of ``kind`` (e.g. every LOCAL_DOCUMENT), in order."""
    found = []
    for key in keys:
        parsed = parse_package_key(key)
        if parsed is not None and parsed.kind == kind:
            found.append(parsed.name)
    return found


def tarball_file_of(key: str) -> str | None:
    """The tarball file name a tarball key (local or mirrored) ends in; None for any other key."""
    parsed = parse_package_key(key)
    return parsed.filename if parsed is not None else None


# Users, tokens, jobs, checks ----------------------------------------------------


def user_key(user: str) -> str:
    """Key of a user's profile; ``user`` is a validated user name (one key segment)."""
    if not isinstance(user, str) or "/" in user:
        raise InvalidKey(f"invalid user name for a key: {user!r}")
    return check_key(f"{USERS}{user}.json")


def token_key(hashed: str) -> str:
    """Key of the record of a token, by the token's hex SHA-256 (never the token itself)."""
    if not isinstance(hashed, str) or not _HASH.fullmatch(hashed):
        raise InvalidKey("a token key is made from a hex SHA-256")
    return f"{TOKENS}{hashed}.json"


def sync_lock_key(job: str) -> str:
    """Key of the lock object of one sync job (refresh, backfill, prefetch)."""
    if not isinstance(job, str) or not _JOB.fullmatch(job):
        raise InvalidKey(f"invalid job name for a key: {job!r}")
    return f"sync/{job}.lock"


def upstream_keys_key(url: str) -> str:
    """Key of the public signing keys an upstream serves, by the SHA-256 of its URL."""
    return f"{SIGNING_FOLDER}/upstream-{hashlib.sha256(url.encode()).hexdigest()}.json"


ADVISORIES_FOLDER = "advisories"
ADVISORIES_INDEX = ADVISORIES_FOLDER + "/index.json"
ADVISORIES_SOURCE = ADVISORIES_FOLDER + "/source.json"
_SHARD = re.compile(r"[0-9a-f]{2}\.json")


def _shard_of(name: str) -> str:
    """The file of the 256 shards package ``name`` hashes to (advisories, usage): 2 hex of its SHA-256."""
    return f"{hashlib.sha256(validate_name(name).encode()).hexdigest()[:2]}.json"


def advisory_shard_key(name: str) -> str:
    """Key of the object holding the advisories of package ``name`` (and of the others hashing there)."""
    return f"{ADVISORIES_FOLDER}/packages/{_shard_of(name)}"
def blocks_key(name: str) -> str:
    """Key of the blocks of package ``name``'s versions (admins' and advisories')."""
    return f"{BLOCKS}{validate_name(name)}.json"


def blocked_name_of(key: str) -> str | None:
    """The package a ``blocks_key`` is of; None for any other key."""
    if not isinstance(key, str) or not key.startswith(BLOCKS) or not key.endswith(".json"):
        return None
    name = key[len(BLOCKS) : -len(".json")]
    try:
        validate_name(name)
    except InvalidInput:
        return None
    return name


USAGE_FOLDER = "usage"
USAGE = USAGE_FOLDER + "/"
USAGE_PINNED = USAGE + "pinned.json"


def usage_shard_key(name: str) -> str:
    """Key of the usage record of package ``name`` (and of the others hashing there: 256 shards)."""
    return USAGE + _shard_of(name)


CHANGES_FOLDER = "changes"
CHANGES_HEAD = CHANGES_FOLDER + "/head.json"
CHANGES_FOLLOWED = CHANGES_FOLDER + "/followed.json"
_SEGMENT = re.compile(r"(0|[1-9][0-9]{0,17})\.json")


def changes_segment_key(index: int) -> str:
    """Key of segment ``index`` (0, 1, ...) of the changes feed nopard serves (nopard.catalog.changes)."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InvalidKey(f"invalid changes segment: {index!r}")
    return f"{CHANGES_FOLDER}/log/{index}.json"


def health_probe_key(unique: str) -> str:
    """Key of one readiness probe object; ``unique`` (e.g. a uuid's hex) keeps instances apart."""
    return check_key(f"health/probe-{unique}")


# What any key is, for counting a store by kind (export compares what it wrote with what is held).
USER_PROFILE = "user profile"
TOKEN_RECORD = "token"
SYNC_LOCK = "sync lock"
SETTINGS = "settings"
HEALTH_PROBE = "health probe"
ADVISORIES = "advisories"
BLOCK_LIST = "blocks"
USAGE_RECORD = "usage"
CHANGES = "changes feed"
SIGNING = "signing keys"
HTPASSWD = "htpasswd"
MARKER = "export marker"
OLD_HTPASSWD = "htpasswd moved to the store"
UNKNOWN = "unknown"
# Every kind key_kind names but UNKNOWN: export and import decide about each one (a test checks).
KINDS = (LOCAL_DOCUMENT, UNPUBLISHED, LOCAL_TARBALL, MIRRORED_DOCUMENT, MIRRORED_META, MIRRORED_TARBALL,
         MIRRORED_ATTESTATIONS, USER_PROFILE, TOKEN_RECORD, SYNC_LOCK, SETTINGS, HEALTH_PROBE, ADVISORIES,
         BLOCK_LIST, SIGNING, USAGE_RECORD, HTPASSWD, MARKER, OLD_HTPASSWD, CHANGES)


def key_kind(key: str) -> str:
    """The kind of what ``key`` holds: a PackageKey kind, USER_PROFILE, ..., or UNKNOWN (no key nopard writes)."""
    parsed = parse_package_key(key)
    if parsed is not None:
        return parsed.kind
    folder, _, rest = key.partition("/")
    if folder == USERS_FOLDER and rest.endswith(".json") and "/" not in rest:
        return USER_PROFILE
    if key.startswith(TOKENS) and _HASH.fullmatch(rest.removesuffix(".json")) and rest.endswith(".json"):
        return TOKEN_RECORD
    if folder == "sync" and rest.endswith(".lock") and _JOB.fullmatch(rest.removesuffix(".lock")):
        return SYNC_LOCK
    if key == SETTINGS_OVERRIDES:
        return SETTINGS
    if folder == SIGNING_FOLDER and (key == SIGNING_KEYS or (rest.startswith("upstream-") and rest.endswith(".json"))):
        return SIGNING
    if key in (ADVISORIES_INDEX, ADVISORIES_SOURCE) or (
            folder == ADVISORIES_FOLDER and rest.startswith("packages/") and _SHARD.fullmatch(rest[9:])):
        return ADVISORIES
    if folder == "health" and rest.startswith("probe-"):
        return HEALTH_PROBE
    if blocked_name_of(key) is not None:
        return BLOCK_LIST
    if folder == USAGE_FOLDER and (key == USAGE_PINNED or _SHARD.fullmatch(rest)):
        return USAGE_RECORD
    if key in (CHANGES_HEAD, CHANGES_FOLLOWED) or (
            folder == CHANGES_FOLDER and rest.startswith("log/") and _SEGMENT.fullmatch(rest[4:])):
        return CHANGES
    return {EXPORTED_HTPASSWD: HTPASSWD, USERS_HTPASSWD: HTPASSWD, EXPORT_MARKER: MARKER,
            ADOPTED_HTPASSWD: OLD_HTPASSWD}.get(key, UNKNOWN)
