"""Running nopard-admin as an operator would, and laying out registry directories for it.

Shared by the nopard-admin end-to-end tests (tests/e2e/test_admin*.py) and any test that runs the
installed console script against a registry directory or a running nopard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from nopard.domain import signatures
from tests.support import BIN, REPO, NopardServer, files_under

IMPORTS = REPO / "tests" / "data" / "imports"
UPSTREAM_DATA = REPO / "tests" / "data" / "upstream"
ADMIN = str(BIN / "nopard-admin")
LONG_AGO = time.time() - 3600


def admin_env(registry: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPARD_")}
    if registry is not None:
        env["NOPARD_REGISTRY_PATH"] = str(registry)
    return env


def admin(registry: Path | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run nopard-admin with NOPARD_REGISTRY_PATH set to ``registry``."""
    return subprocess.run([ADMIN, *args], env=admin_env(registry), input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120)


def add_user(registry: Path, name: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    result = admin(registry, "user", "add", name, "--password-stdin", *extra, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    return result



def mirror_copy(registry: Path, name: str, base: str = "http://upstream.example") -> Path:
    """Lay out a mirrored package as nopard stores it: upstream document, meta, every recorded tarball."""
    area = registry / "packages" / name / "upstream"
    (area / "tarballs").mkdir(parents=True)
    text = (UPSTREAM_DATA / "packuments" / f"{name}.json").read_text().replace("{{UPSTREAM}}", base)
    (area / "package.json").write_text(text)
    (area / "meta.json").write_text(json.dumps({"fetched_at": time.time(), "etag": None, "last_modified": None}))
    for tarball in (UPSTREAM_DATA / "tarballs" / name).glob("*.tgz"):
        shutil.copy(tarball, area / "tarballs" / tarball.name)
    return area


def local_copy(registry: Path, name: str, *versions: str) -> Path:
    """Lay out a local package as nopard's publish does: tarballs, then the document naming them."""
    import base64
    import hashlib

    from tests.support import tarball_bytes

    area = registry / "packages" / name
    (area / "tarballs").mkdir(parents=True)
    document = {"_id": name, "name": name, "dist-tags": {"latest": versions[-1]}, "versions": {}, "time": {},
                "maintainers": [{"name": "alice", "email": "alice@example.com"}], "readme": ""}
    for version in versions:
        data = tarball_bytes(name, version)
        filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        (area / "tarballs" / filename).write_bytes(data)
        document["versions"][version] = {"name": name, "version": version, "_id": f"{name}@{version}", "dist": {
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            "shasum": hashlib.sha1(data).hexdigest(), "tarball": filename}}
    (area / "package.json").write_text(json.dumps(document))
    return area


def leftover(path: Path, data: bytes = b"x") -> Path:
    """A file untouched for an hour (fsck leaves younger ones alone: they may be writes in progress)."""
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def contents(path: Path) -> dict[str, bytes]:
    """The stored objects below ``path``; dot-names are the filesystem backend's own (lock files)."""
    return {
        name: (path / name).read_bytes()
        for name in files_under(path)
        if not any(part.startswith(".") for part in Path(name).parts)
    }


# Help and errors -----------------------------------------------------------------


def verified_by(registry: Path, keys: list[dict]) -> set[tuple[str, str]]:
    """(name, version) of the local versions whose one signature verifies with one of ``keys``."""
    verified = set()
    for path in registry.glob("packages/**/package.json"):
        document = json.loads(path.read_text())
        for version, manifest in document["versions"].items():
            [signature] = manifest["dist"]["signatures"]
            message = signatures.signed_message(document["name"], version, manifest["dist"])
            if any(signatures.verify(key, message, signature["sig"]) for key in keys):
                verified.add((document["name"], version))
    return verified


def unsigned(files: dict[str, bytes]) -> dict[str, Any]:
    """The stored objects, each package document without its versions' signatures."""
    def strip(name: str, data: bytes) -> object:
        if not name.endswith("/package.json"):
            return data
        document = json.loads(data)
        for manifest in document["versions"].values():
            manifest["dist"].pop("signatures", None)
        return document
    return {name: strip(name, data) for name, data in files.items()}


def admin_http(server: NopardServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """nopard-admin talking to ``server``, with its registry directory as the daemon's."""
    return subprocess.run([ADMIN, "--registry", server.url, *args],
                          env={**admin_env(server.registry), **(env or {})}, capture_output=True, text=True,
                          timeout=120)
