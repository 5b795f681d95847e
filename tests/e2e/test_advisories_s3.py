"""`nopard-admin advisories import` with NOPARD_STORAGE=s3 and only the bucket's settings: the
records land in the bucket (not the local directory) and a running nopard on that bucket
(moto's S3 server) reports them to the real npm's `npm audit`, the upstream blackholed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.admin_stores import S3Store
from tests.e2e.test_advisories import GHSA, RECORDS, project
from tests.s3_server import MotoServer
from tests.support import NopardServer, Npm
from tests.upstream import FakeUpstream


def test_an_s3_import_lands_in_the_bucket_and_npm_audit_sees_it(
        start_nopard: Callable[..., NopardServer], tmp_path: Path) -> None:
    """Imported into the bucket a running nopard serves: `npm audit --json` reports ms via the GHSA
    record; the registry directory nopard-admin was given holds no advisories."""
    with MotoServer() as moto, FakeUpstream() as upstream:
        store = S3Store(moto, tmp_path / "nopard" / "registry")
        server = start_nopard({**store.env, "NOPARD_FORWARDER_URL": upstream.url, "NOPARD_UPSTREAM_TIMEOUT": "2"})
        npm = Npm(server.url, tmp_path / "npm")
        app = project(tmp_path / "app", {"ms": "2.0.0"})
        npm.run("install", "--no-audit", cwd=app)
        imported = store.admin("advisories", "import", str(RECORDS))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert imported.stdout.startswith("advisories: 3 records read, 2 new, ")
        assert [key for key in store.objects() if key.startswith("advisories/")]
        assert not (store.local / "advisories").exists()
        upstream.fault("blackhole")
        try:
            result = npm.run("audit", "--json", cwd=app, check=False)
        finally:
            upstream.fault("none")
        [via] = json.loads(result.stdout)["vulnerabilities"]["ms"]["via"]
        assert GHSA in via["title"] and via["range"] == "<2.1.3"
