"""Every kind of key nopard writes has an export rule and an import rule: a new kind fails here first.

Export walks the store and decides by kind (nopard/cli/export.py); import reads a nopard export
by kind (nopard/cli/sources.py). A key builder added to nopard/storage/keys.py whose keys
``key_kind`` does not know, or a kind in ``keys.KINDS`` that export or import has no rule for,
would be missed by every backup: these tests fail instead.
"""

from __future__ import annotations

import inspect

import pytest

from nopard.auth import stored_users
from nopard.cli.export import HOW_EXPORTED, LEFT_OUT, compare_holdings
from nopard.cli.sources import AS_IS, READ_BY_RULE
from nopard.storage import check_key, keys

# A value for every parameter name the key builders take (a new name: add one here).
SAMPLES = {
    "name": "@scope/pkg", "filename": "pkg-1.0.0.tgz", "version": "1.0.0", "user": "alice",
    "hashed": "a" * 64, "job": "refresh", "url": "http://127.0.0.1:9/", "unique": "0123abcd",
    "index": 0,
}
# Not builders of one stored key: prefixes, the generic form of the others, the parser.
NOT_KEYS = {"package_prefix", "package_key", "tarballs_prefix", "local_tarballs_prefix", "upstream_tarballs_prefix",
            "parse_package_key"}


def built_keys() -> dict[str, str]:
    """One key from every key builder of nopard/storage/keys.py, and every constant key, by where it came from."""
    built = {}
    for name, function in inspect.getmembers(keys, inspect.isfunction):
        if function.__module__ != keys.__name__ or not name.endswith("_key") or name in NOT_KEYS:
            continue
        parameters = inspect.signature(function).parameters
        missing = [p for p in parameters if p not in SAMPLES]
        assert not missing, f"keys.{name} takes {missing}: add a sample value to SAMPLES"
        built[name] = function(**{p: SAMPLES[p] for p in parameters})
    for name, value in vars(keys).items():
        if name.isupper() and isinstance(value, str) and "/" in value and not value.endswith("/"):
            built[name] = check_key(value)
    return built


def test_every_key_builder_makes_a_key_of_a_known_kind() -> None:
    """A key builder whose keys key_kind calls unknown would make export fail (or import skip it)."""
    kinds = {origin: keys.key_kind(key) for origin, key in built_keys().items()}
    assert {origin: kind for origin, kind in kinds.items() if kind not in keys.KINDS} == {}
    assert len(kinds) >= 15  # the builders were found


def test_every_kind_has_an_export_rule_and_an_import_rule() -> None:
    """Each kind is exported (then imported: as it is, or by its own rule) or left out by design."""
    assert set(HOW_EXPORTED) == set(keys.KINDS)
    assert keys.UNKNOWN not in HOW_EXPORTED
    exported = {kind for kind, how in HOW_EXPORTED.items() if how != LEFT_OUT}
    assert exported - (AS_IS | READ_BY_RULE) == set()
    assert not AS_IS & READ_BY_RULE


def test_left_out_by_design_is_per_instance_state_only() -> None:
    """What export leaves out is the instances' own state, made again wherever they run, the
    signing keys (import signs what it brings with the destination's own), and the changes feed
    (its numbers are the store's own: the new store numbers its own changes, its followers start over)."""
    assert {kind for kind, how in HOW_EXPORTED.items() if how == LEFT_OUT} == {
        keys.SYNC_LOCK, keys.HEALTH_PROBE, keys.MARKER, keys.SIGNING, keys.OLD_HTPASSWD, keys.CHANGES}


def test_the_htpasswd_file_moved_into_the_store_is_known_and_left_out() -> None:
    """After an upgrade <registry>/htpasswd.moved-to-store stays beside the keys: no unknown key
    failing every export, and not exported (its users are in users/htpasswd)."""
    assert keys.ADOPTED_HTPASSWD == keys.EXPORTED_HTPASSWD + stored_users.ADOPTED_SUFFIX
    assert HOW_EXPORTED[keys.key_kind(keys.ADOPTED_HTPASSWD)] == LEFT_OUT
    assert keys.key_kind(keys.USERS_HTPASSWD) == keys.HTPASSWD


@pytest.mark.parametrize("kind", [keys.UNKNOWN, keys.TOKEN_RECORD, keys.MIRRORED_TARBALL])
def test_a_kind_held_more_often_than_written_is_a_loss(kind: str) -> None:
    """compare_holdings: more held than written is lost (unknown keys too); left-out kinds are only counted."""
    from collections import Counter

    lost, skipped = compare_holdings(Counter({kind: 3, keys.SYNC_LOCK: 2}), Counter({kind: 1}))
    assert (lost, skipped) == ({kind: 2}, {keys.SYNC_LOCK: 2})
