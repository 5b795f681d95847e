"""The first run: without NOPARD_FORWARDER_URL, nopard mirrors the registry npm on this machine uses.

Each nopard gets a HOME and an npm userconfig of its own (HOME, NPM_CONFIG_USERCONFIG), the real
npm 11 of the test clients on PATH, and the fake upstream as the registry npm is configured with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.support import NopardServer, Npm, clients_bin
from tests.upstream import FakeUpstream


def npm_environment(home: Path, registry: str | None, path: str | None = None,
                    global_registry: str | None = None) -> dict[str, str | None]:
    """nopard's environment: NOPARD_FORWARDER_URL unset, and an npm whose userconfig names ``registry``
    (and whose global config names ``global_registry``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".npmrc").write_text(f"registry={registry}\n" if registry else "")
    (home / "globalnpmrc").write_text(f"registry={global_registry}\n" if global_registry else "")
    return {"NOPARD_FORWARDER_URL": None, "HOME": str(home), "NPM_CONFIG_USERCONFIG": str(home / ".npmrc"),
            "NPM_CONFIG_GLOBALCONFIG": str(home / "globalnpmrc"),
            "PATH": path if path is not None else f"{clients_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}


def forwarder_lines(server: NopardServer) -> list[str]:
    """The log lines saying which registry nopard mirrors."""
    return [line for line in server.log().splitlines() if "forwarder: " in line]


def test_npms_registry_is_mirrored_and_shown(start_nopard: Callable[..., NopardServer], fake: FakeUpstream,
                                             tmp_path: Path) -> None:
    server = start_nopard(npm_environment(tmp_path / "home", fake.url))
    shown = fake.url.rstrip("/")
    [line] = forwarder_lines(server)
    assert f"mirroring {shown}, the registry of `npm config get registry`" in line
    assert f"userconfig {tmp_path / 'home' / '.npmrc'}" in line
    status = server.request("GET", "/-/nopard/status").json()
    assert status["forwarder"]["url"] == shown and status["forwarder"]["source"] == "npm config get registry"
    assert [u["url"] for u in status["upstreams"]] == [shown]
    page = server.request("GET", "/-/web/status").body.decode()
    assert f"Forwarder: {shown} (mirroring {shown}, the registry of" in page

    # What a newcomer does first: install a public package through nopard.
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "first-run", "version": "1.0.0"}')
    Npm(server.url, tmp_path / "client").run("install", "ms", "--no-audit", cwd=project)
    assert (project / "node_modules" / "ms" / "package.json").is_file()
    assert any(path == "/ms" for _method, path in fake.stats()["requests"])


def test_none_keeps_nopard_private(start_nopard: Callable[..., NopardServer], fake: FakeUpstream,
                                   tmp_path: Path) -> None:
    env = {**npm_environment(tmp_path / "home", fake.url), "NOPARD_FORWARDER_URL": "none"}
    server = start_nopard(env)
    assert server.request("GET", "/ms").status == 404
    assert fake.stats()["requests"] == []
    [line] = forwarder_lines(server)
    assert "a private registry: NOPARD_FORWARDER_URL is none" in line
    assert server.request("GET", "/-/nopard/status").json()["upstreams"] == []
    assert "Forwarder: none" in server.request("GET", "/-/web/status").body.decode()


def test_without_npm_it_stays_private_and_says_so(start_nopard: Callable[..., NopardServer], fake: FakeUpstream,
                                                  tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    server = start_nopard(npm_environment(tmp_path / "home", fake.url, path=str(empty)))
    assert server.request("GET", "/ms").status == 404
    assert fake.stats()["requests"] == []
    [line] = forwarder_lines(server)
    assert "no npm on PATH to ask for a registry: a private registry" in line


def test_npm_pointing_at_nopard_itself_is_ignored(start_nopard: Callable[..., NopardServer], fake: FakeUpstream,
                                                  tmp_path: Path) -> None:
    # npm's user and global configs both name nopard itself: nothing to mirror.
    server = NopardServer(tmp_path / "nopard", {})
    own = f"http://localhost:{server.port}/"
    server._env.update(npm_environment(tmp_path / "home", own, global_registry=own))
    try:
        server.start()
        [line] = forwarder_lines(server)
        assert f"names this nopard itself (http://localhost:{server.port}), ignored: a private registry" in line
        assert server.request("GET", "/ms").status == 404
        assert server.request("GET", "/-/nopard/status").json()["forwarder"]["url"] is None
    finally:
        server.stop()


def test_a_restart_after_npm_was_pointed_at_nopard_keeps_mirroring(fake: FakeUpstream, tmp_path: Path) -> None:
    """The user switched npm to nopard (the README's next step), then restarts nopard: it mirrors the
    registry npm used before (npm's without the user's .npmrc: here its global config's)."""
    server = NopardServer(tmp_path / "nopard", {})
    server._env.update(npm_environment(tmp_path / "home", f"http://localhost:{server.port}/",
                                       global_registry=fake.url))
    try:
        server.start()
        [line] = forwarder_lines(server)
        assert f"names this nopard itself (http://localhost:{server.port}); mirroring {fake.url.rstrip('/')}" in line
        assert server.request("GET", "/ms").status == 200
    finally:
        server.stop()
