"""Sizes of the tarballs a document names that are stored here (for the package pages)."""

from __future__ import annotations

from typing import Any

from nopard.domain import packument
from nopard.storage import Storage, keys


async def stored_tarball_sizes(storage: Storage, name: str, document: dict[str, Any]) -> dict[str, int | None]:
    """Version -> size of its tarball stored here (local or mirrored), None when it is only upstream."""
    stored = {**await storage.sizes(keys.upstream_tarballs_prefix(name)),
              **await storage.sizes(keys.local_tarballs_prefix(name))}
    by_file = {keys.tarball_file_of(key): size for key, size in stored.items()}
    sizes: dict[str, int | None] = {}
    for version, manifest in (document.get("versions") or {}).items():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        sizes[version] = by_file.get(packument.version_tarball_file(name, version, dist) or "")
    return sizes
