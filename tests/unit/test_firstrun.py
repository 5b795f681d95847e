"""The first run's choice of forwarder: what npm's answer leads to (the real npm: tests/e2e/test_first_run.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nopard.settings.config import load_settings, setting_sources
from nopard.settings.firstrun import NPM_TIMEOUT, SOURCE_NPM, choose_forwarder


def fake_npm(tmp_path: Path, script: str) -> dict[str, str]:
    """An environment whose PATH holds an ``npm`` that runs ``script`` (sh)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    npm = folder / "npm"
    npm.write_text(f"#!/bin/sh\n{script}\n")
    npm.chmod(0o755)
    return {"PATH": str(folder), "NOPARD_PORT": "4873"}


def choose(environ: dict[str, str], tmp_path: Path, run=subprocess.run):
    settings = load_settings({}, environ, cwd=str(tmp_path))
    return choose_forwarder(settings, setting_sources({}, environ), environ, run)


def test_npms_registry_with_its_credentials_is_mirrored_and_shown_without_them(tmp_path: Path) -> None:
    environ = fake_npm(tmp_path, 'echo "registry=http://mirror-user:secret@127.0.0.1:9/"; echo "userconfig=/u/.npmrc"')
    settings, sources, origin = choose(environ, tmp_path)
    assert settings.forwarder_url == "http://mirror-user:secret@127.0.0.1:9"
    assert sources["forwarder_url"] == origin.source == SOURCE_NPM
    assert "secret" not in origin.note and "userconfig /u/.npmrc" in origin.note
    assert origin.status(settings.forwarder_url, False)["url"] == "http://<redacted>@127.0.0.1:9"
    changed = origin.status("http://127.0.0.1:8/", True)
    assert (changed["url"], changed["source"]) == ("http://127.0.0.1:8/", "settings page")


@pytest.mark.parametrize(("script", "reason"), [
    ("exit 3", "failed with exit status 3"),
    ('echo "registry=ftp://x/"', "answered 'ftp://x/', no http(s) URL"),
    ('echo "registry=http://localhost:4873/"', "names this nopard itself (http://localhost:4873), ignored"),
])
def test_an_unusable_answer_keeps_nopard_private_and_says_why(tmp_path: Path, script: str, reason: str) -> None:
    settings, sources, origin = choose(fake_npm(tmp_path, script), tmp_path)
    assert settings.forwarder_url == "" and origin.url == ""
    assert reason in origin.note and origin.note.endswith("to none to keep this quiet)")
    assert sources["forwarder_url"] == "default"


def test_an_npm_that_hangs_is_given_up_on(tmp_path: Path) -> None:
    def slow(command, **options):
        assert options["timeout"] == NPM_TIMEOUT
        raise subprocess.TimeoutExpired(command, options["timeout"])

    settings, _sources, origin = choose(fake_npm(tmp_path, "sleep 60"), tmp_path, run=slow)
    assert settings.forwarder_url == ""
    assert f"gave no answer within {NPM_TIMEOUT:g} s" in origin.note


def test_a_set_forwarder_asks_no_npm(tmp_path: Path) -> None:
    environ = {**fake_npm(tmp_path, "exit 99"), "NOPARD_FORWARDER_URL": "http://127.0.0.1:9/"}
    settings, sources, origin = choose(environ, tmp_path, run=None)  # run is never called
    assert (settings.forwarder_url, sources["forwarder_url"]) == ("http://127.0.0.1:9", "environment")
    assert origin.note == "mirroring http://127.0.0.1:9 (NOPARD_FORWARDER_URL)"


def test_npm_pointing_at_nopard_itself_falls_back_to_its_registry_without_the_user_config(tmp_path: Path) -> None:
    """The user's .npmrc names nopard (the README's next step): npm's registry without that user config
    (its global config, or its own default) is mirrored; one naming nopard too keeps nopard private."""
    script = ('case "$*" in *--userconfig*) echo "registry=http://127.0.0.1:9/";; '
              '*) echo "registry=http://localhost:4873/";; esac; echo "userconfig=/u/.npmrc"')
    settings, sources, origin = choose(fake_npm(tmp_path, script), tmp_path)
    assert (settings.forwarder_url, sources["forwarder_url"]) == ("http://127.0.0.1:9", SOURCE_NPM)
    assert "names this nopard itself (http://localhost:4873); mirroring http://127.0.0.1:9" in origin.note
    both = tmp_path / "both"
    both.mkdir()
    settings, _sources, origin = choose(fake_npm(both, 'echo "registry=http://localhost:4873/"'), both)
    assert settings.forwarder_url == "" and "ignored: a private registry" in origin.note
