"""Reading and verifying publish bodies as npm 11 sends them."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nopard.domain import names
from nopard.domain.errors import IntegrityMismatch, InvalidInput
from nopard.domain.integrity import integrity_matches, integrity_of
from nopard.domain.publication import parse_publication
from tests.support import clients_bin, publish_body

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


# Versions and tags npm cannot use (issue 13, item 12) ------------------------

@pytest.mark.parametrize("version", ["9007199254740993.0.0", "1.9007199254740992.0", "0.0.99999999999999999999"])
def test_versions_with_numbers_npm_cannot_hold_are_refused(version: str) -> None:
    """A major, minor or patch above 2^53-1 is refused at publish, saying so."""
    given_body = publish_body("pkg", version, DATA)
    with pytest.raises(InvalidInput, match="2\\^53-1"):
        parse_publication("pkg", given_body)


def test_largest_safe_version_is_accepted() -> None:
    """2^53-1 itself is a number npm reads, so the version publishes."""
    version = f"{2**53 - 1}.0.0"
    assert list(parse_publication("pkg", publish_body("pkg", version, DATA)).versions) == [version]


@pytest.mark.parametrize("tag", ["..", ".", "__proto__", "constructor", "hasOwnProperty", "1.x", "v1", "01",
                                 "1.2.3beta", "~1.2", "1.0.0-rc.1", "", "a/b", "a b", " latest"])
def test_publish_with_a_tag_npm_cannot_use_is_refused(tag: str) -> None:
    """Path segments, object properties, semver ranges, empty tags, '/' and spaces: 400, saying why."""
    given_body = publish_body("pkg", "1.0.0", DATA)
    given_body["dist-tags"] = {tag: "1.0.0"}
    with pytest.raises(InvalidInput, match="invalid dist-tag"):
        parse_publication("pkg", given_body)


def test_publish_with_a_tag_naming_an_unreadable_version_is_refused() -> None:
    """A dist-tag in the body pointing at a version past 2^53-1 is refused."""
    given_body = body()
    given_body["dist-tags"] = {"next": "9007199254740993.0.0"}
    with pytest.raises(InvalidInput):
        parse_publication("pkg", given_body)


@given(st.text(min_size=1, max_size=20))
@settings(max_examples=300, deadline=None)
def test_a_tag_is_refused_or_safe(tag: str) -> None:
    """Whatever the text, an accepted tag is URL-safe, not all dots, not an object key, not a version."""
    if names.tag_problem(tag) is None:
        assert all(c.isascii() and (c.isalnum() or c in "._~-") for c in tag)
        assert tag.strip(".") and tag not in ("__proto__", "constructor") and not names.is_version(tag)


@given(st.integers(0, 2**60), st.integers(0, 2**60), st.integers(0, 2**60))
@settings(max_examples=200, deadline=None)
def test_versions_are_readable_exactly_up_to_2_53(major: int, minor: int, patch: int) -> None:
    """A version is accepted exactly when all three numbers fit in a JavaScript safe integer."""
    fits = max(major, minor, patch) <= 2**53 - 1
    assert names.is_version(f"{major}.{minor}.{patch}") is fits


@given(st.from_regex(r"[0-9]{1,3}(\.([0-9]{1,3}|x|X)){0,2}", fullmatch=True))
def test_every_version_and_x_range_is_refused_as_a_tag(text: str) -> None:
    """Numbers and x-ranges (1, 1.2, 1.x, 1.2.3) are never tags."""
    assert names.tag_problem(text) is not None


# Pieces of which npm's range grammar is made, within the tag alphabet.
_PIECES = ["", "v", "~", "1", "0", "01", "x", "X", ".", "-", "beta", "b1", "_", "2"]


def _tag_corpus() -> list[str]:
    candidates = {"".join(parts) for size in range(1, 5) for parts in itertools.product(_PIECES, repeat=size)}
    return sorted(t for t in candidates if t and names.tag_problem(t) != names.tag_problem("a b"))


def test_range_rule_agrees_with_npm_semver() -> None:
    """Over thousands of candidate tags, a tag is refused as a range exactly when npm's own semver
    (validRange, strict or loose as npm-package-arg reads specs) parses it as one."""
    semver = clients_bin().parent / "npm" / "node_modules" / "semver"
    node = shutil.which("node")
    # Not skipped when missing: scripts/test installs both, and a skip would hide the comparison.
    assert node is not None and semver.exists(), f"node and npm's semver ({semver}) are installed by scripts/test"
    corpus = _tag_corpus()
    script = ("const s=require(process.argv[1]);const t=JSON.parse(require('fs').readFileSync(0));"
              "process.stdout.write(JSON.stringify(t.map(x=>s.validRange(x)!==null||s.validRange(x,true)!==null)))")
    ranges = json.loads(subprocess.run([node, "-e", script, str(semver)], input=json.dumps(corpus).encode(),
                                       capture_output=True, check=True).stdout)
    ours = [names.tag_problem(t) is not None and "semver range" in str(names.tag_problem(t)) for t in corpus]
    disagree = [(t, npm) for t, npm, mine in zip(corpus, ranges, ours, strict=True)
                if npm != mine and not (t.strip(".") == "")]
    assert len(corpus) > 1000 and disagree == []
