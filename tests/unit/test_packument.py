"""Package documents: merging publishes, ordering versions, abbreviating and serving."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nopard.domain import packument
from nopard.domain.errors import InvalidInput, NotFound, VersionExists
from nopard.domain.packument import (
    abbreviate,
    for_clients,
    has_install_script,
    merge_publication,
    next_revision,
    resolve_version,
    version_key,
)
from nopard.domain.publication import Publication

ALICE = {"name": "alice", "email": "alice@example.com"}
BOB = {"name": "bob", "email": "bob@example.com"}
T1, T2 = "2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z"


def manifest(name: str, version: str, **fields: Any) -> dict[str, Any]:
    """A version manifest as a publish body carries it."""
    return {
        "name": name, "version": version, "readme": f"# {name} {version}",
        "readmeFilename": "README.md", "description": f"{name} at {version}",
        "dist": {"shasum": "ab", "integrity": "sha512-x",
                 "tarball": f"http://elsewhere.example/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"},
        **fields,
    }


def publication(name: str = "pkg", version: str = "1.0.0", tags: dict[str, str] | None = None,
                **fields: Any) -> Publication:
    """A parsed publish of one version."""
    return Publication(
        name, {version: manifest(name, version, **fields)}, {version: b"tgz"},
        {"latest": version} if tags is None else tags,
    )


def first(name: str = "pkg", **fields: Any) -> dict[str, Any]:
    """The document after a first publish of 1.0.0 by alice at T1."""
    return merge_publication(None, publication(name, **fields), ALICE, T1)


# merge_publication ------------------------------------------------------------


def test_first_publish_sets_maintainer_and_times() -> None:
    """The first publisher becomes the maintainer; created, modified and the version get now."""
    document = first()
    assert document["maintainers"] == [ALICE]
    assert document["time"] == {"created": T1, "modified": T1, "1.0.0": T1}
    assert (document["_id"], document["name"]) == ("pkg", "pkg")


def test_first_publish_sets_latest() -> None:
    """The published version becomes the latest dist-tag."""
    assert first()["dist-tags"] == {"latest": "1.0.0"}


def test_readme_moves_to_the_top_level() -> None:
    """The version's readme becomes the document's and is removed from the stored version."""
    document = first()
    assert (document["readme"], document["readmeFilename"]) == ("# pkg 1.0.0", "README.md")
    assert "readme" not in document["versions"]["1.0.0"]
    assert "readmeFilename" not in document["versions"]["1.0.0"]


def test_stored_version_has_registry_fields() -> None:
    """A stored version gets _id, _npmUser, maintainers, and a bare tarball file name."""
    stored = first("@s/n")["versions"]["1.0.0"]
    assert stored["_id"] == "@s/n@1.0.0"
    assert stored["_npmUser"] == ALICE
    assert stored["maintainers"] == [ALICE]
    assert stored["dist"] == {"shasum": "ab", "integrity": "sha512-x", "tarball": "n-1.0.0.tgz"}


def test_second_publish_keeps_earlier_versions_and_maintainers() -> None:
    """A second version by another user keeps 1.0.0, created, and alice as sole maintainer."""
    document = merge_publication(first(), publication(version="1.1.0"), BOB, T2)
    assert sorted(document["versions"]) == ["1.0.0", "1.1.0"]
    assert document["maintainers"] == [ALICE]
    assert document["versions"]["1.1.0"]["_npmUser"] == BOB
    assert document["time"] == {"created": T1, "modified": T2, "1.0.0": T1, "1.1.0": T2}
    assert document["dist-tags"]["latest"] == "1.1.0"


def test_merge_does_not_change_the_given_document() -> None:
    """merge_publication returns a new document and leaves its argument as it was."""
    before = first()
    kept = copy.deepcopy(before)
    merge_publication(before, publication(version="2.0.0"), BOB, T2)
    assert before == kept


def test_republishing_a_version_raises_version_exists() -> None:
    """Publishing a version already in the document raises VersionExists naming it."""
    with pytest.raises(VersionExists, match="1.0.0"):
        merge_publication(first(), publication(), ALICE, T2)


def test_tag_naming_an_unknown_version_is_invalid() -> None:
    """A dist-tag pointing at a version the document does not have raises InvalidInput."""
    with pytest.raises(InvalidInput, match="9.9.9"):
        merge_publication(None, publication(tags={"latest": "9.9.9"}), ALICE, T1)


def test_first_publish_with_another_tag_still_gets_latest() -> None:
    """npm publish --tag beta as the first publish sets beta and also latest."""
    document = merge_publication(None, publication(tags={"beta": "1.0.0"}), ALICE, T1)
    assert document["dist-tags"] == {"beta": "1.0.0", "latest": "1.0.0"}


def test_later_publish_with_another_tag_keeps_latest() -> None:
    """A later publish under --tag beta moves beta, not latest."""
    beta = publication(version="2.0.0-rc.1", tags={"beta": "2.0.0-rc.1"})
    document = merge_publication(first(), beta, ALICE, T2)
    assert document["dist-tags"] == {"latest": "1.0.0", "beta": "2.0.0-rc.1"}


def test_readme_of_a_non_latest_publish_does_not_replace_the_latest_readme() -> None:
    """Publishing a beta keeps the top-level readme of the latest version."""
    beta = publication(version="2.0.0-rc.1", tags={"beta": "2.0.0-rc.1"})
    document = merge_publication(first(), beta, ALICE, T2)
    assert document["readme"] == "# pkg 1.0.0"


def test_top_level_fields_come_from_latest() -> None:
    """description, license, keywords... are copied from the latest version; stale ones removed."""
    document = first(license="MIT", keywords=["a"], homepage="https://a.example")
    assert (document["description"], document["license"], document["keywords"]) == (
        "pkg at 1.0.0", "MIT", ["a"]
    )
    document = merge_publication(document, publication(version="1.1.0", license="ISC"), ALICE, T2)
    assert (document["description"], document["license"]) == ("pkg at 1.1.0", "ISC")
    assert "homepage" not in document and "keywords" not in document


# Revisions and ordering -----------------------------------------------------


@pytest.mark.parametrize(("rev", "number"), [(None, 1), ("1-abc", 2), ("41-x", 42), ("junk", 1)])
def test_next_revision_increments(rev: str | None, number: int) -> None:
    """The next revision is one above the current number, as <n>-<32 hex>."""
    document = {} if rev is None else {"_rev": rev}
    counter, _, digest = next_revision(document).partition("-")
    assert int(counter) == number
    assert len(digest) == 32 and int(digest, 16) >= 0


def test_next_revision_of_same_content_is_stable() -> None:
    """The same content gives the same revision; different content a different one."""
    document = {"_rev": "3-a"}
    assert next_revision(document, b"x") == next_revision(document, b"x")
    assert next_revision(document, b"x") != next_revision(document, b"y")


def test_version_key_gives_semver_precedence() -> None:
    """Versions sort as semver says: prereleases before their release, numbers numerically."""
    ordered = ["0.9.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_version_key_numeric_identifiers_sort_before_words() -> None:
    """A numeric prerelease identifier sorts before an alphanumeric one (1.0.0-1 < 1.0.0-a)."""
    assert version_key("1.0.0-1") < version_key("1.0.0-a")


def test_version_key_ignores_build_metadata() -> None:
    """Build metadata does not change precedence, even when it contains a hyphen."""
    assert version_key("1.0.0+build.5") == version_key("1.0.0")
    assert version_key("1.0.0+build-5") == version_key("1.0.0")


# Install scripts and the abbreviated form -----------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"scripts": {"preinstall": "x"}}, True), ({"scripts": {"install": "x"}}, True),
        ({"scripts": {"postinstall": "x"}}, True), ({"gypfile": True}, True),
        ({"scripts": {"test": "x", "prepare": "x", "prepublish": "x"}}, False),
        ({"scripts": {"install": ""}}, False), ({"scripts": "install"}, False), ({}, False),
    ],
)
def test_has_install_script(fields: dict[str, Any], expected: bool) -> None:
    """Only non-empty pre/post/install scripts or a binding.gyp count as install scripts."""
    assert has_install_script(fields) is expected


def test_abbreviate_keeps_only_install_fields() -> None:
    """Abbreviated versions keep the listed fields, add hasInstallScript, and drop the rest."""
    document = first(
        dependencies={"a": "^1"}, peerDependencies={"b": "*"}, engines={"node": ">=18"},
        bin={"x": "x.js"}, deprecated="old", os=["linux"], scripts={"postinstall": "x"},
        author="me", repository="r", main="index.js", _nodeVersion="20",
    )
    version = abbreviate(document)["versions"]["1.0.0"]
    assert version == {
        "name": "pkg", "version": "1.0.0", "dependencies": {"a": "^1"},
        "peerDependencies": {"b": "*"}, "engines": {"node": ">=18"}, "bin": {"x": "x.js"},
        "deprecated": "old", "os": ["linux"], "dist": document["versions"]["1.0.0"]["dist"],
        "hasInstallScript": True,
    }


def test_abbreviate_top_level_keeps_time() -> None:
    """The abbreviated document has name, modified, dist-tags, versions and time only."""
    document = first()
    small = abbreviate(document)
    assert set(small) == {"name", "modified", "dist-tags", "versions", "time"}
    assert (small["modified"], small["time"]) == (T1, document["time"])
    assert small["dist-tags"] == {"latest": "1.0.0"}


def test_abbreviate_without_install_script_has_no_flag() -> None:
    """hasInstallScript is absent, not false, when there is no install script."""
    assert "hasInstallScript" not in abbreviate(first())["versions"]["1.0.0"]


# Serving --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "base", "url"),
    [
        ("pkg", "http://h.example:1", "http://h.example:1/pkg/-/pkg-1.0.0.tgz"),
        ("@s/n", "https://h.example/npm", "https://h.example/npm/@s/n/-/n-1.0.0.tgz"),
    ],
)
def test_for_clients_rewrites_tarball_urls(name: str, base: str, url: str) -> None:
    """Every dist.tarball becomes <base>/<name>/-/<file>, literal / after the scope."""
    document = merge_publication(first(name), publication(name, "2.0.0"), ALICE, T2)
    served = for_clients(document, base)
    assert served["versions"]["1.0.0"]["dist"]["tarball"] == url
    assert served["versions"]["2.0.0"]["dist"]["tarball"] == url.replace("1.0.0", "2.0.0")


def test_for_clients_replaces_a_foreign_tarball_url() -> None:
    """A tarball stored as another registry's full URL is served from this base."""
    foreign = {"tarball": "https://r.example/pkg/-/pkg-1.0.0.tgz"}
    document = {"name": "pkg", "versions": {"1.0.0": {"dist": foreign}}}
    served = for_clients(document, "http://me.example")
    assert served["versions"]["1.0.0"]["dist"]["tarball"] == "http://me.example/pkg/-/pkg-1.0.0.tgz"


def test_for_clients_leaves_the_stored_document_alone() -> None:
    """The stored document keeps its bare tarball file names after serving."""
    document = first()
    for_clients(document, "http://me.example")
    assert document["versions"]["1.0.0"]["dist"]["tarball"] == "pkg-1.0.0.tgz"


def test_resolve_version_by_version_and_tag() -> None:
    """A version or a dist-tag resolves to that version's manifest."""
    rc = publication(version="2.0.0-rc.1", tags={"next": "2.0.0-rc.1"})
    document = merge_publication(first(), rc, ALICE, T2)
    assert resolve_version(document, "1.0.0")["version"] == "1.0.0"
    assert resolve_version(document, "latest")["version"] == "1.0.0"
    assert resolve_version(document, "next")["version"] == "2.0.0-rc.1"


@pytest.mark.parametrize("wanted", ["3.0.0", "beta", "^1.0.0", ""])
def test_resolve_unknown_version_is_not_found(wanted: str) -> None:
    """An unknown version, tag or a range raises NotFound."""
    with pytest.raises(NotFound, match="pkg@"):
        resolve_version(first(), wanted)


def test_new_document_is_empty() -> None:
    """A new document has the package's name and no versions, tags or maintainers."""
    document = packument.new_document("@s/n")
    assert (document["_id"], document["name"]) == ("@s/n", "@s/n")
    assert (document["versions"], document["dist-tags"], document["maintainers"]) == ({}, {}, [])
