"""Registry signatures and trust evidence judged by the clients themselves, through nopard.

The upstream is a fake that signs every version with a key pair made here (tests/fake_signed.py)
and lists it at its /-/npm/v1/keys, so mirrored signatures are real. `npm audit signatures` is npm
11's own command: only its sigstore TUF client is replaced (tests/clients/sigstore_tuf_offline.js)
by one answering what the real one answers for a registry TUF does not know, since the TUF
repository is not on loopback; npm then fetches nopard's /-/npm/v1/keys and pacote checks every
installed version's `dist.signatures` over `<name>@<version>:<integrity>`, as it does for any
private registry. pnpm's `trust-policy=no-downgrade` reads `_npmUser.trustedPublisher`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.admin_cli import admin
from tests.fake_signed import TRUST_KEPT, TRUST_LOST
from tests.package_managers import Pnpm, registry_key
from tests.signing import UpstreamKey
from tests.support import REPO, NopardServer, Npm, make_package, until_upstream_down
from tests.upstream import FakeUpstream

TUF_OFFLINE = REPO / "tests" / "clients" / "sigstore_tuf_offline.js"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, UpstreamKey]]:
    """A fake upstream signing every version it serves with a key made for it."""
    key = UpstreamKey()
    path = tmp_path_factory.mktemp("upstream-key") / "key.pem"
    path.write_text(key.private)
    with FakeUpstream(extra_args=("--signing-key", str(path), "--big-versions", "10")) as fake:
        yield fake, key


@pytest.fixture
def upstream_key(signed: tuple[FakeUpstream, UpstreamKey]) -> Iterator[UpstreamKey]:
    fake, key = signed
    fake.healthy()
    yield key
    fake.healthy()


def npm_for(server: NopardServer, home: Path, token: str | None = None) -> Npm:
    """The real npm pointed at ``server``, its TUF client answering as for any private registry."""
    npm = Npm(server.url, home, env={"NODE_OPTIONS": f"--require {TUF_OFFLINE}"})
    if token:
        with open(npm.userconfig, "a") as npmrc:
            npmrc.write(f"{registry_key(server.url)}:_authToken={token}\n")
    return npm


def project(directory: Path, dependencies: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "package.json").write_text(json.dumps(
        {"name": "signed-project", "version": "1.0.0", "dependencies": dependencies}))
    return directory


def audit_signatures(npm: Npm, directory: Path) -> subprocess.CompletedProcess:
    """`npm audit signatures` in ``directory``; its exit status and output, never raising."""
    return npm.run("audit", "signatures", cwd=directory, check=False)


def served_keyid(server: NopardServer, name: str, version: str) -> str:
    [signature] = server.request("GET", f"/{name}").json()["versions"][version]["dist"]["signatures"]
    return signature["keyid"]


def test_npm_verifies_local_and_mirrored_signatures_upstream_up_and_down(
    start_nopard: Callable[..., NopardServer], signed: tuple[FakeUpstream, UpstreamKey],
    upstream_key: UpstreamKey, tmp_path: Path,
) -> None:
    fake = signed[0]
    # Documents and the upstream's keys go stale at once: with the upstream down, both come from the store.
    server = start_nopard({"NOPARD_FORWARDER_URL": fake.url, "NOPARD_META_TTL": "1", "NOPARD_STALE_DEADLINE": "1"})
    npm = npm_for(server, tmp_path / "npm", server.token("alice", "pw-alice"))
    npm.run("publish", cwd=make_package(tmp_path / "pkg", "signed-local", "1.0.0"))
    app = project(tmp_path / "app", {"signed-local": "1.0.0", "ms": "*", "depd": "*"})
    npm.run("install", "--no-audit", cwd=app)

    listed = [key["keyid"] for key in server.request("GET", "/-/npm/v1/keys").json()["keys"]]
    own = served_keyid(server, "signed-local", "1.0.0")
    assert listed == [own, upstream_key.keyid]
    assert served_keyid(server, "ms", json.loads((app / "node_modules/ms/package.json").read_text())["version"]) \
        == upstream_key.keyid  # the upstream's own signature, kept

    audited = audit_signatures(npm, app)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "3 packages have verified registry signatures" in audited.stdout
    assert "Fetching verification keys using TUF failed.  Fetching directly from " + server.url in audited.stderr

    fake.fault("blackhole")
    until_upstream_down(server, "/ms")
    offline = audit_signatures(npm_for(server, tmp_path / "npm-offline"), app)  # an empty npm cache
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "3 packages have verified registry signatures" in offline.stdout


def test_imported_versions_are_signed_again_by_nopard(
    start_nopard: Callable[..., NopardServer], tmp_path: Path,
) -> None:
    # A registry elsewhere (another nopard, another key) holds a signed version ...
    elsewhere = start_nopard(name="elsewhere")
    publisher = npm_for(elsewhere, tmp_path / "npm-elsewhere", elsewhere.token("alice", "pw-alice"))
    publisher.run("publish", cwd=make_package(tmp_path / "pkg", "moved-pkg", "1.0.0"))
    foreign = served_keyid(elsewhere, "moved-pkg", "1.0.0")
    elsewhere.stop()

    # ... imported here: npm would fail on a signature whose key this registry does not list.
    here = NopardServer(tmp_path / "here")
    imported = admin(here.registry, "import", str(elsewhere.registry))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    server = start_nopard(name="here")
    keys = [key["keyid"] for key in server.request("GET", "/-/npm/v1/keys").json()["keys"]]
    assert foreign not in keys

    npm = npm_for(server, tmp_path / "npm-here")
    app = project(tmp_path / "app", {"moved-pkg": "1.0.0"})
    npm.run("install", "--no-audit", cwd=app)
    audited = audit_signatures(npm, app)  # kept as it was: EMISSINGSIGNATUREKEY, exit status 1
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "1 package has a verified registry signature" in audited.stdout
    assert served_keyid(server, "moved-pkg", "1.0.0") == keys[-1]


@pytest.mark.parametrize("form", ["full", "abbreviated"])
def test_pnpm_trust_policy_refuses_a_trust_downgrade(
    start_nopard: Callable[..., NopardServer], signed: tuple[FakeUpstream, UpstreamKey],
    upstream_key: UpstreamKey, tmp_path: Path, form: str,
) -> None:
    server = start_nopard({"NOPARD_FORWARDER_URL": signed[0].url})
    pnpm = Pnpm(server.url, tmp_path / "pnpm")
    with open(pnpm.home / ".npmrc", "a") as npmrc:
        # pnpm asks for full documents to judge trust, unless told the abbreviated ones carry `time`.
        npmrc.write("trust-policy=no-downgrade\n" + ("registry-supports-time-field=true\n" if form == "abbreviated"
                                                      else ""))

    kept = project(tmp_path / "kept", {TRUST_KEPT: "^1.0.0"})
    pnpm.install(kept)
    assert json.loads((kept / "node_modules" / TRUST_KEPT / "package.json").read_text())["version"] == "1.1.0"

    lost = project(tmp_path / "lost", {TRUST_LOST: "^1.0.0"})
    refused = pnpm.run("install", "--no-frozen-lockfile", cwd=lost, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "ERR_PNPM_TRUST_DOWNGRADE" in output and f'"{TRUST_LOST}@1.1.0"' in output, output
    assert not (lost / "node_modules" / TRUST_LOST).exists()
