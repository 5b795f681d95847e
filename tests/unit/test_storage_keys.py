"""Storage keys: built from validated names only, parsed back by structure, so every name round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from nopard.catalog.search import SearchIndex
from nopard.domain import names
from nopard.domain.errors import InvalidInput
from nopard.domain.prepared import PreparedCache
from nopard.domain.publication import Publication
from nopard.local.packages import Registry
from nopard.mirror import build_mirror
from nopard.mirror.upstreams import Upstreams
from nopard.settings.config import LiveSettings, load_settings
from nopard.storage import InvalidKey, check_key, keys
from nopard.storage.fs import FilesystemStorage

# Names as a new publish may spell them, and the older spellings nopard still serves.
NEW_NAMES = st.from_regex(r"(@[a-z0-9~-][a-z0-9._~-]{0,8}/)?[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True)
SERVED_NAMES = st.from_regex(r"(@[a-z0-9~-][a-z0-9._~-]{0,8}/)?[A-Za-z0-9~!'()*][A-Za-z0-9._~!'()*-]{0,12}",
                             fullmatch=True)
WORDS = st.sampled_from(["upstream", "tarballs", "package.json", "meta.json", "packages", "unpublished.json"])
# Names made of the layout's own words are the ones a substring test gets wrong.
TRICKY_NAMES = st.one_of(
    WORDS, st.builds(lambda scope, word: f"@{scope}/{word}", st.sampled_from(["s", "upstream"]), WORDS))
VERSIONS = st.builds(lambda a, b, c, pre: f"{a}.{b}.{c}{pre}", st.integers(0, 99), st.integers(0, 99),
                     st.integers(0, 99), st.sampled_from(["", "-rc.1", "-beta", "-0"]))


def served(name: str) -> bool:
    try:
        names.validate_name(name)
    except InvalidInput:
        return False
    return True


ANY_NAME = st.one_of(NEW_NAMES, SERVED_NAMES, TRICKY_NAMES).filter(served)
DOCUMENT_KEYS = [
    (keys.local_document_key, keys.LOCAL_DOCUMENT),
    (keys.unpublished_key, keys.UNPUBLISHED),
    (keys.upstream_document_key, keys.MIRRORED_DOCUMENT),
    (keys.upstream_meta_key, keys.MIRRORED_META),
]


def test_storage_keys_of_a_scoped_package() -> None:
    """Keys live under packages/<name>/ with the document and tarballs at fixed places."""
    assert keys.package_prefix("@s/n") == "packages/@s/n"
    assert keys.local_document_key("@s/n") == "packages/@s/n/package.json"
    assert keys.tarball_key("@s/n", "n-1.0.0.tgz") == "packages/@s/n/tarballs/n-1.0.0.tgz"
    assert keys.upstream_document_key("n") == "packages/n/upstream/package.json"
    assert keys.upstream_meta_key("n") == "packages/n/upstream/meta.json"
    assert keys.upstream_tarball_key("n", "n-1.0.0.tgz") == "packages/n/upstream/tarballs/n-1.0.0.tgz"
    assert keys.unpublished_key("n") == "packages/n/unpublished.json"


@pytest.mark.parametrize(
    ("name", "filename"), [("../x", "x-1.0.0.tgz"), ("n", "../n-1.0.0.tgz"), ("n", "n-1.0.0.tgz/..")]
)
def test_storage_keys_refuse_unvalidated_parts(name: str, filename: str) -> None:
    """No key is built from a bad name or tarball file name."""
    with pytest.raises(InvalidInput):
        keys.tarball_key(name, filename)


@given(ANY_NAME)
def test_every_document_key_parses_back_to_its_name(name: str) -> None:
    """Each document key of any served name is a valid key and parses back to that name and kind."""
    for build, kind in DOCUMENT_KEYS:
        key = check_key(build(name))
        assert keys.parse_package_key(key) == keys.PackageKey(kind, name)


@given(ANY_NAME, VERSIONS)
def test_every_tarball_key_parses_back_to_its_name_and_file(name: str, version: str) -> None:
    """Local and mirrored tarball keys parse back to the package, the file and where it came from."""
    filename = names.tarball_filename(name, version)
    local, mirrored = keys.tarball_key(name, filename), keys.upstream_tarball_key(name, filename)
    assert keys.parse_package_key(check_key(local)) == keys.PackageKey(keys.LOCAL_TARBALL, name, filename)
    assert keys.parse_package_key(check_key(mirrored)) == keys.PackageKey(keys.MIRRORED_TARBALL, name, filename)
    assert keys.tarball_file_of(local) == keys.tarball_file_of(mirrored) == filename
    assert local.startswith(keys.local_tarballs_prefix(name))
    assert mirrored.startswith(keys.upstream_tarballs_prefix(name))


@given(st.lists(ANY_NAME, unique=True, max_size=6))
def test_names_of_picks_exactly_the_kind_asked_for(chosen: list[str]) -> None:
    """From a listing of every key, names_of gives each local package once, and no mirrored one."""
    listing = sorted(
        key
        for name in chosen
        for key in (keys.local_document_key(name), keys.upstream_document_key(name), keys.upstream_meta_key(name),
                    keys.tarball_key(name, names.tarball_filename(name, "1.0.0")))
    )
    assert sorted(keys.names_of(listing, keys.LOCAL_DOCUMENT)) == sorted(chosen)
    assert sorted(keys.names_of(listing, keys.MIRRORED_META)) == sorted(chosen)


@pytest.mark.parametrize("name", ["upstream", "@scope/upstream", "@upstream/upstream", "tarballs", "@s/tarballs"])
def test_a_package_named_like_the_layout_round_trips(name: str) -> None:
    """A package named ``upstream`` is a local package, and its own mirrored copy is still told apart."""
    listing = [keys.local_document_key(name), keys.upstream_meta_key(name), keys.upstream_document_key(name)]
    assert keys.names_of(listing, keys.LOCAL_DOCUMENT) == [name]
    assert keys.names_of(listing, keys.MIRRORED_META) == [name]
    assert keys.names_of([keys.upstream_meta_key("p")], keys.LOCAL_DOCUMENT) == []


@pytest.mark.parametrize(
    "key",
    ["packages/", "packages/p", "packages/@s/package.json", "packages/p/other.json", "packages/p/tarballs/x.tgz",
     "packages/p/upstream/tarballs/q-1.0.0.tgz", "packages/../package.json", "users/alice.json", "packages/p/upstream"],
)
def test_keys_nopard_never_writes_parse_to_nothing(key: str) -> None:
    """A key that no valid name and place could make is not taken for a package."""
    assert keys.parse_package_key(key) is None


def test_user_token_lock_and_settings_keys() -> None:
    """The other keys sit at fixed places, and refuse parts that could leave them."""
    assert keys.user_key("alice") == "users/alice.json"
    assert keys.token_key("a" * 64) == f"tokens/{'a' * 64}.json"
    assert keys.sync_lock_key("refresh") == "sync/refresh.lock"
    assert keys.SETTINGS_OVERRIDES == "settings/overrides.json"
    assert keys.health_probe_key("0f") == "health/probe-0f"
    for bad in (lambda: keys.user_key("../x"), lambda: keys.user_key(".hidden"), lambda: keys.token_key("npd_x"),
                lambda: keys.sync_lock_key("../x"), lambda: keys.health_probe_key("a/../b")):
        with pytest.raises(InvalidKey):
            bad()


def published(name: str) -> Publication:
    """A one-version publication of ``name``."""
    manifest = {"name": name, "version": "1.0.0", "description": f"the {name} package", "dist": {}}
    return Publication(name, {"1.0.0": manifest}, {"1.0.0": b"tarball bytes"}, {"latest": "1.0.0"})


@pytest_twisted.ensureDeferred
async def test_a_local_package_named_upstream_is_listed_and_found(tmp_path: Path) -> None:
    """Packages published as ``upstream`` and ``@scope/upstream`` are local and searchable (they were hidden)."""
    clock = Clock()
    live = LiveSettings(load_settings({}, {"NOPARD_FORWARDER_URL": "http://127.0.0.1:9"}, cwd=str(tmp_path)))
    storage = FilesystemStorage(str(tmp_path / "registry"), deferToThread)
    cache = PreparedCache(lambda: live.current.memory_cache_size)
    registry = Registry(storage, cache, clock)
    # The upstream is never asked: nothing here is missing from the store.
    documents = build_mirror(live, storage, registry, Upstreams(live, lambda url, token: None), cache, clock,
                             str(tmp_path / "spool"), Logger()).documents
    alice = {"name": "alice", "email": "alice@example.com"}
    for name in ("upstream", "@scope/upstream", "plain"):
        await registry.publish(published(name), alice)
    assert sorted(await registry.local_names()) == ["@scope/upstream", "plain", "upstream"]
    assert await documents.mirrored_names() == []
    index = SearchIndex(registry, documents, clock)
    assert sorted(entry.name for entry in await index.entries()) == ["@scope/upstream", "plain", "upstream"]
