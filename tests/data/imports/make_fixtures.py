"""Rebuild the import fixtures in this folder: `.venv/bin/python tests/data/imports/make_fixtures.py`.

Writes a Verdaccio config folder (verdaccio/: config.yaml, htpasswd, storage/) and a nopar
registry folder (nopar/), each holding the same two private packages (greeter, @acme/strings)
as those registries store them, plus one package cached from the public registry (ms, with
the tarball recorded in tests/data/upstream). Tarballs are small valid npm tarballs built
here, byte-for-byte reproducible. The htpasswd line is made by `htpasswd -nbB` (bcrypt, a
new salt each run): user alice, password wonderland.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM = HERE.parent / "upstream"
WHEN = "2025-03-01T10:00:00.000Z"
ALICE = {"name": "alice", "email": "alice@example.com"}

PACKAGES = {
    "@acme/strings": {
        "2.0.0": ({}, "exports.shout = (text) => String(text).toUpperCase() + '!';\n"),
        "2.1.0-beta.1": ({}, "exports.shout = (text) => String(text).toUpperCase() + '!!';\n"),
    },
    "greeter": {
        "1.0.0": ({}, "module.exports = (name) => 'hello ' + name;\n"),
        "1.1.0": ({"@acme/strings": "^2.0.0"},
                  "const { shout } = require('@acme/strings');\nmodule.exports = (name) => shout('hello ' + name);\n"),
    },
}
TAGS = {"@acme/strings": {"latest": "2.0.0", "next": "2.1.0-beta.1"}, "greeter": {"latest": "1.1.0"}}


def tarball(name: str, version: str, dependencies: dict, code: str) -> tuple[bytes, dict]:
    """An npm tarball (package/...) with fixed times, and the manifest in it."""
    manifest = {"name": name, "version": version, "description": f"{name}, an import fixture",
                "main": "index.js", "license": "MIT", "dependencies": dependencies}
    files = {"package/package.json": json.dumps(manifest, indent=2) + "\n",
             "package/index.js": code, "package/README.md": f"# {name}\n\nVersion {version}.\n"}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 499162500, 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), manifest


def dist(data: bytes, url: str, integrity: bool = True) -> dict:
    block = {"shasum": hashlib.sha1(data).hexdigest(), "tarball": url}
    if integrity:
        block = {"integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(), **block}
    return block


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def ms_document(base: str) -> dict:
    recorded = (UPSTREAM / "packuments" / "ms.json").read_text().replace("{{UPSTREAM}}", base)
    return json.loads(recorded)


def verdaccio() -> None:
    top = HERE / "verdaccio"
    shutil.rmtree(top, ignore_errors=True)
    storage = top / "storage"
    (top / "config.yaml").parent.mkdir(parents=True)
    (top / "config.yaml").write_text(
        "storage: ./storage\nauth:\n  htpasswd:\n    file: ./htpasswd\n"
        "uplinks:\n  upstream:\n    url: https://registry.example/\n"
        "packages:\n  '@acme/*':\n    access: $authenticated\n    publish: $authenticated\n"
        "  '**':\n    access: $all\n    publish: $authenticated\n    proxy: upstream\n"
    )
    line = subprocess.run(["htpasswd", "-nbB", "alice", "wonderland"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (top / "htpasswd").write_text(f"{line}:autocreated 2025-03-01T09:59:00.000Z\n")
    for name, versions in PACKAGES.items():
        folder = storage / name
        folder.mkdir(parents=True)
        document = {"name": name, "versions": {}, "time": {"modified": WHEN, "created": WHEN},
                    "users": {}, "dist-tags": TAGS[name], "_uplinks": {}, "_distfiles": {},
                    "_attachments": {}, "_rev": "4-0f1e2d3c4b5a6978", "_id": name,
                    "readme": f"# {name}\n\nAn import fixture.\n"}
        for version, (dependencies, code) in versions.items():
            data, manifest = tarball(name, version, dependencies, code)
            filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
            (folder / filename).write_bytes(data)
            document["versions"][version] = {
                **manifest, "_id": f"{name}@{version}", "_nodeVersion": "20.11.1", "_npmVersion": "10.2.4",
                "_npmUser": ALICE, "maintainers": [ALICE], "contributors": [],
                "dist": dist(data, f"http://localhost:4873/{name}/-/{name}-{version}.tgz"),
            }
            document["time"][version] = WHEN
            document["_attachments"][filename] = {"shasum": hashlib.sha1(data).hexdigest(), "version": version}
        write_json(folder / "package.json", document)
    cached = ms_document("https://registry.example")
    cached["_distfiles"] = {
        f"ms-{v}.tgz": {"url": f"https://registry.example/ms/-/ms-{v}.tgz",
                        "sha": cached["versions"][v]["dist"]["shasum"], "registry": "upstream"}
        for v in cached["versions"]
    }
    cached.update({"_uplinks": {"upstream": {"etag": '"5c9f0e1a2b3d"', "fetched": 1740822000000}},
                   "_attachments": {"ms-2.1.3.tgz": {"shasum": cached["versions"]["2.1.3"]["dist"]["shasum"]}},
                   "_rev": "7-a1b2c3d4e5f60718", "users": {}})
    write_json(storage / "ms" / "package.json", cached)
    shutil.copy(UPSTREAM / "tarballs" / "ms" / "ms-2.1.3.tgz", storage / "ms" / "ms-2.1.3.tgz")
    write_json(storage / ".verdaccio-db.json", {"list": sorted(PACKAGES), "secret": "0" * 64})


def nopar() -> None:
    top = HERE / "nopar"
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir()
    write_json(top / "registry.json", {"version": "0.8.6", "settings": {}, "count": 3, "local": 2, "proxied": 1})
    for name, versions in PACKAGES.items():
        folder = top / name
        folder.mkdir(parents=True)
        document = {"_id": name, "name": name, "description": f"{name}, an import fixture",
                    "dist-tags": TAGS[name], "versions": {}, "readme": f"# {name}\n\nAn import fixture.\n",
                    "maintainers": [ALICE], "_rev": 3, "_proxied": False,
                    "_mtime": "2025-03-01T10:00:00.000Z", "_attachments": {}}
        for version, (dependencies, code) in versions.items():
            data, manifest = tarball(name, version, dependencies, code)
            filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
            (folder / filename).write_bytes(data)
            # npm 1.x-era publishes: shasum only, the tarball URL nopar serves.
            document["versions"][version] = {
                **manifest, "_id": f"{name}@{version}", "_npmUser": ALICE, "maintainers": [ALICE],
                "dist": dist(data, f"http://localhost:5984/{name}/-/{filename}", integrity=False),
            }
            document["_attachments"][filename] = {"cached": True}
        write_json(folder / f"{name.rsplit('/', 1)[-1]}.json", document)
    cached = ms_document("http://localhost:5984")
    cached.update({"_rev": 1, "_proxied": True, "_mtime": "2025-03-01T10:00:00.000Z", "_attachments": {
        f"ms-{v}.tgz": {"cached": v == "2.1.3", "forwardUrl": f"https://registry.example/ms/-/ms-{v}.tgz"}
        for v in cached["versions"]
    }})
    write_json(top / "ms" / "ms.json", cached)
    shutil.copy(UPSTREAM / "tarballs" / "ms" / "ms-2.1.3.tgz", top / "ms" / "ms-2.1.3.tgz")


if __name__ == "__main__":
    verdaccio()
    nopar()
