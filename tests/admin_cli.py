"""Running nopard-admin as an operator would, and laying out registry directories for it.

Shared by the nopard-admin end-to-end tests (tests/e2e/test_admin*.py) and any test that runs the
installed console script against a registry directory or a running nopard.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from nopard.domain import signatures
from tests import admin_stores as stores
from tests.admin_stores import ADMIN, LONG_AGO, UPSTREAM_DATA, unsigned
from tests.support import REPO, NopardServer, files_under

__all__ = ["ADMIN", "LONG_AGO", "UPSTREAM_DATA", "unsigned"]  # kept importable from here

IMPORTS = REPO / "tests" / "data" / "imports"


def admin_env(registry: Path | None) -> dict[str, str]:
    return stores.admin_env({"NOPARD_REGISTRY_PATH": str(registry)} if registry is not None else {})


def admin(registry: Path | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run nopard-admin with NOPARD_REGISTRY_PATH set to ``registry``."""
    return subprocess.run([ADMIN, *args], env=admin_env(registry), input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120)


def add_user(registry: Path, name: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    result = admin(registry, "user", "add", name, "--password-stdin", *extra, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    return result



def mirror_copy(registry: Path, name: str, base: str = "http://upstream.example") -> Path:
    """Lay out a mirrored package as nopard stores it (tests/admin_stores.py); its upstream folder."""
    stores.mirror_copy(stores.FsStore(registry), name, base)
    return registry / "packages" / name / "upstream"


def local_copy(registry: Path, name: str, *versions: str) -> Path:
    """Lay out a local package as nopard's publish does (tests/admin_stores.py); its folder."""
    return registry / stores.local_copy(stores.FsStore(registry), name, *versions)


def leftover(path: Path, data: bytes = b"x") -> Path:
    """A file untouched for an hour (fsck leaves younger ones alone: they may be writes in progress)."""
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def flip_a_byte(path: Path) -> None:
    path.write_bytes(stores.flipped(path.read_bytes()))


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


def admin_http(server: NopardServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """nopard-admin talking to ``server``, with its registry directory as the daemon's."""
    return subprocess.run([ADMIN, "--registry", server.url, *args],
                          env={**admin_env(server.registry), **(env or {})}, capture_output=True, text=True,
                          timeout=120)
