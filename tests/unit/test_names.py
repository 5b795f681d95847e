"""Package names, versions, dist-tags, tarball file names, storage keys and request paths."""

from __future__ import annotations

import pytest

from nopard.domain import names
from nopard.domain.errors import InvalidInput, NotFound
from nopard.domain.names import PackagePath, parse_package_path

# Names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["left-pad", "a", "lodash.merge", "@acme/lib", "@a-b.c~d/x.y-z", "x" * 214, "0"]
)
def test_valid_names_are_returned(name: str) -> None:
    """Ordinary, dotted, scoped and 214-character names pass unchanged."""
    assert names.validate_name(name) == name


def test_scoped_name_up_to_214_characters_counts_the_scope() -> None:
    """The 214-character limit applies to the whole scoped name, scope included."""
    name = "@s/" + "n" * 211
    assert names.validate_name(name) == name
    with pytest.raises(InvalidInput, match="214"):
        names.validate_name(name + "n")


def test_name_over_214_characters_is_refused() -> None:
    """A 215-character name is refused with a message giving the limit."""
    with pytest.raises(InvalidInput, match="longer than 214"):
        names.validate_name("x" * 215)


@pytest.mark.parametrize("name", ["", None, 42])
def test_missing_name_is_refused(name: object) -> None:
    """An empty or non-string name is reported as missing."""
    with pytest.raises(InvalidInput, match="missing"):
        names.validate_name(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".hidden", "period"), ("_private", "underscore"), ("@s/.n", "period"), ("node_modules", "not a valid"),
        ("favicon.ico", "not a valid"), ("Node_Modules", "not a valid"), ("a/b", "'/'"), ("@s", "missing"),
        ("@s/", "missing"), ("@/n", "scope"), ("@s/n/x", "'/'"), ("a b", "may hold only"),
        ("a%20b", "may hold only"), ("a:b", "may hold only"), ("x@y", "'@'"), ("a@b", "'@'"),
        ("é", "may hold only"), ("..", "period"), ("a\\b", "may hold only"), ("@../x", "scope"),
        ("@./x", "scope"), ("-", "path segment"), ("@s%2fn", "missing"), ("@S/n", "lowercase"),
        ("@Acme/lib", "lowercase"),
    ],
)
def test_names_npm_never_accepts_are_refused_saying_why(name: str, why: str) -> None:
    """What npm refuses even for old packages is refused, with npm's reason in the message."""
    with pytest.raises(InvalidInput, match=why):
        names.validate_name(name)


@pytest.mark.parametrize(
    "name",
    ["React", "JSONStream", "JSONStream-x", "@s/Upper", "it's(ok)!*", "-x-y", "--lead", "@scope/_x",
     "@con/x", "nul.x", "con", "@_s/n", "@.s/n", "@s/-x", "a~b", "@s/a~b"],
)
def test_names_valid_for_old_packages_are_accepted(name: str) -> None:
    """Names npm accepts for old packages (uppercase, ~'!()*, device names, leading '-') are valid here.

    They are published, served and installed alike (legacy registries, imports, mirrors).
    """
    assert names.validate_name(name) == name
    assert names.name_problem(name) is None


@pytest.mark.parametrize("name", ["string_decoder", "spdx_license_ids", "@s/a_b"])
def test_underscore_inside_a_name_is_valid(name: str) -> None:
    """An underscore after the first character is valid (string_decoder is a real package)."""
    assert names.validate_name(name) == name


def test_scoped_bare_name_may_start_with_underscore() -> None:
    """npm accepts @s/_n (the leading-_ rule is on the whole name), so nopard must too."""
    assert names.validate_name("@s/_n") == "@s/_n"


def test_unscoped_drops_the_scope() -> None:
    """unscoped gives the part after the scope, and plain names unchanged."""
    assert (names.unscoped("@s/n"), names.unscoped("n")) == ("n", "n")


# Versions and tags ----------------------------------------------------------


@pytest.mark.parametrize(
    "version",
    ["0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-0.3.7",
     "1.0.0-x-y.7.z.92", "1.0.0+build.1", "1.0.0-rc.1+exp.sha.5114f85", "1.0.0-a-"],
)
def test_strict_semver_versions_pass(version: str) -> None:
    """Strict semver 2.0 versions, with prerelease and build parts, are accepted."""
    assert names.validate_version(version) == version
    assert names.is_version(version)


@pytest.mark.parametrize(
    "version",
    ["", "1", "1.2", "v1.2.3", "=1.2.3", " 1.2.3", "1.2.3 ", "01.2.3", "1.02.3", "1.2.03",
     "1.2.3-01", "1.2.3-", "1.2.3-a..b", "1.2.3+", "1.2.3+a..b", "1.2.3.4", "^1.2.3",
     "1.2.x", "1.2.3-é", "1.0.0-" + "a" * 300, None],
)
def test_loose_or_bad_versions_are_refused(version: object) -> None:
    """Loose forms (v prefix, leading zeros, ranges, empty parts) and overlong versions are refused."""
    with pytest.raises(InvalidInput):
        names.validate_version(version)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["1.2", "v1.2.3", "^1.2.3", "latest", "", None])
def test_is_version_is_false_for_non_versions(text: object) -> None:
    """is_version answers False (never raises) for ranges, tags and non-strings."""
    assert names.is_version(text) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("tag", ["latest", "beta", "next-2", "v-next", "canary.1", "rc_1", "x-beta"])
def test_ordinary_tags_pass(tag: str) -> None:
    """Word-like dist-tags are accepted."""
    assert names.validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag", ["1", "1.2.3", "v1", "v1.2", "=1", "~1", "1.x", "x", "X", "vx", "x.x", "X.x.x"]
)
def test_range_like_tags_are_refused(tag: str) -> None:
    """A tag semver would read as a range (semver.validRange is not null) is refused."""
    with pytest.raises(InvalidInput):
        names.validate_tag(tag)


@pytest.mark.parametrize("tag", ["", "a b", "a/b", "^1", ">=1", "a||b", "t" * 101, None])
def test_tags_with_bad_characters_are_refused(tag: object) -> None:
    """Empty, overlong or non-URL-safe tags are refused."""
    with pytest.raises(InvalidInput):
        names.validate_tag(tag)  # type: ignore[arg-type]


# Tarball file names and storage keys ------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "filename"),
    [("n", "1.0.0", "n-1.0.0.tgz"), ("@s/n", "1.0.0-rc.1", "n-1.0.0-rc.1.tgz")],
)
def test_tarball_filename_is_conventional(name: str, version: str, filename: str) -> None:
    """The tarball file name is <unscoped>-<version>.tgz, and validates back."""
    assert names.tarball_filename(name, version) == filename
    assert names.validate_tarball_filename(name, filename) == filename


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("n", "m-1.0.0.tgz"), ("n", "n-1.0.tgz"), ("n", "n-1.0.0.tar.gz"), ("n", "n-1.0.0"),
        ("n", "n-bar-1.0.0.tgz"), ("@s/n", "@s/n-1.0.0.tgz"), ("@s/n", "s-1.0.0.tgz"),
        ("n", "n-../../x.tgz"), ("n", "../n-1.0.0.tgz"), ("n", ""),
    ],
)
def test_foreign_tarball_filenames_are_refused(name: str, filename: str) -> None:
    """A file name of another package, a non-version, or with path parts is refused."""
    with pytest.raises(InvalidInput):
        names.validate_tarball_filename(name, filename)


# Request paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/@s%2fn", "/@s%2Fn", "/@s/n", "/%40s%2fn", "/%40s%2Fn", "/%40s/n", b"/@s%2fn"]
)
def test_every_scoped_spelling_names_the_document(path: str | bytes) -> None:
    """Every spelling clients use for a scoped name gives the same document path."""
    assert parse_package_path(path) == PackagePath("@s/n", "document")


def test_unscoped_document_path() -> None:
    """/<name> names the package's document."""
    assert parse_package_path("/left-pad") == PackagePath("left-pad", "document")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/n/1.0.0", PackagePath("n", "version", "1.0.0")),
        ("/n/latest", PackagePath("n", "version", "latest")),
        ("/@s%2fn/1.0.0", PackagePath("@s/n", "version", "1.0.0")),
        ("/@s/n/beta", PackagePath("@s/n", "version", "beta")),
        ("/n/-/n-1.0.0.tgz", PackagePath("n", "tarball", "n-1.0.0.tgz")),
        ("/@s/n/-/n-1.0.0.tgz", PackagePath("@s/n", "tarball", "n-1.0.0.tgz")),
        ("/@s%2fn/-/n-1.0.0.tgz", PackagePath("@s/n", "tarball", "n-1.0.0.tgz")),
        ("/%40s%2Fn/-/n-2.0.0-rc.1.tgz", PackagePath("@s/n", "tarball", "n-2.0.0-rc.1.tgz")),
        ("/n/-rev/3-abc", PackagePath("n", "revision", "3-abc")),
        ("/@s%2fn/-rev/1-x", PackagePath("@s/n", "revision", "1-x")),
        ("/@s/n/-rev/undefined", PackagePath("@s/n", "revision", "undefined")),
    ],
)
def test_version_tarball_and_revision_paths(path: str, expected: PackagePath) -> None:
    """Version/tag, tarball and -rev paths parse to their kind and argument, scoped or not."""
    assert parse_package_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/", "", "/@s", "/@s/", "/n/1.0.0/extra", "/n/-rev/3-abc/x",
        "/n//1.0.0", "/@s/n/-/@s/n-1.0.0.tgz", "/n/-/n-1.0.0.tgz/x",
    ],
)
def test_malformed_package_paths_are_refused(path: str) -> None:
    """Empty names, missing arguments, extra segments and foreign tarballs are refused."""
    with pytest.raises(InvalidInput):
        parse_package_path(path)


@pytest.mark.parametrize(
    "path", ["/n/-/m-1.0.0.tgz", "/pkg/-/other-1.0.0.tgz", "/n/-/n-1.0.tgz", "/@s/n/-/s-1.0.0.tgz",
             "/n/-/m-1.0.0.tgz/-rev/1-x"],
)
def test_a_tarball_of_another_package_is_not_found(path: str) -> None:
    """A tarball path whose file is not one of the package's names a tarball nopard does not hold: 404."""
    with pytest.raises(NotFound, match="tarball not found"):
        parse_package_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "/..", "/../etc/passwd", "/%2e%2e", "/%2e%2e/etc/passwd", "/%2E%2E%2fetc%2fpasswd",
        "/@s/..", "/@s%2f%2e%2e", "/n/-/..%2f..%2fetc%2fpasswd", "/n/-/%2e%2e", "/n/-/..",
        "/n%00", "/n/-/n-1.0.0.tgz%00", "/n%00/1.0.0",
        "/n%5c..%5cx", "/..%5c..%5cetc", "/n/-/..%5cn-1.0.0.tgz",
        "/%ff", "/n%c3", "/n/%ff", "/n/-/n-1.0.0.tgz%fe",
        "//etc/passwd", "//etc",
    ],
)


def test_hostile_paths_are_refused(path: str) -> None:
    """Dot segments, NUL, backslashes, invalid UTF-8 and absolute-looking // paths are refused."""
    with pytest.raises(InvalidInput):
        parse_package_path(path)


@pytest.mark.parametrize(
    "url, filename",
    [
        ("http://127.0.0.1:5984/p/-/p-1.0.0.tgz", "p-1.0.0.tgz"),
        ("http://127.0.0.1:5984/p/-/p-1.0.0.tgz?token=x", "p-1.0.0.tgz"),
        ("http://127.0.0.1:5984/p/-/p-1.0.0.tgz#frag", "p-1.0.0.tgz"),
        ("http://127.0.0.1:5984/@s/n/-/n-1.0.0.tgz/", "n-1.0.0.tgz"),
        ("n-1.0.0.tgz", "n-1.0.0.tgz"),
        ("", ""),
    ],
)
def test_tarball_file_from_url(url, filename):
    """The file name is the URL's last path segment, without query or fragment."""
    assert names.tarball_file_from_url(url) == filename
