"""Changes to published documents: dist-tags, deprecations, unpublished versions, owners, stars."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nopard.domain import names, package_flags, packument
from nopard.domain.errors import InvalidInput, NotFound, VersionExists
from nopard.domain.publication import Publication

ALICE = {"name": "alice", "email": "alice@example.com"}
BOB = {"name": "bob", "email": "bob@example.com"}
NOW = "2026-03-01T00:00:00.000Z"


def document(*versions: str) -> dict[str, Any]:
    """A stored document with the given versions, latest the last one."""
    doc = packument.new_document("pkg")
    for version in versions:
        doc["versions"][version] = {"name": "pkg", "version": version, "description": f"at {version}",
                                    "dist": {"tarball": f"pkg-{version}.tgz"}}
        doc["time"][version] = NOW
    doc["dist-tags"] = {"latest": versions[-1]}
    doc["maintainers"] = [ALICE]
    doc["_rev"] = "3-abc"
    return doc


def sent_back(doc: dict[str, Any], **deprecations: str) -> dict[str, Any]:
    """The document as npm deprecate PUTs it back, with ``deprecated`` set per version."""
    body = copy.deepcopy(doc)
    for version, message in deprecations.items():
        body["versions"][version.replace("_", ".")]["deprecated"] = message
    return body


class TestChangeKind:
    @pytest.mark.parametrize("body, kind", [
        ({"_id": "pkg", "_rev": "1-a", "users": {"bob": True}}, "star"),
        ({"_id": "pkg", "_rev": "1-a", "users": {}}, "star"),
        ({"_id": "pkg", "_rev": "1-a", "maintainers": []}, "owners"),
        ({"_id": "pkg", "versions": {}}, "versions"),
    ])
    def test_bodies_are_told_apart(self, body: dict, kind: str) -> None:
        """Star, owner change and a document sent back are recognised by their keys."""
        assert packument.change_kind(body) == kind

    @pytest.mark.parametrize("body", [[], "x", None, {"_id": "pkg"}, {"versions": []},
                                      {"users": {}, "maintainers": []}])
    def test_anything_else_is_refused(self, body: Any) -> None:
        """Bodies that are none of these are bad input."""
        with pytest.raises(InvalidInput):
            packument.change_kind(body)


class TestDistTags:
    def test_set_and_remove(self) -> None:
        """A tag points at an existing version and can be removed; the input is not changed."""
        doc = document("1.0.0", "2.0.0")
        tagged = packument.set_dist_tag(doc, "beta", "1.0.0")
        assert tagged["dist-tags"] == {"latest": "2.0.0", "beta": "1.0.0"}
        assert doc["dist-tags"] == {"latest": "2.0.0"}
        assert packument.remove_dist_tag(tagged, "beta")["dist-tags"] == {"latest": "2.0.0"}

    def test_moving_latest_updates_top_level_fields(self) -> None:
        """Top-level description follows the latest version."""
        doc = packument.set_dist_tag(document("1.0.0", "2.0.0"), "latest", "1.0.0")
        assert doc["description"] == "at 1.0.0"

    @pytest.mark.parametrize("tag, version", [
        ("1.0.0", "1.0.0"), ("^1", "1.0.0"), ("v2", "1.0.0"), ("beta", "3.0.0"),
        ("beta", 1), ("bad tag", "1.0.0"), ("", "1.0.0"),
    ])
    def test_bad_tags_and_versions_are_refused(self, tag: Any, version: Any) -> None:
        """Range-like or malformed tags and missing or non-string versions: InvalidInput."""
        with pytest.raises(InvalidInput):
            packument.set_dist_tag(document("1.0.0"), tag, version)

    def test_latest_cannot_be_removed_and_missing_tags_are_not_found(self) -> None:
        with pytest.raises(InvalidInput):
            packument.remove_dist_tag(document("1.0.0"), "latest")
        with pytest.raises(NotFound):
            packument.remove_dist_tag(document("1.0.0"), "beta")


class TestDocumentSentBack:
    def test_deprecate_and_undeprecate(self) -> None:
        """`deprecated` is set per version; "" or a missing field drops it."""
        doc = document("1.0.0", "1.1.0")
        changed, removed = packument.apply_document(doc, sent_back(doc, **{"1_0_0": "old"}))
        assert removed == []
        assert changed["versions"]["1.0.0"]["deprecated"] == "old"
        assert "deprecated" not in changed["versions"]["1.1.0"]
        again, _ = packument.apply_document(changed, sent_back(changed, **{"1_0_0": ""}))
        assert "deprecated" not in again["versions"]["1.0.0"]

    def test_other_changes_are_ignored(self) -> None:
        """Only `deprecated` is taken: other fields, tags, maintainers and unknown versions are not."""
        doc = document("1.0.0", "1.1.0")
        body = sent_back(doc)
        body["versions"]["1.0.0"]["dependencies"] = {"evil": "*"}
        body["versions"]["9.0.0"] = {"version": "9.0.0"}
        body["dist-tags"] = {"latest": "9.0.0"}
        body["maintainers"] = [BOB]
        changed, removed = packument.apply_document(doc, body)
        assert (changed, removed) == (doc, [])

    @pytest.mark.parametrize("value", [1, None, ["x"]])
    def test_non_string_deprecation_is_refused(self, value: Any) -> None:
        doc = document("1.0.0", "1.1.0")
        body = sent_back(doc)
        body["versions"]["1.0.0"]["deprecated"] = value
        with pytest.raises(InvalidInput):
            packument.apply_document(doc, body)

    def test_dropping_a_version_moves_tags_and_keeps_its_time(self) -> None:
        """The version goes, tags naming it go, latest falls back; time keeps the record."""
        doc = packument.set_dist_tag(document("1.0.0", "1.1.0", "2.0.0-rc.1"), "next", "2.0.0-rc.1")
        body = sent_back(doc)
        del body["versions"]["1.1.0"]
        doc["dist-tags"]["latest"] = "1.1.0"
        changed, removed = packument.apply_document(doc, body)
        assert removed == ["1.1.0"]
        assert set(changed["versions"]) == {"1.0.0", "2.0.0-rc.1"}
        assert changed["dist-tags"] == {"latest": "1.0.0", "next": "2.0.0-rc.1"}
        assert "1.1.0" in changed["time"]
        assert packument.retired_versions(changed) == {"1.1.0"}

    def test_dropping_every_version_is_refused(self) -> None:
        """A whole package is unpublished with DELETE, never by a PUT."""
        doc = document("1.0.0", "1.1.0")
        with pytest.raises(InvalidInput):
            packument.apply_document(doc, {"_id": "pkg", "versions": {}})


class TestRetiredVersions:
    def test_unpublished_versions_cannot_come_back(self) -> None:
        """merge_publication refuses versions the document or a whole-unpublish record retired."""
        doc = document("1.0.0", "1.1.0")
        del doc["versions"]["1.1.0"]
        publication = Publication("pkg", {"1.1.0": {"name": "pkg", "version": "1.1.0", "dist": {}}},
                                  {"1.1.0": b"x"}, {"latest": "1.1.0"})
        with pytest.raises(VersionExists, match="unpublished"):
            packument.merge_publication(doc, publication, ALICE, NOW)
        with pytest.raises(VersionExists, match="unpublished"):
            packument.merge_publication(None, publication, ALICE, NOW, retired={"1.1.0"})

    def test_time_keys_are_not_versions(self) -> None:
        record = {"time": {"created": NOW, "modified": NOW, "unpublished": {}, "1.0.0": NOW}}
        assert packument.retired_versions(record) == {"1.0.0"}
        assert packument.retired_versions(None) == set()


class TestOwnersAndStars:
    def test_maintainers_are_replaced_and_never_emptied(self) -> None:
        doc = document("1.0.0")
        assert packument.set_maintainers(doc, [ALICE, BOB])["maintainers"] == [ALICE, BOB]
        with pytest.raises(InvalidInput):
            packument.set_maintainers(doc, [])

    @pytest.mark.parametrize("maintainers", [None, "alice", [], [{"email": "x"}], [{"name": ""}], ["alice"]])
    def test_malformed_maintainers_are_refused(self, maintainers: Any) -> None:
        with pytest.raises(InvalidInput):
            packument.maintainer_names({"maintainers": maintainers})

    def test_maintainer_names_are_deduplicated(self) -> None:
        assert packument.maintainer_names({"maintainers": [ALICE, BOB, ALICE]}) == ["alice", "bob"]

    def test_only_the_callers_star_changes(self) -> None:
        """Entries of other users are neither added nor removed by someone's star."""
        doc = document("1.0.0")
        doc["users"] = {"carol": True}
        starred = package_flags.set_star(doc, "bob", {"users": {"bob": True, "mallory": True}})
        assert starred["users"] == {"carol": True, "bob": True}
        assert package_flags.starred_by(starred, "bob")
        unstarred = package_flags.set_star(starred, "bob", {"users": {}})
        assert unstarred["users"] == {"carol": True}
        with pytest.raises(InvalidInput):
            package_flags.set_star(doc, "bob", {"users": ["bob"]})


class TestPaths:
    @pytest.mark.parametrize("path", ["/@s%2fn/-/n-1.0.0.tgz/-rev/3-a", "/@s/n/-/n-1.0.0.tgz/-rev/3-a"])
    def test_tarball_revision(self, path: str) -> None:
        assert names.parse_package_path(path) == names.PackagePath("@s/n", "tarball-revision", "n-1.0.0.tgz")

    @pytest.mark.parametrize("path, expected", [
        (b"/-/package/@s%2fn/dist-tags", ("@s/n", "dist-tags", None)),
        (b"/-/package/@s%2Fn/dist-tags/beta", ("@s/n", "dist-tags", "beta")),
        (b"/-/package/%40s/n/collaborators", ("@s/n", "collaborators", None)),
        (b"/-/package/pkg/visibility", ("pkg", "visibility", None)),
    ])
    def test_package_actions(self, path: bytes, expected: tuple) -> None:
        assert names.parse_package_action(path) == names.PackagePath(*expected)

    @pytest.mark.parametrize("path", [b"/-/package/pkg", b"/-/package/pkg/other", b"/-/package/pkg/visibility/x",
                                      b"/-/package/pkg/dist-tags/a/b", b"/-/package/..%2f/dist-tags"])
    def test_bad_package_actions(self, path: bytes) -> None:
        with pytest.raises(InvalidInput):
            names.parse_package_action(path)


class TestRequiredAction:
    """What the access rules must allow, judged on the document a change is applied to."""

    def test_dropping_a_version_of_the_document_changed_is_an_unpublish(self) -> None:
        """A body listing only 1.0.0, applied to a document that gained 1.0.1 since, needs unpublish."""
        newer = document("1.0.0", "1.0.1")
        body = sent_back(document("1.0.0"), **{"1_0_0": "old"})
        after, removed = packument.apply_document(newer, body)
        assert removed == ["1.0.1"] and packument.required_action(newer, after) == "unpublish"

    def test_deprecation_tags_and_owners_need_publish(self) -> None:
        """Deprecating, tagging and changing owners need publish; whole-package removal unpublish."""
        doc = document("1.0.0", "1.0.1")
        deprecated, _ = packument.apply_document(doc, sent_back(doc, **{"1_0_0": "old"}))
        tagged = packument.set_dist_tag(doc, "next", "1.0.0")
        owned = packument.set_maintainers(doc, [ALICE, BOB])
        assert {packument.required_action(doc, after) for after in (deprecated, tagged, owned)} == {"publish"}
        assert packument.required_action(doc, None) == "unpublish"
        assert packument.required_action(None, doc) == "publish"

    def test_a_star_needs_only_access(self) -> None:
        """Starring changes users only: any reader may."""
        doc = document("1.0.0")
        starred = package_flags.set_star(doc, "bob", {"users": {"bob": True}})
        starred["_rev"], starred["time"]["modified"] = "4-def", NOW
        assert packument.required_action(doc, starred) == "access"
