"""Package names, versions, tarball file names and the request paths that carry them.

Storage keys are made from these validated names in nopard/storage/keys.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from nopard.domain.errors import InvalidInput, NotFound

MAX_NAME_LENGTH = 214
# npm's validate-npm-package-name, as it judges names of old packages (validForOldPackages):
# uppercase letters and ~'!()* are only warnings there (refused for new names on the public
# registry, not by npm), so legacy names (JSONStream, imports, mirrors) publish, serve and
# install. One departure: a leading "-" is served too, as npm's own pending fix has it
# (old packages such as "-x-y" exist), though npm 11 itself refuses to install them.
_URL_SAFE = re.compile(r"[A-Za-z0-9._~!'()*-]+")  # what encodeURIComponent leaves as it is
# Scopes are user and organisation names, lowercase on every registry: an uppercase one names no
# old package, only a look-alike of a real scope that the private scopes and access rules
# (written in lowercase) would not cover.
_SCOPE = re.compile(r"[a-z0-9._~!'()*-]+")
_RESERVED = {"node_modules", "favicon.ico"}
_ALPHABET = "letters, digits and - . _ ~ ! ' ( ) *"

_VERSION = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
# npm reads versions with node-semver, which refuses a major, minor or patch number above
# JavaScript's Number.MAX_SAFE_INTEGER: a version past it installs nowhere.
MAX_VERSION_NUMBER = 2**53 - 1
MAX_TAG_LENGTH = 100
_TAG = re.compile(r"[A-Za-z0-9._~-]+")
# Properties every JavaScript object has: clients reading ``dist-tags[tag]`` would get them.
_OBJECT_KEYS = frozenset({
    "__proto__", "constructor", "prototype", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable",
    "toLocaleString", "toString", "valueOf", "__defineGetter__", "__defineSetter__", "__lookupGetter__",
    "__lookupSetter__",
})
# node-semver's range grammar (strict and loose: npm-package-arg reads specs loosely) as it
# applies to the tag alphabet, which has no spaces, "|", "<", ">", "=", "^", "*" or "+":
# an optional "~", "v"s, then x-range parts, a prerelease only after three parts. (Without
# "~", node-semver reads "x.1" as no range at all; tests compare this with npm's semver.)
_XPART = r"(?:\d+|[xX])"
_PRERELEASE_ID = r"(?:\d*[A-Za-z-][A-Za-z0-9-]*|\d+)"
_RANGE_TAG = re.compile(
    rf"(?:~v*|v*(?![xX]\.\d)){_XPART}(?:\.{_XPART}(?:\.{_XPART}(?:-?{_PRERELEASE_ID}(?:\.{_PRERELEASE_ID})*)?)?)?"
)


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a package name npm accepts for old packages (nopard's rule), or None."""
    if not isinstance(name, str) or not name:
        return "package name is missing"
    if len(name) > MAX_NAME_LENGTH:
        return f"package name is longer than {MAX_NAME_LENGTH} characters"
    if name.startswith("."):
        return "a name cannot start with a period"
    if name.startswith("_"):
        return "a name cannot start with an underscore"
    if name == "-":
        return "'-' is the registry's own path segment (/-/...), not a name"
    if name.lower() in _RESERVED:
        return f"{name.lower()} is not a valid package name"
    if name.startswith("@"):
        scope, slash, bare = name[1:].partition("/")
        if not slash or not bare:
            return "a scoped name is @scope/name: the name after the scope is missing"
        if not scope or scope in (".", "..") or not _SCOPE.fullmatch(scope):
            return f"a scope may hold only {_ALPHABET.replace('letters', 'lowercase letters')}"
        if bare.startswith("."):
            return "a name cannot start with a period"
        if not _URL_SAFE.fullmatch(bare):
            return f"a name may hold only {_ALPHABET}" + (" (one '/', after the @scope)" if "/" in bare else "")
        return None
    if not _URL_SAFE.fullmatch(name):
        if "@" in name:
            return "'@' may only begin a scope (@scope/name)"
        return f"a name may hold only {_ALPHABET}" + (" (a '/' only after an @scope)" if "/" in name else "")
    return None


def validate_name(name: str) -> str:
    """Return ``name`` if it is a package name nopard publishes and serves, else raise InvalidInput saying why."""
    problem = name_problem(name)
    if problem is not None:
        shown = problem if problem.startswith("package name") else f"invalid package name {name!r}: {problem}"
        raise InvalidInput(shown)
    return name


def unscoped(name: str) -> str:
    """The part of a name after its scope: ``@s/n`` -> ``n``."""
    return name.rsplit("/", 1)[-1]


def version_problem(version: object) -> str | None:
    """Why ``version`` is not a version npm can install (strict semver, numbers npm can hold), or None."""
    if not isinstance(version, str):
        return "a version must be a string"
    if len(version) > 256:
        return "a version is at most 256 characters"
    match = _VERSION.fullmatch(version)
    if match is None:
        return "not a semver version (major.minor.patch[-prerelease][+build])"
    if any(int(number) > MAX_VERSION_NUMBER for number in match.groups()[:3]):
        return f"a major, minor or patch number above {MAX_VERSION_NUMBER} (2^53-1), which npm cannot read"
    return None


def validate_version(version: str) -> str:
    """Return ``version`` if npm can read it as a version, else raise InvalidInput saying why."""
    problem = version_problem(version)
    if problem is not None:
        raise InvalidInput(f"invalid version {version!r}: {problem}")
    return version


def is_version(text: str) -> bool:
    """Whether ``text`` is a version npm can read (``version_problem`` finds nothing)."""
    return version_problem(text) is None


def tag_problem(tag: object) -> str | None:
    """Why ``tag`` cannot be a dist-tag, or None.

    A tag travels in URL paths and is read by clients as a key of a JavaScript
    object and, in ``npm install name@tag``, as a spec: it must be URL-safe,
    no path segment of its own, no property every object has, and nothing
    node-semver reads as a version range (as npm dist-tag and publish refuse).
    """
    if not isinstance(tag, str) or not tag:
        return "a dist-tag must be a non-empty string"
    if len(tag) > MAX_TAG_LENGTH:
        return f"a dist-tag is at most {MAX_TAG_LENGTH} characters"
    if not _TAG.fullmatch(tag):
        return "a dist-tag may hold only letters, digits and . _ ~ - (no '/', no whitespace)"
    if not tag.strip("."):
        return "'.' and '..' are path segments, not tags"
    if tag in _OBJECT_KEYS:
        return "the name of a property every JavaScript object has"
    if _RANGE_TAG.fullmatch(tag):
        return "it is a valid semver range, which npm would read as a version range rather than a tag"
    return None


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it may be a dist-tag (``tag_problem``), else raise InvalidInput saying why."""
    problem = tag_problem(tag)
    if problem is not None:
        raise InvalidInput(f"invalid dist-tag {tag!r}: {problem}")
    return tag


def tarball_filename(name: str, version: str) -> str:
    """The conventional tarball file name of a version: ``<unscoped>-<version>.tgz``."""
    return f"{unscoped(name)}-{version}.tgz"


def tarball_file_from_url(url: str) -> str:
    """The file name a tarball URL (or bare file name) ends in, without any ``?query``/``#fragment``.

    ``""`` when there is none. Every place that reads a file name out of a
    ``dist.tarball`` goes through here, so they all agree on odd URLs.
    """
    path = url.split("#", 1)[0].split("?", 1)[0]
    return path.rstrip("/").rsplit("/", 1)[-1]


def version_tarball_file(name: str, version: str, tarball: str) -> str | None:
    """The file version ``version`` of ``name``'s tarball is stored and served under here.

    The file its ``dist.tarball`` (URL or bare name) ends in when that is a
    tarball name of ``name``, as the npm registry gives; else the conventional
    ``<unscoped>-<version>.tgz`` (some registries serve tarballs at URLs such
    as ``.../download/@s/p/1.0.0/<hash>``; nopard keeps that URL to fetch
    from). None when neither is a tarball name (a version nopard cannot name).
    """
    for candidate in (tarball_file_from_url(tarball), tarball_filename(name, version)):
        if is_tarball_filename(name, candidate):
            return candidate
    return None


def is_tarball_filename(name: str, filename: str) -> bool:
    """Whether ``filename`` is a tarball file name of package ``name`` (``<unscoped>-<version>.tgz``)."""
    prefix = unscoped(name) + "-"
    return (
        isinstance(filename, str)
        and filename.startswith(prefix)
        and filename.endswith(".tgz")
        and is_version(filename[len(prefix) : -len(".tgz")])
    )


def validate_tarball_filename(name: str, filename: str) -> str:
    """Return ``filename`` if it is a tarball file of package ``name``, else raise InvalidInput."""
    if not is_tarball_filename(name, filename):
        raise InvalidInput(f"invalid tarball file name for {name}: {filename!r}")
    return filename


# Request paths --------------------------------------------------------------


@dataclass(frozen=True)
class PackagePath:
    """What a package URL path names.

    ``kind`` is ``document`` (``/<pkg>``), ``version`` (``/<pkg>/<v-or-tag>``),
    ``tarball`` (``/<pkg>/-/<file>``), ``revision`` (``/<pkg>/-rev/<rev>``) or
    ``tarball-revision`` (``/<pkg>/-/<file>/-rev/<rev>``); ``argument`` is the
    version, file or revision (the file, for ``tarball-revision``).
    """

    name: str
    kind: str
    argument: str | None = None


@lru_cache(maxsize=8192)  # every package request parses its path, an install's the same few hundred again
def parse_package_path(path: bytes | str) -> PackagePath:
    """Parse a request path (still percent-encoded) into the package it names.

    Every spelling clients use is accepted: ``/@s%2fn``, ``/@s%2Fn``,
    ``/@s/n``, ``/%40s%2fn``. Raises InvalidInput for anything else.
    """
    name, rest = _split_package_path(path)
    if not rest:
        return PackagePath(name, "document")
    if len(rest) == 1 and rest[0]:
        return PackagePath(name, "version", rest[0])
    if len(rest) == 2 and rest[0] == "-":
        return PackagePath(name, "tarball", _tarball_of_path(name, rest[1]))
    if len(rest) == 2 and rest[0] == "-rev" and rest[1]:
        return PackagePath(name, "revision", rest[1])
    if len(rest) == 4 and rest[0] == "-" and rest[2] == "-rev":
        # npm unpublish's last step: DELETE /<pkg>/-/<file>/-rev/<rev>
        return PackagePath(name, "tarball-revision", _tarball_of_path(name, rest[1]))
    raise InvalidInput("unrecognised package path")


def _tarball_of_path(name: str, filename: str) -> str:
    """The tarball file a path names; another package's file (or no tarball name) is simply not there.

    Like any tarball nopard does not hold, it is a 404 (npm reports a missing
    tarball); only a dot segment, which is no file name at all, is malformed.
    """
    if filename in (".", ".."):
        raise InvalidInput("invalid package path: dot segment")
    if not is_tarball_filename(name, filename):
        raise NotFound(f"tarball not found: {name}/-/{filename}")
    return filename


PACKAGE_ACTIONS = ("dist-tags", "collaborators", "visibility", "access")


def parse_package_action(path: bytes | str) -> PackagePath:
    """Parse ``/-/package/<pkg>/<action>[/<tag>]`` (still percent-encoded).

    ``kind`` is the action (``dist-tags``, ``collaborators``, ``visibility``, ``access``);
    ``argument`` the dist-tag, if any.
    """
    prefix = "/-/package/"
    if not (path.startswith(prefix.encode()) if isinstance(path, bytes) else path.startswith(prefix)):
        raise InvalidInput("invalid package path")
    name, rest = _split_package_path(path[len(prefix) - 1 :])
    if not rest or rest[0] not in PACKAGE_ACTIONS or len(rest) > 2:
        raise InvalidInput("unrecognised package path")
    if len(rest) == 2 and rest[0] != "dist-tags":
        raise InvalidInput("unrecognised package path")
    return PackagePath(name, rest[0], rest[1] if len(rest) == 2 else None)


def _split_package_path(path: bytes | str) -> tuple[str, list[str]]:
    """The validated package name at the start of a path, and the segments after it."""
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("path is not valid UTF-8") from None
    if "\\" in decoded or "\x00" in decoded:
        raise InvalidInput("invalid characters in path")
    if not decoded.startswith("/") or decoded.startswith("//"):
        raise InvalidInput("invalid package path")
    segments = decoded[1:].split("/")
    if "" in segments:
        raise InvalidInput("invalid package path: empty segment")
    count = 2 if segments[0].startswith("@") else 1
    if len(segments) < count:
        validate_name(segments[0])  # a bare "@scope": raises, saying the name is missing
    return validate_name("/".join(segments[:count])), segments[count:]
