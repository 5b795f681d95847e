"""What the fake upstream vouches for: registry signatures by a key the tests make, and trust evidence.

With ``--signing-key FILE`` (a PEM private key, tests/signing.py's UpstreamKey), every document the
fake serves has each version's ``dist.signatures`` made by that key, as the public registry signs,
and ``/-/npm/v1/keys`` lists its public key; without it the fake serves no keys (404).

Two generated packages carry trust evidence as pnpm judges it (``_npmUser.trustedPublisher``):
``trust-kept`` on both its versions, ``trust-lost`` on 1.0.0 only, its newer 1.1.0 published
without (what pnpm's ``trustPolicy: no-downgrade`` refuses).
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

from tests.signing import UpstreamKey

TRUST_KEPT, TRUST_LOST = "trust-kept", "trust-lost"
TRUST = (TRUST_KEPT, TRUST_LOST)
TRUSTED_PUBLISHER = {"id": "ci", "oidcConfigId": "oidc:nopard-tests"}


def trust_package(name: str) -> tuple[dict, dict[str, bytes]]:
    """``name``'s document (1.0.0 and a day later 1.1.0) and its tarballs by file name."""
    from tests.fake_documents import EPOCH, iso, manifest, package_doc, small_tarball
    from tests.fake_publish import digests

    versions, times, tarballs = {}, {}, {}
    for day, version in enumerate(("1.0.0", "1.1.0")):
        data = small_tarball(name, version)
        tarballs[f"{name}-{version}.tgz"] = data
        entry = manifest(name, version, digests(data), {})
        del entry["dist"]["signatures"]
        if version == "1.0.0" or name == TRUST_KEPT:
            entry["_npmUser"] = {**entry["_npmUser"], "trustedPublisher": TRUSTED_PUBLISHER}
        versions[version] = entry
        times[version] = iso(EPOCH + timedelta(days=day))
    return package_doc(name, versions, times), tarballs


class Signer:
    """Signs served documents with the key in a PEM file; its ``/-/npm/v1/keys`` answer."""

    def __init__(self, path: Path) -> None:
        self.key = UpstreamKey(private=path.read_text())
        self.keys_body = json.dumps({"keys": [self.key.entry]}).encode()

    def sign(self, document: dict) -> dict:
        """A copy of ``document`` whose every version with an integrity is signed by this key."""
        signed = copy.deepcopy(document)
        for manifest in signed.get("versions", {}).values():
            manifest.get("dist", {}).pop("signatures", None)  # the fixtures' own name no key served here
        return self.key.sign_document(signed)
