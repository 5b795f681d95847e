"""Stores for nopard-admin's tests, one interface over the filesystem backend and moto's S3.

A test body arranges objects by storage key (``put``, ``flip_a_byte``...), runs the
installed ``nopard-admin`` against the store (``admin``, with the environment the daemon
reads: NOPARD_REGISTRY_PATH, or NOPARD_STORAGE=s3 with NOPARD_S3_BUCKET/PREFIX and the
AWS_* variables of moto's server) and looks at what is stored afterwards (``objects``,
the quarantine included), so the same body runs on both backends.

An old object (``put(..., old=True)``) is one fsck may count as left over: on the
filesystem its mtime is set an hour back; S3 has no such thing, so the S3 store runs
nopard-admin with ``--settle 1`` and waits, before running it, until its old objects
are older than that.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from nopard.storage import keys
from tests.s3_server import MotoServer
from tests.support import BIN, REPO, tarball_bytes

ADMIN = str(BIN / "nopard-admin")
UPSTREAM_DATA = REPO / "tests" / "data" / "upstream"
LONG_AGO = time.time() - 3600
# fsck and gc take these (they count a settle time); the other commands do not.
SETTLING = ("fsck", "gc")


def admin_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without NOPARD_* settings, with ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("NOPARD_")}, **extra}


class FsStore:
    """A registry directory (the filesystem backend)."""

    backend = "fs"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        """The settings naming this store, for nopard-admin and twistd."""
        return {"NOPARD_REGISTRY_PATH": str(self.root)}

    def put(self, key: str, data: bytes | str, old: bool = False) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        if old:
            os.utime(path, (LONG_AGO, LONG_AGO))

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def delete(self, key: str) -> None:
        (self.root / key).unlink()

    def objects(self) -> dict[str, bytes]:
        """Every stored object and quarantined copy (not the backend's lock files), by path."""
        found = {}
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and not relative.startswith(".locks/") and relative != ".nopard-admin-token":
                found[relative] = path.read_bytes()
        return found

    def admin(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run nopard-admin on this store (with more settings in ``env``)."""
        return subprocess.run([ADMIN, *args], env=admin_env({**self.env, **(env or {})}), input=stdin,
                              capture_output=True, text=True, timeout=120)


class S3Store:
    """A bucket of moto's S3 server under a prefix (the S3 backend)."""

    backend = "s3"

    def __init__(self, moto: MotoServer, local: Path, prefix: str = "npm/registry") -> None:
        self.moto = moto
        self.client = moto.client()
        self.bucket = moto.new_bucket()
        self.prefix = prefix
        self.local = local  # the daemon's registry directory: only its htpasswd and operator token
        local.mkdir(parents=True, exist_ok=True)
        self._old_until = 0.0

    @property
    def env(self) -> dict[str, str]:
        """The settings naming this store, for nopard-admin and twistd."""
        return {"NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": self.bucket, "NOPARD_S3_PREFIX": self.prefix,
                "NOPARD_REGISTRY_PATH": str(self.local), **self.moto.env()}

    def put(self, key: str, data: bytes | str, old: bool = False) -> None:
        body = data.encode() if isinstance(data, str) else data
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=body)
        if old:
            self._old_until = time.time() + 2.1  # LastModified has whole seconds; --settle 1

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")

    def objects(self) -> dict[str, bytes]:
        """Every object under the prefix, the quarantine's included, by key."""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                           Prefix=self.prefix + "/"):
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) + 1:]
                found[key] = self.get(key) or b""
        return found

    def admin(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run nopard-admin on this store (fsck and gc with --settle 1, once old objects are older)."""
        if args and args[0] in SETTLING and "--settle" not in args:
            time.sleep(max(0.0, self._old_until - time.time()))
            args = (*args, "--settle", "1")
        return subprocess.run([ADMIN, *args], env=admin_env({**self.env, **(env or {})}), input=stdin,
                              capture_output=True, text=True, timeout=120)


Store = FsStore | S3Store


# Layouts, as nopard writes them ------------------------------------------------


def mirror_copy(store: Store, name: str, base: str = "http://upstream.example") -> None:
    """A mirrored package as nopard stores it: upstream document, meta, every recorded tarball."""
    area = f"packages/{name}/upstream"
    text = (UPSTREAM_DATA / "packuments" / f"{name}.json").read_text().replace("{{UPSTREAM}}", base)
    store.put(f"{area}/package.json", text)
    store.put(f"{area}/meta.json", json.dumps({"fetched_at": time.time(), "etag": None, "last_modified": None}))
    for tarball in sorted((UPSTREAM_DATA / "tarballs" / name).glob("*.tgz")):
        store.put(f"{area}/tarballs/{tarball.name}", tarball.read_bytes())


def local_document(name: str, tarballs: dict[str, bytes]) -> dict[str, Any]:
    """The document of a package published here with those versions' tarballs."""
    document: dict[str, Any] = {"_id": name, "name": name, "dist-tags": {"latest": list(tarballs)[-1]},
                                "versions": {}, "time": {},
                                "maintainers": [{"name": "alice", "email": "alice@example.com"}], "readme": ""}
    for version, data in tarballs.items():
        filename = f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        document["versions"][version] = {"name": name, "version": version, "_id": f"{name}@{version}", "dist": {
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            "shasum": hashlib.sha1(data).hexdigest(), "tarball": filename}}
    return document


def local_copy(store: Store, name: str, *versions: str) -> str:
    """A local package as nopard's publish lays it out: tarballs, then the document naming them; its prefix."""
    tarballs = {version: tarball_bytes(name, version) for version in versions}
    area = f"packages/{name}"
    for version, data in tarballs.items():
        store.put(f"{area}/tarballs/{name.rsplit('/', 1)[-1]}-{version}.tgz", data)
    store.put(f"{area}/package.json", json.dumps(local_document(name, tarballs)))
    return area


def flipped(data: bytes) -> bytes:
    """``data`` with its middle byte flipped: a tarball no checksum matches any more."""
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF
    return bytes(changed)


def flip_a_byte(store: Store, key: str) -> bytes:
    """Corrupt the object at ``key`` (one byte flipped); the corrupted bytes."""
    data = flipped(store.get(key) or b"")
    store.put(key, data)
    return data


def unsigned(files: dict[str, bytes]) -> dict[str, Any]:
    """The stored objects, each package document without its versions' signatures (imports sign again)."""
    def strip(name: str, data: bytes) -> object:
        parsed = keys.parse_package_key(name)  # by structure: a package may be called upstream
        if parsed is None or parsed.kind != keys.LOCAL_DOCUMENT:
            return data
        document = json.loads(data)
        for manifest in document["versions"].values():
            manifest["dist"].pop("signatures", None)
        return document
    return {name: strip(name, data) for name, data in files.items()}
