"""A real `twistd -n nopard` storing its data in S3 (moto's standalone server)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.s3_server import MotoServer
from tests.support import (
    BIN,
    OPERATOR_TOKEN_FILE,
    NopardServer,
    files_under,
    publish_body,
    tarball_bytes,
    twistd_env,
)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def test_publish_and_read_back_through_s3(
    start_nopard: Callable[..., NopardServer], moto_server: MotoServer
) -> None:
    """Login, publish and reads all go to the bucket, the users' htpasswd too: nothing stored locally."""
    bucket = moto_server.new_bucket()
    server = start_nopard({
        "NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": bucket, "NOPARD_S3_PREFIX": "npm/main",
        **moto_server.env(),
    })
    token = server.token("alice", "pw-alice")
    answer = server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=token)
    assert answer.status in (200, 201), answer.body

    document = server.request("GET", "/pkg")
    assert document.status == 200, document.body
    assert document.json()["dist-tags"]["latest"] == "1.0.0"
    tarball_url = document.json()["versions"]["1.0.0"]["dist"]["tarball"]
    assert tarball_url.endswith("/pkg/-/pkg-1.0.0.tgz")
    tarball = server.request("GET", "/pkg/-/pkg-1.0.0.tgz")
    assert tarball.status == 200
    assert tarball.body == tarball_bytes("pkg", "1.0.0")
    assert tarball.headers["content-length"] == str(len(tarball.body))
    assert server.request("GET", "/pkg/-/pkg-9.9.9.tgz").status == 404

    objects = sorted(item["Key"] for item in moto_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert "npm/main/packages/pkg/package.json" in objects
    assert "npm/main/packages/pkg/tarballs/pkg-1.0.0.tgz" in objects
    assert "npm/main/users/alice.json" in objects and "npm/main/users/htpasswd" in objects
    assert any(key.startswith("npm/main/tokens/") for key in objects)
    assert all(key.startswith("npm/main/") for key in objects)
    # Only what must be local: the operator token of this instance, and the (empty) spool
    # directory where upstream downloads are verified.
    assert files_under(server.registry) == []
    assert {path.name for path in server.registry.iterdir()} <= {".spool", OPERATOR_TOKEN_FILE}

    # The store's size is the bucket's, under the prefix.
    metrics = server.request("GET", "/-/metrics").body.decode()
    stored = sum(item["Size"] for item in moto_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert f"nopard_store_bytes {float(stored)}" in metrics, metrics
    status = server.request("GET", "/-/web/status").body.decode()
    assert "Storage used: " in status and "objects" in status

    # After a restart everything is still served, from the bucket.
    server.stop()
    server.start()
    assert server.request("GET", "/pkg").json()["dist-tags"]["latest"] == "1.0.0"
    assert server.request("GET", "/pkg/-/pkg-1.0.0.tgz").body == tarball_bytes("pkg", "1.0.0")


def test_s3_without_a_bucket_stops_start_up(tmp_path: Path) -> None:
    """NOPARD_STORAGE=s3 without NOPARD_S3_BUCKET: nopard refuses to start, naming the setting."""
    server = NopardServer(tmp_path / "nopard", {"NOPARD_STORAGE": "s3"})
    with pytest.raises(RuntimeError, match="NOPARD_S3_BUCKET"):
        server.start()


def test_signing_keys_listed_and_rotated_in_the_bucket(
    start_nopard: Callable[..., NopardServer], moto_server: MotoServer, tmp_path: Path
) -> None:
    """`nopard-admin keys list|rotate` with NOPARD_STORAGE=s3 work on the bucket running instances share."""
    bucket = moto_server.new_bucket()
    env = {"NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": bucket, "NOPARD_S3_PREFIX": "npm", **moto_server.env()}
    server = start_nopard(env)
    [first] = server.request("GET", "/-/npm/v1/keys").json()["keys"]

    def admin(*args: str) -> str:
        result = subprocess.run([str(BIN / "nopard-admin"), "keys", *args], env=twistd_env(env), cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert admin("list").splitlines() == [f"{first['keyid']}  created {first_created(moto_server, bucket)}  current"]
    assert f"rotated: {first['keyid']} expires " in admin("rotate")
    old, new = server.request("GET", "/-/npm/v1/keys").json()["keys"]
    assert (old["keyid"], new["expires"]) == (first["keyid"], None) and old["expires"]
    assert admin("list").splitlines()[1].endswith("  current")
    assert not (tmp_path / "registry").exists()  # nothing written beside the bucket

    answer = server.request("PUT", "/pkg", publish_body("pkg", "1.0.0"), token=server.token("alice", "pw-alice"))
    assert answer.status in (200, 201), answer.body
    [signature] = server.request("GET", "/pkg").json()["versions"]["1.0.0"]["dist"]["signatures"]
    assert signature["keyid"] == new["keyid"]


def first_created(moto_server: MotoServer, bucket: str) -> str:
    """When the bucket's first signing key was made (signing/keys.json under the prefix)."""
    stored = moto_server.client().get_object(Bucket=bucket, Key="npm/signing/keys.json")["Body"].read()
    return json.loads(stored)["keys"][0]["created"]
