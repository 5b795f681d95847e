"""Registry signatures for tests: a key pair for a fake upstream, and npm's check of a signature.

``npm_verdict`` is pacote's check (lib/registry.js, run by npm audit signatures)
line by line: the message ``<_id>:<integrity>``, the key found by keyid in the
registry's ``/-/npm/v1/keys``, refused when it expired before the version's
publish time, then ECDSA-SHA256 over the message. The e2e tests run npm's own
``npm audit signatures`` instead (tests/e2e/test_signatures_npm.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nopard.domain import signatures


class UpstreamKey:
    """A P-256 key pair an upstream signs its fixtures with, made when the tests need one."""

    def __init__(self, expires: str | None = None, private: str | None = None) -> None:
        self.private = private or signatures.new_private_key()
        self.entry = signatures.public_entry(signatures.public_der(self.private), expires)
        self.keyid = self.entry["keyid"]

    def sign_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` with every version's ``dist.signatures`` made by this key."""
        for version, manifest in document["versions"].items():
            manifest["dist"] = signatures.signed_dist(document["name"], version, manifest["dist"], self.keyid,
                                                      self.private)
        return document


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def npm_verdict(document: dict[str, Any], version: str, keys: list[dict[str, Any]]) -> str:
    """What npm makes of ``version``'s signatures: ``verified``, ``missing`` or its error code."""
    manifest = document["versions"][version]
    if manifest.get("_id", f"{document['name']}@{version}") != f"{document['name']}@{version}":
        return "EMANIFESTMISMATCH"
    dist = manifest["dist"]
    signed = dist.get("signatures")
    if not signed:
        return "missing" if keys else "unsigned"
    message = signatures.signed_message(document["name"], version, dist)
    assert message is not None
    for signature in signed:
        key = next((k for k in keys if k["keyid"] == signature["keyid"]), None)
        if key is None:
            return "EMISSINGSIGNATUREKEY"
        published = document.get("time", {}).get(version)
        if key.get("expires") and not (published and _parse(published) < _parse(key["expires"])):
            return "EEXPIREDSIGNATUREKEY"
        if not signatures.verify(key, message, signature["sig"]):
            return "EINTEGRITYSIGNATURE"
    return "verified"
