"""Reading and verifying the body of a publish (``PUT /<pkg>``) as npm sends it.

Pure functions: they decode every attachment and check its declared length,
sha1 shasum and sha512 integrity before anything is stored.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from nopard.domain import names
from nopard.domain.errors import IntegrityMismatch, InvalidInput
from nopard.domain.integrity import check_integrity


@dataclass(frozen=True)
class Publication:
    """What one publish adds: versions with their tarballs, and dist-tags."""

    name: str
    versions: dict[str, dict[str, Any]]
    tarballs: dict[str, bytes]  # version -> bytes
    tags: dict[str, str]


def parse_publication(name: str, body: Any) -> Publication:
    """Validate a publish body for package ``name``; raise InvalidInput or IntegrityMismatch."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    if body.get("name") != name or body.get("_id", name) != name:
        raise InvalidInput(f"the body's name does not match the URL's package {name!r}")
    versions = body.get("versions")
    attachments = body.get("_attachments")
    if not isinstance(versions, dict) or not versions:
        raise InvalidInput("a publish needs at least one version in 'versions'")
    if not isinstance(attachments, dict) or len(attachments) != len(versions):
        raise InvalidInput("a publish needs one tarball in '_attachments' for each version")
    by_basename = {names.unscoped(str(key)): value for key, value in attachments.items()}
    manifests, tarballs = {}, {}
    for version, manifest in versions.items():
        manifests[version] = _check_manifest(name, version, manifest)
        filename = names.tarball_filename(name, version)
        attachment = by_basename.get(filename)
        if attachment is None:
            raise InvalidInput(f"no attachment {filename!r} for version {version}")
        tarballs[version] = verify_attachment(filename, attachment, manifest["dist"])
    tags = body.get("dist-tags") or {}
    if not isinstance(tags, dict):
        raise InvalidInput("'dist-tags' must be an object")
    for tag, version in tags.items():
        names.validate_tag(tag)
        if not isinstance(version, str) or not names.is_version(version):
            raise InvalidInput(f"dist-tag {tag!r} must name a version")
    return Publication(name, manifests, tarballs, dict(tags))


def _check_manifest(name: str, version: str, manifest: Any) -> dict[str, Any]:
    names.validate_version(version)
    if not isinstance(manifest, dict):
        raise InvalidInput(f"version {version} must be an object")
    if manifest.get("name") != name or manifest.get("version") != version:
        raise InvalidInput(f"version {version}'s manifest names another package or version")
    dist = manifest.get("dist")
    if not isinstance(dist, dict) or not (dist.get("integrity") or dist.get("shasum")):
        raise InvalidInput(f"version {version} needs dist.integrity or dist.shasum")
    return manifest


def verify_attachment(filename: str, attachment: Any, dist: dict[str, Any]) -> bytes:
    """Decode one attachment and check it against its length and the version's dist."""
    if not isinstance(attachment, dict) or not isinstance(attachment.get("data"), str):
        raise InvalidInput(f"attachment {filename!r} has no base64 'data'")
    try:
        data = base64.b64decode(attachment["data"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"attachment {filename!r} is not valid base64") from None
    if not data:
        raise InvalidInput(f"attachment {filename!r} is empty")
    length = attachment.get("length")
    if length is not None and length != len(data):
        raise IntegrityMismatch(
            f"attachment {filename!r} is {len(data)} bytes, but its length says {length}"
        )
    check_integrity(data, dist, filename)
    return data
