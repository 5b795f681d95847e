"""The registry packages a lockfile pins: package-lock.json / npm-shrinkwrap.json (v1, v2, v3),
yarn.lock (yarn 1) and pnpm-lock.yaml (lockfile versions 5.x, 6.x and 9.x).

``nopard-admin prefetch`` asks nopard for each of them, so an install of the lockfile later
works offline. Only what a registry serves is returned: git, file, link and workspace
entries are skipped, npm aliases are resolved to the real package name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nopard.domain import names
from nopard.domain.errors import InvalidInput


class LockfileError(ValueError):
    """A lockfile that cannot be read; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Locked:
    """One exact version of a registry package (the real name, not an npm alias)."""

    name: str
    version: str


Keep = Callable[[str, str, str], None]  # (where, name, version)


def read_lockfile(path: str | os.PathLike) -> list[Locked]:
    """Read and parse the lockfile at ``path``; see parse_lockfile."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise LockfileError(f"{path}: cannot read: {reason}") from None
    return parse_lockfile(str(path), text)


def parse_lockfile(filename: str, text: str) -> list[Locked]:
    """The registry packages pinned by lockfile ``text``, deduplicated, sorted by (name, version).

    The format comes from the file name (``package-lock*.json``, ``npm-shrinkwrap*.json``,
    ``yarn*.lock``, ``pnpm-lock*.yaml``), else from the content. Raises LockfileError for an
    unknown or malformed file or an invalid package name; entries whose version is not
    semver (git refs, file paths) are skipped.
    """
    parse = _parser_for(filename, text)
    if parse is None:
        raise LockfileError(f"{filename}: not a package-lock.json, npm-shrinkwrap.json, "
                            "yarn.lock or pnpm-lock.yaml")
    found: set[Locked] = set()

    def keep(where: str, name: str, version: str) -> None:
        if not names.is_version(version):
            return  # a git commit, file path or the like: nothing a registry could serve
        try:
            names.validate_name(name)
        except InvalidInput as error:
            raise LockfileError(f"{where}: {error.message}") from None
        found.add(Locked(name, version))

    parse(filename, text, keep)
    return sorted(found, key=lambda locked: (locked.name, locked.version))


def _parser_for(filename: str, text: str) -> Callable[[str, str, Keep], None] | None:
    base = os.path.basename(filename)
    # Prefixes, not exact names, so copies such as "package-lock.v1.json" are recognised;
    # files named otherwise by their content.
    if base.startswith(("package-lock", "npm-shrinkwrap")) and base.endswith(".json"):
        return _parse_npm
    if base.startswith("yarn") and base.endswith(".lock"):
        return _parse_yarn
    if base.startswith("pnpm-lock") and base.endswith((".yaml", ".yml")):
        return _parse_pnpm
    if text.lstrip().startswith("{"):
        return _parse_npm
    if "# yarn lockfile v1" in text:
        return _parse_yarn
    return _parse_pnpm if re.search(r"^lockfileVersion:", text, re.M) else None


def _from_registry(resolved: object) -> bool:
    # No "resolved" (npm may omit it) means the registry; git+..., file:... mean something else.
    # An http(s) URL is taken as a registry tarball: registries differ too much in their paths
    # to tell them from a remote tarball dependency.
    return not resolved or str(resolved).startswith(("http://", "https://"))


# npm ------------------------------------------------------------------------


def _parse_npm(filename: str, text: str, keep: Keep) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise LockfileError(f"{filename}:{error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(data, dict) or "lockfileVersion" not in data:
        raise LockfileError(f"{filename}: no lockfileVersion: not an npm lockfile")
    packages = data.get("packages")
    if isinstance(packages, dict):
        # v2 and v3. v2 also carries the v1 tree for old npm versions: the same packages.
        for path, entry in packages.items():
            if not isinstance(entry, dict):
                raise LockfileError(f"{filename}: packages[{path!r}] is not an object")
            # "" is the project; paths outside node_modules/ are the targets of links
            # (workspaces, file: directories); bundled packages come inside their parent.
            if "node_modules/" not in path or entry.get("link") or entry.get("inBundle"):
                continue
            if _from_registry(entry.get("resolved")):
                # "name" is set when the folder name is an alias ("my-ms": "npm:ms@2.1.3").
                name = entry.get("name") or path.rpartition("node_modules/")[2]
                keep(f"{filename}: {path}", name, entry.get("version", ""))
    elif "dependencies" in data:
        _walk_npm_v1(filename, data["dependencies"], keep)


def _walk_npm_v1(filename: str, dependencies: object, keep: Keep) -> None:
    if not isinstance(dependencies, dict):
        raise LockfileError(f"{filename}: 'dependencies' is not an object")
    for name, entry in dependencies.items():
        if not isinstance(entry, dict):
            raise LockfileError(f"{filename}: dependencies[{name!r}] is not an object")
        version = str(entry.get("version", ""))
        if version.startswith("npm:"):  # an alias: "npm:ms@2.1.3", "npm:@s/n@1.0.0"
            name, _, version = version[len("npm:"):].rpartition("@")
        if not entry.get("bundled") and _from_registry(entry.get("resolved")):
            keep(f"{filename}: {name}", name, version)
        _walk_npm_v1(filename, entry.get("dependencies", {}), keep)


# yarn 1 ---------------------------------------------------------------------

_YARN_SPEC = r'(?:"(?:[^"\\]|\\.)*"|[^",\s][^",]*)'
_YARN_HEADER = re.compile(rf"{_YARN_SPEC}(?:,\s*{_YARN_SPEC})*")


def _unquote(text: str, where: str) -> str:
    if not text.startswith('"'):
        return text
    try:
        return json.loads(text)  # yarn 1 quotes with JSON.stringify
    except json.JSONDecodeError:
        raise LockfileError(f"{where}: unterminated or invalid quoted string") from None


def _parse_yarn(filename: str, text: str, keep: Keep) -> None:
    if re.search(r"^__metadata:", text, re.M):
        raise LockfileError(f"{filename}: a yarn 2+ lockfile; only yarn 1 lockfiles are supported")
    entries: list[dict] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{filename}:{number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():  # an entry: "a@^1.0.0", a@^1.2.0:
            header = line.rstrip()
            if not header.endswith(":") or not _YARN_HEADER.fullmatch(header[:-1]):
                raise LockfileError(f"{where}: expected an entry such as 'name@range:'")
            specs = [_unquote(s.strip(), where) for s in re.findall(_YARN_SPEC, header[:-1])]
            entries.append({"where": where, "spec": specs[0], "version": None, "resolved": None})
        elif not entries:
            raise LockfileError(f"{where}: indented line outside any entry")
        elif re.match(r"  \S", line):  # the entry's own fields; deeper lines list its dependencies
            field, _, value = line.strip().partition(" ")
            if field in ("version", "resolved"):
                entries[-1][field] = _unquote(value.strip(), where)
    for entry in entries:
        if entry["version"] is None:
            raise LockfileError(f"{entry['where']}: entry has no version")
        # All specs of one entry resolve to the same package, so the first one tells which.
        name, range_ = _split_spec(entry["spec"], entry["where"])
        if range_.startswith("npm:"):  # "alias@npm:real@range"
            name, range_ = _split_spec(range_[len("npm:"):], entry["where"])
        # Registry ranges and tags hold neither ":" nor "/"; file:, git+..., github:u/r,
        # u/r and URLs all do. A file: directory entry even has no "resolved" at all.
        if ":" not in range_ and "/" not in range_ and _from_registry(entry["resolved"]):
            keep(entry["where"], name, entry["version"])


def _split_spec(spec: str, where: str) -> tuple[str, str]:
    at = spec.find("@", 1)  # from 1: a scope's "@" is part of the name
    if at < 1:
        raise LockfileError(f"{where}: {spec!r} is not 'name@range'")
    return spec[:at], spec[at + 1:]


# pnpm -----------------------------------------------------------------------

_RESOLUTION_ELSEWHERE = re.compile(r"\btype:\s*['\"]?(?:git|directory)\b|\btarball:\s*['\"]?file:")


def _yaml_key(text: str, where: str) -> str:
    """The key of a ``key:`` or ``key: value`` line (already stripped), unquoted."""
    if text[:1] in ("'", '"'):
        match = re.match(r"'((?:[^']|'')*)'|\"((?:[^\"\\]|\\.)*)\"", text)
        if not match or not re.match(r":(\s|$)", text[match.end():]):
            raise LockfileError(f"{where}: unterminated quoted key")
        if match.group(1) is not None:
            return match.group(1).replace("''", "'")
        return json.loads(f'"{match.group(2)}"')
    end = (text + " ").find(": ")  # a plain key may hold ":" (file:x), never ": "
    if end < 1 or text[0] in "{}[],&*!|>%@`#":  # YAML indicators never start a plain key
        raise LockfileError(f"{where}: expected 'key:'")
    return text[:end]


def _pnpm_package(key: str, major: int) -> tuple[str, str]:
    """(name, version) of a ``packages:`` key, peer suffix removed; the version may be a URL."""
    if major < 7:
        # 5.x "/name/1.0.0_peer@2.0.0", 6.x "/name@1.0.0(peer@2.0.0)". A key not starting with
        # "/" names its registry host first ("host/name/1.0.0"): drop it.
        key = key[1:] if key.startswith("/") else key.partition("/")[2]
    count = 2 if key.startswith("@") else 1
    if major < 6:
        parts = key.split("/", count)
        name, version = "/".join(parts[:count]), (parts[count] if len(parts) > count else "")
    else:
        at = key.find("@", 1)  # from 1: a scope's "@" is part of the name
        name, version = (key[:at], key[at + 1:]) if at > 0 else ("", "")
    # Peer suffixes: "(peer@1.0.0)", "_peer@1.0.0", "_<hash>"; semver never holds "(" or "_".
    # A 9.x "name@work:1.0.0" (pnpm's named registries) stays non-semver, so it is skipped:
    # that registry may serve another package under the same name than nopard's upstream.
    return name, re.split(r"[(_]", version, maxsplit=1)[0]


def _parse_pnpm(filename: str, text: str, keep: Keep) -> None:
    major: int | None = None
    section, in_resolution = None, False
    entries: list[list] = []  # [where, (name, version), resolution text]
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{filename}:{number}"
        body = line.lstrip(" ").rstrip()
        indent = len(line) - len(line.lstrip(" "))
        if body.startswith("\t"):
            raise LockfileError(f"{where}: tab in indentation")
        if not body or body.startswith("#"):
            continue
        if indent == 0 and body == "---":
            # Newer pnpm may put a document for its own installation before the project's.
            section = None
        elif indent == 0:
            section = _yaml_key(body, where)
            if section == "lockfileVersion":
                value = body.split(":", 1)[1].strip().strip("'\"")
                if not re.fullmatch(r"\d+(\.\d+)*", value):
                    raise LockfileError(f"{where}: invalid lockfileVersion {value!r}")
                major = int(value.split(".")[0])
            elif section == "packages" and major is None:
                raise LockfileError(f"{where}: 'packages' before 'lockfileVersion'")
        elif section is None:
            raise LockfileError(f"{where}: indented line outside any section")
        elif section != "packages":
            continue  # importers, snapshots (peer variants of the same packages), settings...
        elif indent == 2:
            assert major is not None  # the section opened only after lockfileVersion
            entries.append([where, _pnpm_package(_yaml_key(body, where), major), ""])
            in_resolution = False
        elif indent == 4:
            in_resolution = body.startswith("resolution:") and bool(entries)
            if in_resolution:
                entries[-1][2] = body
        elif in_resolution:
            entries[-1][2] += " " + body  # a resolution written in block style
    if major is None:
        raise LockfileError(f"{filename}: no lockfileVersion: not a pnpm lockfile")
    for where, (name, version), resolution in entries:
        if not _RESOLUTION_ELSEWHERE.search(resolution):
            keep(where, name, version)
