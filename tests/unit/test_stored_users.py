"""The users kept in the store (nopard/auth/stored_users.py): compare-and-swap, the cache, the move of a local file.

Two StoredUsers on one store stand for two instances (or an instance and nopard-admin);
the store is the filesystem backend, and moto's S3 server where the backend matters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from nopard.auth import Accounts
from nopard.auth.htpasswd import HtpasswdFile, hash_password, parse_htpasswd
from nopard.auth.stored_users import KEY, NEWS, POLL_SECONDS, StoredUsers, local_file_to_adopt, user_table
from nopard.auth.tokens import TokenStore
from nopard.domain.errors import BadCredentials, Conflict
from nopard.settings.config import LiveSettings, load_settings
from nopard.storage.fs import FilesystemStorage
from tests.unit.test_storage_s3 import bucket, make_storage, moto_server  # noqa: F401  # fixtures

HASH = hash_password("pw")  # made once: bcrypt is slow on purpose


@pytest.fixture(params=["fs", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The filesystem store, or a fresh bucket on moto's S3 server."""
    if request.param == "fs":
        return FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    return make_storage(request.getfixturevalue("bucket"), "registry")


def two(storage: Any) -> tuple[task.Clock, StoredUsers, StoredUsers]:
    clock = task.Clock()
    return clock, StoredUsers(storage, clock.seconds, deferToThread), StoredUsers(storage, clock.seconds, deferToThread)


@pytest_twisted.ensureDeferred
async def test_concurrent_sign_ups_through_two_instances_all_stay(storage: Any) -> None:
    """60 users added at once, half through each instance: every one is stored, none lost to a race."""
    _clock, first, second = two(storage)
    names = [f"user{i}" for i in range(60)]
    await defer.gatherResults([
        defer.Deferred.fromCoroutine((first if i % 2 else second).add_hashed(name, HASH))
        for i, name in enumerate(names)])
    stored = parse_htpasswd((await storage.read(KEY)).decode())
    assert sorted(stored) == sorted(names)
    assert sorted(await first.reread()) == sorted(names) == sorted(await second.reread())


@pytest_twisted.ensureDeferred
async def test_a_lost_race_is_retried_on_what_the_other_wrote(tmp_path: Path) -> None:
    """Another writer slips in between read and swap: the change is made again on top of theirs."""
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    clock, mine, theirs = two(storage)
    replace = storage.replace
    slipped: list[str] = []

    async def racing(key: str, data: bytes, version: str | None) -> bool:
        if not slipped:
            slipped.append("bob")
            await theirs.add_hashed("bob", HASH)
        return await replace(key, data, version)

    storage.replace = racing  # type: ignore[method-assign]
    await mine.add_hashed("alice", HASH)
    assert sorted(parse_htpasswd((await storage.read(KEY)).decode())) == ["alice", "bob"]
    with pytest.raises(Conflict, match="already exists"):
        await theirs.add_hashed("alice", HASH)


@pytest_twisted.ensureDeferred
async def test_checks_read_the_store_at_most_once_a_second_and_when_told(tmp_path: Path) -> None:
    """Many checks within POLL_SECONDS cost one read; after it, or after the change feed's news, one more."""
    clock, users, _other = two(FilesystemStorage(str(tmp_path / "registry"), deferToThread))
    await users.add_hashed("alice", HASH)
    reads = users.reads
    for _ in range(5):
        assert await users.check("alice", "pw")
    assert users.reads == reads
    clock.advance(POLL_SECONDS)
    assert await users.check("alice", "pw") and await users.check("alice", "pw")
    assert users.reads == reads + 1
    users.changed()
    assert await users.check("alice", "pw")
    assert users.reads == reads + 2


@pytest_twisted.ensureDeferred
async def test_a_change_elsewhere_applies_at_once_or_within_a_second(storage: Any) -> None:
    """Another instance (or nopard-admin) adds a user or sets a password: the new one works at once (read
    before refusing), the old password stops working at the next read, a removed user is gone."""
    clock, here, elsewhere = two(storage)
    await here.add_hashed("alice", HASH)
    assert await here.check("alice", "pw")
    await elsewhere.add_hashed("bob", hash_password("bobs"))
    assert await here.known("bob") and await here.check("bob", "bobs")
    await elsewhere.set_hash("alice", hash_password("new"))
    assert await here.check("alice", "new")
    clock.advance(POLL_SECONDS)
    assert not await here.check("alice", "pw")
    await elsewhere.set_hash("bob", None)
    here.changed()  # as the change feed tells it
    assert not await here.known("bob") and "bob" not in here


@pytest_twisted.ensureDeferred
async def test_a_token_of_a_user_removed_elsewhere_is_refused(tmp_path: Path) -> None:
    """Through Accounts: instance 2 knows the user instance 1 registered, and forgets them once removed."""
    settings = LiveSettings(load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path / "registry")}))
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    clock, first, second = two(storage)

    def accounts(users: StoredUsers) -> Accounts:
        return Accounts(settings, users, TokenStore(storage, clock.seconds), storage,
                        now=lambda: "2026-01-01T00:00:00Z")

    token = await accounts(first).login("alice", "pw")
    assert (await accounts(second).identify(f"Bearer {token}")).user == "alice"
    await first.set_hash("alice", None)
    second.changed()
    with pytest.raises(BadCredentials):
        await accounts(second).identify(f"Bearer {token}")


@pytest_twisted.ensureDeferred
async def test_a_change_is_announced_on_the_feed(tmp_path: Path) -> None:
    """A change that wrote tells the other processes; one that changes nothing says nothing."""
    _clock, users, _other = two(FilesystemStorage(str(tmp_path / "registry"), deferToThread))
    told: list[str] = []

    async def announce(name: str) -> None:
        told.append(name)

    users.announce = announce
    await users.add_hashed("alice", HASH)
    assert not await users.set_hash("alice", HASH)
    assert await users.set_hash("alice", None)
    assert told == [NEWS, NEWS]


@pytest_twisted.ensureDeferred
async def test_the_local_file_moves_into_the_store_once(storage: Any, tmp_path: Path) -> None:
    """<registry>/htpasswd goes into the store, renamed so it is not read again; a user the store has
    already is kept as stored; a second start moves nothing."""
    local = tmp_path / "registry" / "htpasswd"
    local.parent.mkdir(exist_ok=True)
    local.write_text(f"# old file\nalice:{HASH}\nbob:{HASH}\n")
    _clock, users, _other = two(storage)
    await users.add_hashed("bob", hash_password("kept"))
    adoption = await users.adopt_local_file(str(local))
    assert adoption is not None and (adoption.users, adoption.kept) == (2, 1)
    assert adoption.line() == (
        f"moved 2 users from {local} into the store (users/htpasswd) (1 of them already in the store with another "
        f"password, kept as there); the file is renamed {local}.moved-to-store and no longer read")
    assert not local.exists() and (tmp_path / "registry" / "htpasswd.moved-to-store").exists()
    assert await users.check("alice", "pw") and await users.check("bob", "kept")
    assert await users.adopt_local_file(str(local)) is None


@pytest_twisted.ensureDeferred
async def test_two_processes_moving_the_file_at_once_report_it_once(tmp_path: Path) -> None:
    """Workers starting together: the users are moved (idempotent merge), and one of them says so."""
    local = tmp_path / "registry" / "htpasswd"
    local.parent.mkdir()
    local.write_text(f"alice:{HASH}\n")
    _clock, first, second = two(FilesystemStorage(str(tmp_path / "registry"), deferToThread))
    results = await defer.gatherResults([defer.Deferred.fromCoroutine(users.adopt_local_file(str(local)))
                                         for users in (first, second)])
    assert len([r for r in results if r is not None]) == 1
    assert await second.known("alice") and await first.known("alice")


def test_nopard_htpasswd_keeps_a_local_file_and_moves_nothing(tmp_path: Path) -> None:
    """NOPARD_HTPASSWD set: the users are that file, managed by hand; unset: the store, and the old file moves."""
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    explicit = load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path / "registry"),
                                  "NOPARD_HTPASSWD": str(tmp_path / "users")})
    table = user_table(explicit, storage, lambda: 0.0, deferToThread)
    assert isinstance(table, HtpasswdFile) and table.path == str(tmp_path / "users")
    assert local_file_to_adopt(explicit) is None
    default = load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path / "registry")})
    assert isinstance(user_table(default, storage, lambda: 0.0, deferToThread), StoredUsers)
    assert local_file_to_adopt(default) == os.path.join(str(tmp_path / "registry"), "htpasswd")


@pytest_twisted.ensureDeferred
async def test_logging_in_on_an_instance_that_has_not_heard_of_a_new_user_yet(tmp_path: Path) -> None:
    """alice registered through instance 1; instance 2, its copy fresh and no news yet, takes her login
    for a sign-up, finds her stored, and logs her in (a wrong password is refused, nothing overwritten)."""
    settings = LiveSettings(load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path / "registry"),
                                               "NOPARD_MAX_USERS": "10"}))
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    clock, first, second = two(storage)
    tokens = TokenStore(storage, clock.seconds)
    one, two_ = (Accounts(settings, users, tokens, storage, now=lambda: "2026-01-01T00:00:00Z")
                 for users in (first, second))
    await second.fresh()  # read before alice existed, and trusted for a second
    await one.login("alice", "pw")
    assert "alice" not in second
    assert (await tokens.lookup(await two_.login("alice", "pw"))).user == "alice"
    with pytest.raises(BadCredentials):
        await two_.login("alice", "wrong")
    assert await first.check("alice", "pw")


@pytest_twisted.ensureDeferred
async def test_export_carries_the_users_even_when_the_last_one_was_removed(tmp_path: Path) -> None:
    """export writes the store's users as the export's htpasswd; an emptied users/htpasswd is no
    'left out' key (export would fail INCOMPLETE)."""
    from nopard.cli.export import export_registry

    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    _clock, users, _other = two(storage)
    await users.add_hashed("alice", HASH)
    report = await export_registry(storage, users, FilesystemStorage(str(tmp_path / "one"), deferToThread), print)
    assert (report.users, report.left_out) == (1, {})
    assert parse_htpasswd((tmp_path / "one" / "htpasswd").read_text()) == {"alice": HASH}
    await users.set_hash("alice", None)
    report = await export_registry(storage, users, FilesystemStorage(str(tmp_path / "two"), deferToThread), print)
    assert (report.users, report.left_out) == (0, {})
