"""The operator token: nopard-admin sync and prefetch against a running nopard, with the token the
daemon writes at start (tests/admin_cli.py runs the console script)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.admin_cli import (
    admin_http,
)
from tests.support import NopardServer
from tests.upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake




@pytest.fixture
def syncable(start_nopard: Callable[..., NopardServer], upstream: FakeUpstream) -> Callable[..., NopardServer]:
    """Start a nopard mirroring the fake upstream, its schedule quiet during a test."""
    def start(name: str = "nopard", **env: str) -> NopardServer:
        return start_nopard({"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_SYNC_INTERVAL": "3600", **env}, name=name)
    return start


def test_nopard_admin_runs_sync_and_prefetch_with_its_token(syncable, tmp_path: Path) -> None:
    """nopard writes its operator token at start, mode 0600; nopard-admin reads it and runs
    sync --now and prefetch through the real nopard."""
    server = syncable()
    token_file = server.registry / ".nopard-admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    result = admin_http(server, "sync", "--now")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refresh: checked 0")
    lock = tmp_path / "package-lock.json"
    lock.write_text(json.dumps({"name": "p", "lockfileVersion": 3, "packages": {
        "": {"name": "p"}, "node_modules/ms": {"version": "2.1.3"}}}))
    prefetched = admin_http(server, "prefetch", str(lock))
    assert prefetched.returncode == 0, prefetched.stdout + prefetched.stderr
    assert "failures 0" in prefetched.stdout and server.request("GET", "/ms").status == 200


def test_loopback_without_the_token_is_refused_sync_and_prefetch(syncable) -> None:
    """A request from 127.0.0.1 without X-Forwarded-For (a proxy adding none) and without the
    token: sync and prefetch are 401; with the token they run."""
    server = syncable()
    assert server.request("POST", "/-/nopard/sync", {"job": "refresh"}).status == 401
    assert server.request("POST", "/-/nopard/prefetch", {"packages": []}).status == 401
    assert server.request("POST", "/-/nopard/sync", {"job": "refresh"}, server.operator_headers()).status == 200


def test_each_instance_has_its_own_token(syncable) -> None:
    """Two instances with their own registries: each nopard-admin call works against its own, and
    one instance's token is refused by the other."""
    first, second = syncable("first"), syncable("second")
    assert first.operator_headers() != second.operator_headers()
    assert admin_http(first, "sync", "--now", "--job", "refresh").returncode == 0
    assert admin_http(second, "sync", "--now", "--job", "refresh").returncode == 0
    crossed = admin_http(first, "--token-file", str(second.registry / ".nopard-admin-token"), "sync", "--now")
    assert crossed.returncode == 2 and "nopard answered 401" in crossed.stderr


def test_the_token_survives_a_restart_and_a_token_file_setting(syncable, tmp_path: Path) -> None:
    """NOPARD_ADMIN_TOKEN_FILE puts the token elsewhere; a restart keeps it, so nopard-admin's
    copy stays valid."""
    token_file = tmp_path / "run" / "operator.token"
    server = syncable(NOPARD_ADMIN_TOKEN_FILE=str(token_file))
    before = token_file.read_text()
    server.stop()
    server.start()
    assert token_file.read_text() == before
    result = admin_http(server, "sync", "--now", env={"NOPARD_ADMIN_TOKEN_FILE": str(token_file)})
    assert result.returncode == 0, result.stderr


def test_nopard_admin_without_a_readable_token_says_why(syncable, tmp_path: Path) -> None:
    """No token file where nopard-admin looks: exit 2, naming the file and what to do."""
    server = syncable()
    result = admin_http(server, "sync", "--now", env={"NOPARD_REGISTRY_PATH": str(tmp_path / "elsewhere")})
    assert result.returncode == 2
    assert "no operator token file" in result.stderr and "--token-file" in result.stderr
