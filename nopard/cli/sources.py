"""Reading FROM for ``nopard-admin import``: the three registry layouts it recognises.

- nopard's own (an export, or another nopard's registry directory):
  ``packages/<name>/package.json`` with ``packages/<name>/tarballs/``, the
  mirrored ``packages/<name>/upstream/``, ``htpasswd`` and ``users/<name>.json``,
  and every other key of a kind kept as it is (``AS_IS``); ``nopard-export.json``
  marks an export.
- Verdaccio or sinopia storage: ``<storage>/<name>/package.json`` (scoped:
  ``<storage>/@scope/<name>/package.json``), its tarballs beside it, and the
  users' ``htpasswd`` in the storage folder or its parent (next to
  config.yaml). A Verdaccio config folder holding ``storage/`` works too.
- nopar: ``<registry>/registry.json`` and ``<registry>/<name>/<name>.json``
  (scoped: ``@scope/<name>/<name>.json``), its tarballs beside it. nopar
  keeps no users.

What is read is only described here (a Source); nopard/cli/transfer.py writes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nopard.cli.maintenance import parse_document
from nopard.domain import names, packument
from nopard.domain.errors import InvalidInput
from nopard.storage import keys

# Kinds of key a nopard export's files are imported as they are (only where the store has none);
# the others are read by their own rules: packages, unpublishing, users (htpasswd and profiles).
AS_IS = frozenset({keys.TOKEN_RECORD, keys.SETTINGS, keys.ADVISORIES, keys.BLOCK_LIST, keys.MIRRORED_ATTESTATIONS,
                   keys.USAGE_RECORD})
READ_BY_RULE = frozenset({keys.LOCAL_DOCUMENT, keys.LOCAL_TARBALL, keys.UNPUBLISHED, keys.MIRRORED_DOCUMENT,
                          keys.MIRRORED_TARBALL, keys.MIRRORED_META, keys.USER_PROFILE, keys.HTPASSWD,
                          keys.MARKER})


class SourceError(ValueError):
    """FROM or TO cannot be used; the message says why."""


@dataclass
class SourcePackage:
    """A package as another registry stored it."""

    name: str
    document: dict[str, Any]
    directory: str  # where its tarballs lie
    cached: bool = False  # only a copy of an upstream's package
    upstream_urls: dict[str, str] = field(default_factory=dict)  # tarball file -> upstream URL


@dataclass
class Source:
    """What ``import`` found in FROM."""

    layout: str  # nopard, verdaccio or nopar
    root: str
    packages: list[SourcePackage]
    unreadable: list[str]
    htpasswd: str | None = None
    profiles: str | None = None  # directory of users/<name>.json (nopard layout)
    unpublished: dict[str, str] = field(default_factory=dict)  # name -> its unpublished.json (nopard layout)
    as_is: dict[str, str] = field(default_factory=dict)  # key -> its file, of a kind in AS_IS (nopard layout)


# Reading FROM -----------------------------------------------------------------


def detect_source(path: str, htpasswd: str | None = None) -> Source:
    """Recognise the registry layout in ``path``; SourceError when there is none."""
    if not os.path.isdir(path):
        raise SourceError(f"{path} is not a directory")
    root = os.path.abspath(path)
    if os.path.isdir(os.path.join(root, "storage")) and any(
        os.path.isfile(os.path.join(root, config)) for config in ("config.yaml", "config.yml")
    ):
        root = os.path.join(root, "storage")  # a Verdaccio config folder
    if htpasswd is not None and not os.path.isfile(htpasswd):
        raise SourceError(f"--htpasswd {htpasswd}: no such file")
    if _is_nopard(root):
        return _read_nopard(root, htpasswd)
    if os.path.isfile(os.path.join(root, "registry.json")):
        return _read_nopar(root, htpasswd)
    if any(os.path.isfile(os.path.join(root, db)) for db in (".verdaccio-db.json", ".sinopia-db.json")) or any(
        os.path.isfile(os.path.join(directory, "package.json")) for _name, directory in _package_dirs(root)
    ):
        return _read_verdaccio(root, htpasswd)
    if any(os.path.isfile(_nopar_document(name, directory)) for name, directory in _package_dirs(root)):
        return _read_nopar(root, htpasswd)
    raise SourceError(
        f"{path} holds no registry nopard can import: no nopard packages/ folder, "
        "no Verdaccio/sinopia <name>/package.json, no nopar registry.json or <name>/<name>.json"
    )


def _is_nopard(root: str) -> bool:
    if os.path.isfile(os.path.join(root, keys.EXPORT_MARKER)):
        return True
    packages = os.path.join(root, keys.PACKAGES_FOLDER)
    if not os.path.isdir(packages) or os.path.exists(os.path.join(packages, keys.DOCUMENT_FILE)):
        return False
    return any(
        os.path.isfile(os.path.join(directory, keys.DOCUMENT_FILE))
        or os.path.isdir(os.path.join(directory, keys.MIRRORED_FOLDER))
        for _name, directory in _package_dirs(packages)
    )


def _package_dirs(root: str) -> Iterator[tuple[str, str]]:
    """(name as the folders spell it, folder) of every package folder, scoped ones one level down."""
    for entry in _subdirectories(root):
        if entry.startswith("@"):
            for name in _subdirectories(os.path.join(root, entry)):
                yield f"{entry}/{name}", os.path.join(root, entry, name)
        else:
            yield entry, os.path.join(root, entry)


def _nopar_document(name: str, directory: str) -> str:
    return os.path.join(directory, names.unscoped(name) + ".json")


def _load(path: str, folder_name: str, source: Source) -> tuple[str, dict[str, Any]] | None:
    """(name, document) from a document file, or None (recorded as unreadable)."""
    try:
        with open(path, "rb") as file:
            document = parse_document(file.read())
    except OSError as error:
        source.unreadable.append(f"{path}: {error.strerror}")
        return None
    if document is None:
        source.unreadable.append(f"{path}: not a package document")
        return None
    name = document.get("name") or folder_name
    try:
        names.validate_name(name)
    except InvalidInput as error:
        source.unreadable.append(f"{path}: {error.message}")
        return None
    return name, document


def _read_nopard(root: str, htpasswd: str | None) -> Source:
    users = _first_file(os.path.join(root, keys.EXPORTED_HTPASSWD), os.path.join(root, *keys.USERS_HTPASSWD.split("/")))
    source = Source("nopard", root, [], [], htpasswd or users,
                    os.path.join(root, keys.USERS_FOLDER))
    for folder_name, directory in _package_dirs(os.path.join(root, keys.PACKAGES_FOLDER)):
        document_path = os.path.join(directory, keys.DOCUMENT_FILE)
        if os.path.isfile(document_path) and (loaded := _load(document_path, folder_name, source)):
            source.packages.append(SourcePackage(loaded[0], loaded[1], os.path.join(directory, keys.TARBALLS_FOLDER)))
        mirrored = os.path.join(directory, keys.MIRRORED_FOLDER, keys.DOCUMENT_FILE)
        if os.path.isfile(mirrored) and (loaded := _load(mirrored, folder_name, source)):
            tarballs = os.path.join(directory, keys.MIRRORED_FOLDER, keys.TARBALLS_FOLDER)
            source.packages.append(SourcePackage(loaded[0], loaded[1], tarballs, cached=True))
        record = os.path.join(directory, "unpublished.json")
        if os.path.isfile(record):  # a whole package's unpublishing: its versions never come back
            source.unpublished[folder_name] = record
    for key, path in _stored_files(root):
        kind = keys.key_kind(key)
        if kind in AS_IS:
            source.as_is[key] = path
        elif kind not in READ_BY_RULE and kind not in NOT_CARRIED:
            source.unreadable.append(f"{path}: no kind of key nopard knows, not imported")
    return source


# Kinds of key no export or import carries: the state of the instances running on a store, made
# again where they run (its locks, health probe, marker, changes feed and a follower's position),
# the users file an older nopard read (its users are in users/htpasswd), and the signing keys (a
# registry's private key stays with it; import signs what it brings with the destination's key).
NOT_CARRIED = frozenset({keys.SYNC_LOCK, keys.HEALTH_PROBE, keys.MARKER, keys.SIGNING, keys.OLD_HTPASSWD,
                         keys.CHANGES})


def _stored_files(root: str) -> Iterator[tuple[str, str]]:
    """(key, file) of every file below ``root`` a key could name (no dot names: temporary files, locks)."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        relative = os.path.relpath(directory, root)
        base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        for name in sorted(files):
            if not name.startswith("."):
                yield base + name, os.path.join(directory, name)


def _read_verdaccio(root: str, htpasswd: str | None) -> Source:
    found = htpasswd or _first_file(os.path.join(root, "htpasswd"), os.path.join(os.path.dirname(root), "htpasswd"))
    source = Source("verdaccio", root, [], [], found)
    for folder_name, directory in _package_dirs(root):
        document_path = os.path.join(directory, "package.json")
        if not os.path.isfile(document_path) or not (loaded := _load(document_path, folder_name, source)):
            continue
        name, document = loaded
        distfiles = document.get("_distfiles")
        distfiles = distfiles if isinstance(distfiles, dict) else {}
        urls = {f: d["url"] for f, d in distfiles.items() if isinstance(d, dict) and isinstance(d.get("url"), str)}
        files = [packument.dist_tarball_file(m.get("dist"))
                 for m in document["versions"].values() if isinstance(m, dict)]
        cached = bool(document.get("_uplinks")) and bool(files) and all(f in distfiles for f in files)
        source.packages.append(SourcePackage(name, document, directory, cached, urls))
    return source


def _read_nopar(root: str, htpasswd: str | None) -> Source:
    source = Source("nopar", root, [], [], htpasswd)
    for folder_name, directory in _package_dirs(root):
        document_path = _nopar_document(folder_name, directory)
        if not os.path.isfile(document_path) or not (loaded := _load(document_path, folder_name, source)):
            continue
        name, document = loaded
        urls = {}
        attachments = document.get("_attachments")
        attachments = attachments if isinstance(attachments, dict) else {}
        for filename, attachment in attachments.items():
            if isinstance(attachment, dict) and isinstance(attachment.get("forwardUrl"), str):
                urls[filename] = attachment["forwardUrl"]
        forwarded = document.get("_fwd-dists")  # nopar before 0.2
        if isinstance(forwarded, dict):
            urls.update({f: u for f, u in forwarded.items() if isinstance(u, str)})
        cached = document.get("_proxied") is True or isinstance(forwarded, dict)
        source.packages.append(SourcePackage(name, document, directory, cached, urls))
    return source


def _subdirectories(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _first_file(*paths: str) -> str | None:
    return next((path for path in paths if os.path.isfile(path)), None)
