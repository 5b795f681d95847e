"""Reading and verifying publish bodies as npm 11 sends them."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from nopard.domain.errors import IntegrityMismatch, InvalidInput
from nopard.domain.integrity import integrity_matches, integrity_of
from nopard.domain.publication import parse_publication
from tests.support import publish_body

DATA = b"\x1f\x8b pretend this is a tarball"


def sri(algorithm: str, data: bytes = DATA) -> str:
    """An SRI entry of ``data``."""
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def body(name: str = "pkg", version: str = "1.0.0", data: bytes = DATA) -> dict[str, Any]:
    """A publish body shaped as npm 11 sends it (attachment key carries the full name)."""
    return publish_body(name, version, data, readme="# hi")


def test_npm_body_parses() -> None:
    """A valid body gives its versions, decoded tarball bytes and dist-tags."""
    publication = parse_publication("pkg", body())
    assert publication.name == "pkg"
    assert list(publication.versions) == ["1.0.0"]
    assert publication.versions["1.0.0"]["readme"] == "# hi"
    assert publication.tarballs == {"1.0.0": DATA}
    assert publication.tags == {"latest": "1.0.0"}


def test_scoped_attachment_key_is_matched_by_basename() -> None:
    """The scoped attachment key "@s/n-1.0.0.tgz" is accepted for package @s/n."""
    given = body("@s/n")
    assert list(given["_attachments"]) == ["@s/n-1.0.0.tgz"]
    assert parse_publication("@s/n", given).tarballs == {"1.0.0": DATA}


def test_missing_dist_tags_give_no_tags() -> None:
    """A body without dist-tags parses with no tags."""
    given = body()
    del given["dist-tags"]
    assert parse_publication("pkg", given).tags == {}


@pytest.mark.parametrize("length", [len(DATA) + 1, len(DATA) - 1, 0])
def test_length_mismatch_is_an_integrity_error(length: object) -> None:
    """An attachment whose declared length is not its decoded size is refused."""
    given = body()
    given["_attachments"]["pkg-1.0.0.tgz"]["length"] = length
    with pytest.raises(IntegrityMismatch, match="length"):
        parse_publication("pkg", given)


def test_sha1_mismatch_is_an_integrity_error() -> None:
    """A shasum that is not the sha1 of the bytes is refused."""
    given = body()
    given["versions"]["1.0.0"]["dist"]["shasum"] = hashlib.sha1(b"other").hexdigest()
    with pytest.raises(IntegrityMismatch, match="sha1"):
        parse_publication("pkg", given)


def test_sha512_mismatch_is_an_integrity_error() -> None:
    """An integrity that is not the sha512 of the bytes is refused even when sha1 matches."""
    given = body()
    given["versions"]["1.0.0"]["dist"]["integrity"] = sri("sha512", b"other")
    with pytest.raises(IntegrityMismatch, match="sha512"):
        parse_publication("pkg", given)


def test_uppercase_shasum_is_accepted() -> None:
    """The shasum is compared case-insensitively."""
    given = body()
    given["versions"]["1.0.0"]["dist"]["shasum"] = hashlib.sha1(DATA).hexdigest().upper()
    assert parse_publication("pkg", given).tarballs["1.0.0"] == DATA


@pytest.mark.parametrize("data", ["not base64!", "QUJD\n", "QUJDRA", 42, None, ""])
def test_bad_attachment_data_is_invalid_input(data: object) -> None:
    """Attachment data that is not strict, non-empty base64 text is refused."""
    given = body()
    given["_attachments"]["pkg-1.0.0.tgz"]["data"] = data
    del given["_attachments"]["pkg-1.0.0.tgz"]["length"]
    with pytest.raises(InvalidInput):
        parse_publication("pkg", given)


def test_missing_attachment_is_invalid_input() -> None:
    """A body with no attachment for its version is refused."""
    given = body()
    given["_attachments"] = {"pkg-9.9.9.tgz": given["_attachments"]["pkg-1.0.0.tgz"]}
    with pytest.raises(InvalidInput, match="no attachment"):
        parse_publication("pkg", given)


@pytest.mark.parametrize("attachments", [None, {}, [], "x"])
def test_absent_attachments_are_invalid_input(attachments: object) -> None:
    """A body whose _attachments is missing, empty or not an object is refused."""
    given = body()
    given["_attachments"] = attachments
    with pytest.raises(InvalidInput, match="_attachments"):
        parse_publication("pkg", given)


@pytest.mark.parametrize(
    ("field", "value"), [("name", "other"), ("_id", "other"), ("name", None)]
)
def test_name_mismatch_is_invalid_input(field: str, value: object) -> None:
    """A body whose name or _id differs from the URL's package is refused."""
    given = body()
    given[field] = value
    with pytest.raises(InvalidInput, match="name"):
        parse_publication("pkg", given)


@pytest.mark.parametrize(("field", "value"), [("name", "other"), ("version", "2.0.0")])
def test_manifest_naming_another_version_is_invalid_input(field: str, value: str) -> None:
    """A version whose manifest names another package or version is refused."""
    given = body()
    given["versions"]["1.0.0"][field] = value
    with pytest.raises(InvalidInput, match="manifest"):
        parse_publication("pkg", given)


def test_manifest_without_checksums_is_invalid_input() -> None:
    """A version with neither dist.integrity nor dist.shasum is refused."""
    given = body()
    given["versions"]["1.0.0"]["dist"] = {"tarball": "x"}
    with pytest.raises(InvalidInput, match="dist"):
        parse_publication("pkg", given)


def test_bad_version_key_is_invalid_input() -> None:
    """A version key that is not strict semver is refused."""
    given = body()
    given["versions"]["v1"] = given["versions"].pop("1.0.0")
    with pytest.raises(InvalidInput, match="version"):
        parse_publication("pkg", given)


@pytest.mark.parametrize("value", [None, [], "body", 42, b"{}"])
def test_non_object_body_is_invalid_input(value: object) -> None:
    """A body that is not a JSON object is refused."""
    with pytest.raises(InvalidInput, match="object"):
        parse_publication("pkg", value)


@pytest.mark.parametrize("tags", [{"1.0": "1.0.0"}, {"latest": "^1.0.0"}, {"latest": 1}, "latest"])
def test_bad_dist_tags_are_invalid_input(tags: object) -> None:
    """Range-like tag names, tags not naming a version, and non-object dist-tags are refused."""
    given = body()
    given["dist-tags"] = tags
    with pytest.raises(InvalidInput):
        parse_publication("pkg", given)


def test_integrity_of_is_npm_sha512() -> None:
    """integrity_of gives the sha512 SRI string npm writes."""
    assert integrity_of(DATA) == sri("sha512")


@pytest.mark.parametrize(
    "integrity",
    [sri("sha512"), sri("sha1"), sri("sha256"), sri("sha384"),
     f"{sri('sha1')} {sri('sha512')}", f"{sri('sha512')}?opt", f"md5-abc {sri('sha512')}",
     f"  {sri('sha512')}\n"],
)
def test_integrity_matches_known_hashes(integrity: str) -> None:
    """An SRI string whose known hashes all match the bytes matches."""
    assert integrity_matches(DATA, integrity) is True


@pytest.mark.parametrize(
    "integrity",
    [sri("sha512", b"x"), f"{sri('sha1')} {sri('sha512', b'x')}", f"{sri('sha512', b'x')} {sri('sha1')}",
     "md5-abc", "sha512", "", "SHA512-" + sri("sha512")[7:], "sha3-abc"],
)
def test_integrity_does_not_match(integrity: str) -> None:
    """A wrong hash among several, or only unknown algorithms, means no match."""
    assert integrity_matches(DATA, integrity) is False
