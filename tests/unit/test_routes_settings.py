"""The runtime settings API in-process: who may read and change settings, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.unit.route_harness import build


@pytest_twisted.ensureDeferred
async def test_anonymous_settings_are_401(tmp_path: Path) -> None:
    """Reading the settings without a login is 401."""
    answer = await build(tmp_path, admins=("root",)).call("GET", "/-/nopard/settings")
    assert answer.status == 401 and "admin" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_users_who_are_not_admins_get_403(tmp_path: Path) -> None:
    """A logged-in user not named an admin may not read the settings."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("bob")
    answer = await app.call("GET", "/-/nopard/settings", token=token)
    assert answer.status == 403


@pytest_twisted.ensureDeferred
async def test_nobody_is_admin_unless_named(tmp_path: Path) -> None:
    """Without NOPARD_ADMINS or admins in NOPARD_CONFIG, even the first user is no admin."""
    app = build(tmp_path)
    token = await app.user("alice")
    assert (await app.call("GET", "/-/nopard/settings", token=token)).status == 403


@pytest_twisted.ensureDeferred
async def test_admin_reads_the_settings(tmp_path: Path) -> None:
    """An admin gets every runtime setting with its value."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("root")
    answer = await app.call("GET", "/-/nopard/settings", token=token)
    assert answer.status == 200 and "meta_ttl" in {entry["name"] for entry in answer.json()["settings"]}


@pytest_twisted.ensureDeferred
async def test_admin_changes_a_setting_at_once(tmp_path: Path) -> None:
    """A PUT of a new META_TTL is in effect when the answer arrives."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("root")
    answer = await app.call("PUT", "/-/nopard/settings", {"values": {"meta_ttl": "123"}}, token=token)
    assert answer.status == 200 and app.settings.current.meta_ttl == 123


@pytest_twisted.ensureDeferred
async def test_bad_value_is_400_naming_the_setting(tmp_path: Path) -> None:
    """A value that does not parse is 400, names the setting, and changes nothing."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("root")
    before = app.settings.current.meta_ttl
    answer = await app.call("PUT", "/-/nopard/settings", {"values": {"meta_ttl": "soon"}}, token=token)
    assert answer.status == 400 and answer.json()["setting"] == "NOPARD_META_TTL"
    assert app.settings.current.meta_ttl == before


@pytest_twisted.ensureDeferred
async def test_body_without_values_is_400(tmp_path: Path) -> None:
    """A PUT whose body has no "values" object is 400 saying the expected shape."""
    app = build(tmp_path, admins=("root",))
    token = await app.user("root")
    answer = await app.call("PUT", "/-/nopard/settings", {"meta_ttl": "5"}, token=token)
    assert answer.status == 400 and "values" in answer.json()["error"]
