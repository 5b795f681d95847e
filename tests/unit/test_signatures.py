"""Registry signatures in-process: nopard signs what is published to it, keeps the upstream's
signatures, keys and attestations, and serves them all with the upstream down."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest_twisted
from twisted.web.resource import Resource

from nopard.cli import admin
from nopard.domain import packument
from nopard.local.signing import SigningKeys
from nopard.storage import keys
from tests.signing import UpstreamKey, npm_verdict
from tests.support import publish_body
from tests.unit.route_harness import InProcess, build

UPSTREAM = "http://127.0.0.1:9"
PROVENANCE = "https://slsa.dev/provenance/v1"


def mirrored_document(name: str, key: UpstreamKey) -> dict[str, Any]:
    """An upstream document of 1.0.0 (trusted publisher, with provenance) and 1.1.0 (neither), signed by ``key``."""
    versions = {}
    for version in ("1.0.0", "1.1.0"):
        data = f"{name}@{version}".encode()
        versions[version] = {
            "name": name, "version": version, "_id": f"{name}@{version}",
            "_npmUser": {"name": "bot", "email": "bot@example.test"},
            "dist": {"integrity": "sha512-" + hashlib.sha512(data).hexdigest()[:20],
                     "shasum": hashlib.sha1(data).hexdigest(),
                     "tarball": f"{UPSTREAM}/{name}/-/{name.split('/')[-1]}-{version}.tgz"},
        }
    first = versions["1.0.0"]
    first["_npmUser"]["trustedPublisher"] = {"id": "github", "oidcConfigId": "oidc:1"}
    first["dist"]["attestations"] = {"url": f"{UPSTREAM}/-/npm/v1/attestations/{name.replace('/', '%2f')}@1.0.0",
                                     "provenance": {"predicateType": PROVENANCE}}
    document = {"name": name, "dist-tags": {"latest": "1.1.0"}, "versions": versions,
                "time": {"created": "2024-01-01T00:00:00.000Z", "1.0.0": "2024-01-01T00:00:00.000Z",
                         "1.1.0": "2024-02-01T00:00:00.000Z", "modified": "2024-02-01T00:00:00.000Z"}}
    return key.sign_document(document)


class SigningUpstream(Resource):
    """An upstream with signed documents, its keys and attestations; ``down`` answers 503 to all."""

    isLeaf = True

    def __init__(self, key: UpstreamKey, *names: str) -> None:
        super().__init__()
        self.key = key
        self.documents = {name: mirrored_document(name, key) for name in names}
        self.down = False
        self.paths: list[str] = []

    def asked(self, part: str) -> int:
        """How many requests whose path holds ``part`` reached the upstream."""
        return sum(1 for path in self.paths if part in path)

    def render(self, request: Any) -> bytes:
        """Documents, /-/npm/v1/keys and attestations (for 1.0.0 only)."""
        path = request.path.decode()
        self.paths.append(path)
        request.setHeader(b"Content-Type", b"application/json")
        if self.down:
            request.setResponseCode(503)
            return b'{"error":"down"}'
        if path == "/-/npm/v1/keys":
            return orjson.dumps({"keys": [self.key.entry]})
        if path.startswith("/-/npm/v1/attestations/"):
            spec = path[len("/-/npm/v1/attestations/"):].replace("%2F", "/").replace("%2f", "/")
            if spec.endswith("@1.0.0"):
                return orjson.dumps({"attestations": [{"predicateType": PROVENANCE, "bundle": {"spec": spec}}]})
            request.setResponseCode(404)
            return b'{"error":"not found"}'
        name = path.lstrip("/").replace("%2F", "/").replace("%2f", "/")
        if name in self.documents:
            return orjson.dumps(self.documents[name])
        request.setResponseCode(404)
        return b'{"error":"not found"}'


async def served(app: InProcess, name: str, abbreviated: bool = False) -> dict[str, Any]:
    """The document of ``name`` as npm gets it (full, or the abbreviated form npm install asks for)."""
    accept = "application/vnd.npm.install-v1+json" if abbreviated else "application/json"
    answer = await app.call("GET", "/" + name.replace("/", "%2f"), Accept=accept)
    assert answer.status == 200, answer.body
    return answer.json()


async def listed_keys(app: InProcess) -> list[dict[str, Any]]:
    """The keys npm reads from ``/-/npm/v1/keys``."""
    answer = await app.call("GET", "/-/npm/v1/keys")
    assert answer.status == 200, answer.body
    return answer.json()["keys"]


@pytest_twisted.ensureDeferred
async def test_published_versions_are_signed_as_npm_verifies_them(tmp_path: Path) -> None:
    """A version published here carries nopard's signature in both forms; npm's check passes with its keys."""
    app = build(tmp_path)
    token = await app.user("alice")
    body = publish_body("@team/signed", "1.0.0")
    # A publisher's own signatures are no registry's: never kept.
    body["versions"]["1.0.0"]["dist"]["signatures"] = [{"keyid": "SHA256:forged", "sig": "AAAA"}]
    assert (await app.call("PUT", "/@team%2fsigned", body, token=token)).status == 201
    published = await listed_keys(app)
    assert [(k["keytype"], k["scheme"], k["expires"]) for k in published] == [
        ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", None)]
    assert all("private" not in k and "PRIVATE" not in k["key"] for k in published)
    full, small = await served(app, "@team/signed"), await served(app, "@team/signed", abbreviated=True)
    for document in (full, small):
        assert [s["keyid"] for s in document["versions"]["1.0.0"]["dist"]["signatures"]] == [published[0]["keyid"]]
    assert npm_verdict(full, "1.0.0", published) == "verified"
    # The abbreviated form carries time here, so it verifies on its own too.
    assert npm_verdict(small, "1.0.0", published) == "verified"
    tampered = orjson.loads(orjson.dumps(full))
    tampered["versions"]["1.0.0"]["dist"]["integrity"] = "sha512-" + "A" * 86 + "=="
    assert npm_verdict(tampered, "1.0.0", published) == "EINTEGRITYSIGNATURE"


@pytest_twisted.ensureDeferred
async def test_a_rotated_key_keeps_verifying_what_it_signed(tmp_path: Path) -> None:
    """After a rotation the old key is listed with expires and verifies older versions; newer ones use the new key."""
    app = build(tmp_path)
    token = await app.user("alice")
    assert (await app.call("PUT", "/rotating", publish_body("rotating", "1.0.0"), token=token)).status == 201
    app.clock.advance(60)
    await SigningKeys(app.storage, app.clock.seconds).rotate()  # what nopard-admin keys rotate does
    app.clock.advance(60)
    assert (await app.call("PUT", "/rotating", publish_body("rotating", "2.0.0"), token=token)).status == 201
    listed = await listed_keys(app)
    assert len(listed) == 2 and listed[0]["expires"] is not None and listed[1]["expires"] is None
    document = await served(app, "rotating")
    assert npm_verdict(document, "1.0.0", listed) == "verified"
    assert npm_verdict(document, "2.0.0", listed) == "verified"
    signers = [document["versions"][v]["dist"]["signatures"][0]["keyid"] for v in ("1.0.0", "2.0.0")]
    assert signers == [listed[0]["keyid"], listed[1]["keyid"]]


def test_nopard_admin_rotates_and_lists_the_keys(tmp_path: Path, capsys: Any) -> None:
    """nopard-admin keys rotate on a registry directory, then keys list: the old key expired, a new one current."""
    root = tmp_path / "registry"
    root.mkdir()
    assert admin.main(["keys", "list", "--registry-path", str(root)]) == 0
    first = capsys.readouterr().out.split()[0]
    assert admin.main(["keys", "rotate", "--registry-path", str(root)]) == 0
    capsys.readouterr()
    assert admin.main(["keys", "list", "--registry-path", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(first) and " expires " in lines[0] and lines[1].endswith("current")


@pytest_twisted.ensureDeferred
async def test_instances_sharing_a_store_sign_with_one_key(tmp_path: Path) -> None:
    """Two instances over one store: whichever makes the key first, both list and sign with it."""
    first = build(tmp_path)
    second = build(tmp_path)
    token = await first.user("alice")
    assert (await second.call("PUT", "/shared-key", publish_body("shared-key", "1.0.0"), token=token)).status == 201
    assert await listed_keys(first) == await listed_keys(second)
    assert npm_verdict(await served(first, "shared-key"), "1.0.0", await listed_keys(first)) == "verified"


@pytest_twisted.ensureDeferred
async def test_mirrored_signatures_keys_and_attestations_serve_with_the_upstream_down(tmp_path: Path) -> None:
    """The upstream's signatures, trust evidence, keys and attestations pass through, then serve offline."""
    upstream = SigningUpstream(UpstreamKey(), "@up/signed", "plain")
    app = build(tmp_path, upstream=upstream)
    for name in ("@up/signed", "plain"):
        full, small = await served(app, name), await served(app, name, abbreviated=True)
        for document in (full, small):
            first = document["versions"]["1.0.0"]
            assert first["_npmUser"]["trustedPublisher"]["id"] == "github"  # pnpm's trustPolicy reads it
            assert first["dist"]["attestations"]["provenance"] == {"predicateType": PROVENANCE}
            assert first["dist"]["attestations"]["url"] == packument.attestations_url(
                "http://127.0.0.1:5984", name, "1.0.0")
    listed = await listed_keys(app)
    assert upstream.key.keyid in [k["keyid"] for k in listed] and len(listed) == 2
    attestations = await app.call("GET", "/-/npm/v1/attestations/@up%2fsigned@1.0.0")
    assert attestations.status == 200 and attestations.json()["attestations"][0]["bundle"]["spec"] == "@up/signed@1.0.0"
    # 1.1.0's manifest names no attestations: a 404 without asking the upstream.
    assert (await app.call("GET", "/-/npm/v1/attestations/@up%2fsigned@1.1.0")).status == 404
    assert upstream.asked("@1.1.0") == 0

    upstream.down = True
    app.clock.advance(24 * 3600)  # everything stale: the upstream would be asked
    asked = len(upstream.paths)
    offline = await served(app, "@up/signed")
    listed_offline = await listed_keys(app)
    assert [k["keyid"] for k in listed_offline] == [k["keyid"] for k in listed]
    for version in ("1.0.0", "1.1.0"):
        assert npm_verdict(offline, version, listed_offline) == "verified"
    again = await app.call("GET", "/-/npm/v1/attestations/@up%2fsigned@1.0.0")
    assert again.status == 200 and again.body == attestations.body
    assert upstream.asked("attestations") == 1  # fetched once, ever
    assert len(upstream.paths) - asked <= 3  # the stale document and the keys tried once each, at most


@pytest_twisted.ensureDeferred
async def test_an_upstream_without_attestations_is_asked_once(tmp_path: Path) -> None:
    """A version the upstream has no attestations for is a 404, remembered: the next ask does not go upstream."""
    upstream = SigningUpstream(UpstreamKey())
    app = build(tmp_path, upstream=upstream)
    for _ in range(3):
        answer = await app.call("GET", "/-/npm/v1/attestations/unknown-thing@2.0.0")
        assert answer.status == 404 and "error" in answer.json()
    assert upstream.asked("attestations") == 1
    assert (await app.call("GET", "/-/npm/v1/attestations/no-version")).status == 400
    assert (await app.call("GET", "/-/npm/v1/attestations/_bad@1.0.0")).status == 400


def test_stored_keys_are_kinds_of_their_own() -> None:
    """The signing keys and stored attestations are keys nopard knows (export leaves them out by design)."""
    assert keys.key_kind(keys.SIGNING_KEYS) == keys.SIGNING
    assert keys.key_kind(keys.upstream_keys_key("http://127.0.0.1:9")) == keys.SIGNING
    attestation = keys.upstream_attestations_key("@up/signed", "1.0.0")
    assert keys.parse_package_key(attestation) == keys.PackageKey(keys.MIRRORED_ATTESTATIONS, "@up/signed", "1.0.0")
