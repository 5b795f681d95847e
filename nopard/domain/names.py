"""Package names, versions, tarball file names and the request paths that carry them.

Storage keys are made from these validated names in nopard/storage/keys.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from nopard.domain.errors import InvalidInput

MAX_NAME_LENGTH = 214
_SCOPE = r"@[a-z0-9~-][a-z0-9._~-]*"
# Old packages may carry uppercase letters and a few more URL-safe marks.
_BARE_SERVED = r"[A-Za-z0-9._~!'()*-]+"
_BARE_NEW = r"[a-z0-9._-]+"
# The leading "." / "_" / "-" rule applies to the whole name, so "@s/_n" is fine.
_SERVED_NAME = re.compile(rf"(?:{_SCOPE}/[A-Za-z0-9_~!'()*-]|[A-Za-z0-9~!'()*]){_BARE_SERVED[:-1]}*")
_NEW_NAME = re.compile(rf"(?:{_SCOPE}/[a-z0-9_-]|[a-z0-9]){_BARE_NEW[:-1]}*")
_RESERVED = {"node_modules", "favicon.ico"}

_VERSION = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_TAG = re.compile(r"[A-Za-z0-9._~-]{1,100}")
# What semver.validRange would accept: comparators over numbers and x/X/* wildcards.
_PART = r"[\dxX*]+"
_RANGE_LIKE = re.compile(
    rf"^\s*[=v<>~^]*\s*(?:{_PART}(?:\.{_PART}){{2}}(?:-[0-9A-Za-z.-]+)?|{_PART}(?:\.{_PART}){{0,2}})"
    r"(?:\+[0-9A-Za-z.-]*)?\s*$|\|\||\s-\s|^\s*$"
)


def validate_name(name: str, *, new: bool = False) -> str:
    """Return ``name`` if it is a package name nopard serves, else raise InvalidInput.

    ``new`` applies the stricter rules for names being published for the
    first time (lowercase, no ``~'!()*``).
    """
    pattern = _NEW_NAME if new else _SERVED_NAME
    if not isinstance(name, str) or not name:
        raise InvalidInput("package name is missing")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"package name is longer than {MAX_NAME_LENGTH} characters")
    if not pattern.fullmatch(name) or name.lower() in _RESERVED:
        raise InvalidInput(f"invalid package name: {name!r}")
    return name


def unscoped(name: str) -> str:
    """The part of a name after its scope: ``@s/n`` -> ``n``."""
    return name.rsplit("/", 1)[-1]


def validate_version(version: str) -> str:
    """Return ``version`` if it is strict semver, else raise InvalidInput."""
    if not isinstance(version, str) or len(version) > 256 or not _VERSION.fullmatch(version):
        raise InvalidInput(f"invalid version: {version!r}")
    return version


def is_version(text: str) -> bool:
    """Whether ``text`` is a strict semver version."""
    return isinstance(text, str) and len(text) <= 256 and bool(_VERSION.fullmatch(text))


def validate_tag(tag: str) -> str:
    """A dist-tag: URL-safe, and never something a client would read as a range."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidInput(f"invalid dist-tag: {tag!r}")
    if _RANGE_LIKE.search(tag):
        raise InvalidInput(f"dist-tag {tag!r} looks like a version range")
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


def validate_tarball_filename(name: str, filename: str) -> str:
    """Return ``filename`` if it is a tarball file of package ``name``, else raise InvalidInput."""
    prefix = unscoped(name) + "-"
    if (
        not filename.startswith(prefix)
        or not filename.endswith(".tgz")
        or not is_version(filename[len(prefix) : -len(".tgz")])
    ):
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
        return PackagePath(name, "tarball", validate_tarball_filename(name, rest[1]))
    if len(rest) == 2 and rest[0] == "-rev" and rest[1]:
        return PackagePath(name, "revision", rest[1])
    if len(rest) == 4 and rest[0] == "-" and rest[2] == "-rev":
        # npm unpublish's last step: DELETE /<pkg>/-/<file>/-rev/<rev>
        return PackagePath(name, "tarball-revision", validate_tarball_filename(name, rest[1]))
    raise InvalidInput("unrecognised package path")


PACKAGE_ACTIONS = ("dist-tags", "collaborators", "visibility")


def parse_package_action(path: bytes | str) -> PackagePath:
    """Parse ``/-/package/<pkg>/<action>[/<tag>]`` (still percent-encoded).

    ``kind`` is the action (``dist-tags``, ``collaborators``, ``visibility``);
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
        raise InvalidInput("invalid package name")
    return validate_name("/".join(segments[:count])), segments[count:]
