"""Registry signatures as npm verifies them (pacote's registry fetcher, npm audit signatures).

A version's ``dist.signatures`` is ``[{keyid, sig}]``: ``sig`` the base64 DER
ECDSA P-256 signature (SHA-256) of ``<name>@<version>:<integrity>``, where the
integrity is ``dist.integrity`` (else the sha1 of ``dist.shasum``, as ssri
writes it). The keys are served at ``/-/npm/v1/keys`` as ``{keys: [{expires,
keyid, keytype, scheme, key}]}``: ``key`` the base64 DER SubjectPublicKeyInfo,
``keyid`` ``SHA256:<base64 of its sha256>``. npm refuses a signature whose key
expired before the version's publish time (``time[version] < expires``).

Pure computation: the caller stores the private key and passes the times.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEYTYPE = "ecdsa-sha2-nistp256"
SCHEME = "ecdsa-sha2-nistp256"


def new_private_key() -> str:
    """A new ECDSA P-256 private key, as unencrypted PKCS#8 PEM text."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def public_der(private_pem: str) -> bytes:
    """The DER SubjectPublicKeyInfo of a private key (what npm's keys list carries, base64)."""
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def keyid_of(der: bytes) -> str:
    """``SHA256:<base64 of the sha256 of the DER public key>``, as the public registry names its keys."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def public_entry(der: bytes, expires: str | None) -> dict[str, Any]:
    """One entry of ``/-/npm/v1/keys``."""
    return {"expires": expires, "keyid": keyid_of(der), "keytype": KEYTYPE, "scheme": SCHEME,
            "key": base64.b64encode(der).decode("ascii")}


def integrity_of(dist: Any) -> str | None:
    """The integrity npm signs and checks: ``dist.integrity``, else ``sha1-<base64>`` of ``dist.shasum``."""
    if not isinstance(dist, dict):
        return None
    integrity = dist.get("integrity")
    if isinstance(integrity, str) and integrity.strip():
        # ssri.parse joins the hashes with single spaces and drops surrounding blanks.
        return " ".join(integrity.split())
    shasum = dist.get("shasum")
    if isinstance(shasum, str) and len(shasum) == 40:
        try:
            return "sha1-" + base64.b64encode(bytes.fromhex(shasum)).decode("ascii")
        except ValueError:
            return None
    return None


def signed_message(name: str, version: str, dist: Any) -> str | None:
    """``<name>@<version>:<integrity>``, the text a registry signature covers; None without integrity."""
    integrity = integrity_of(dist)
    return f"{name}@{version}:{integrity}" if integrity else None


def sign(private_pem: str, message: str) -> str:
    """The base64 DER ECDSA-SHA256 signature of ``message``."""
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return base64.b64encode(key.sign(message.encode("utf-8"), ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify(key_entry: dict[str, Any], message: str, sig: str) -> bool:
    """Whether ``sig`` is a valid signature of ``message`` by a ``/-/npm/v1/keys`` entry's key."""
    try:
        key = serialization.load_der_public_key(base64.b64decode(key_entry["key"]))
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(base64.b64decode(sig), message.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, KeyError, TypeError, AssertionError):
        return False
    return True


def signed_dist(name: str, version: str, dist: dict[str, Any], keyid: str, private_pem: str) -> dict[str, Any]:
    """``dist`` with ``signatures`` holding this registry's signature alone."""
    message = signed_message(name, version, dist)
    if message is None:
        return dist
    return {**dist, "signatures": [{"keyid": keyid, "sig": sign(private_pem, message)}]}
