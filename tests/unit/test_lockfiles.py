"""Reading the registry packages pinned by npm, yarn 1 and pnpm lockfiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from nopard.domain.lockfiles import Locked, LockfileError, parse_lockfile, read_lockfile

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "lockfiles"

SMALL = {("@types/estree", "1.0.10"), ("debug", "4.4.3"), ("ms", "2.1.3"), ("semver", "7.8.6")}
ALIAS = {("debug", "2.6.9"), ("ms", "2.0.0"), ("ms", "2.1.3")}
PEER = {("@keyv/bigmap", "1.3.1"), ("@keyv/serialize", "1.1.1"), ("acorn", "8.19.0"),
        ("acorn-jsx", "5.3.2"), ("hashery", "1.5.1"), ("hookified", "1.15.1"), ("keyv", "5.6.0")}
ONLY_SEMVER = {("semver", "7.8.6")}
EXPECTED = {
    "package-lock.small.v1.json": SMALL,
    "package-lock.small.v2.json": SMALL,
    "package-lock.small.v3.json": SMALL,
    "npm-shrinkwrap.small.v3.json": SMALL,
    "package-lock.alias.v1.json": ALIAS,
    "package-lock.alias.v3.json": ALIAS,
    "package-lock.local.v3.json": ONLY_SEMVER,
    "package-lock.git.v1.json": ONLY_SEMVER,
    "package-lock.git.v3.json": ONLY_SEMVER,
    "yarn.small.lock": SMALL,
    "yarn.alias.lock": ALIAS,
    "yarn.multi.lock": {("debug", "4.4.3"), ("ms", "2.1.3")},
    "yarn.local.lock": ONLY_SEMVER,
    "yarn.git.lock": ONLY_SEMVER,
    "pnpm-lock.small.v5.yaml": SMALL,
    "pnpm-lock.small.v6.yaml": SMALL,
    "pnpm-lock.small.v9.yaml": SMALL,
    "pnpm-lock.alias.v5.yaml": ALIAS,
    "pnpm-lock.alias.v6.yaml": ALIAS,
    "pnpm-lock.alias.v9.yaml": ALIAS,
    "pnpm-lock.peer.v5.yaml": PEER,
    "pnpm-lock.peer.v6.yaml": PEER,
    "pnpm-lock.peer.v9.yaml": PEER,
    "pnpm-lock.local.v5.yaml": ONLY_SEMVER,
    "pnpm-lock.local.v6.yaml": ONLY_SEMVER,
    "pnpm-lock.local.v9.yaml": ONLY_SEMVER,
    "pnpm-lock.git.v5.yaml": ONLY_SEMVER,
    "pnpm-lock.git.v9.yaml": ONLY_SEMVER,
    "pnpm-lock.named.v9.yaml": ONLY_SEMVER,
}


def pairs(locked: list[Locked]) -> set[tuple[str, str]]:
    return {(entry.name, entry.version) for entry in locked}


# Real fixtures ----------------------------------------------------------------


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_fixture_gives_its_locked_packages(filename: str) -> None:
    """Each real lockfile yields exactly the registry packages its client installed."""
    assert pairs(read_lockfile(FIXTURES / filename)) == EXPECTED[filename]


def test_every_fixture_has_an_expectation() -> None:
    """No lockfile in tests/data/lockfiles goes untested."""
    assert {p.name for p in FIXTURES.iterdir() if p.name != "README.md"} == set(EXPECTED)


def test_result_is_sorted_and_deduplicated() -> None:
    """ms@2.1.3, locked under two yarn entries (range and alias), comes back once, in order."""
    result = read_lockfile(FIXTURES / "yarn.multi.lock")
    assert result == [Locked("debug", "4.4.3"), Locked("ms", "2.1.3")]


@pytest.mark.parametrize("filename", ["package-lock.alias.v1.json", "package-lock.alias.v3.json",
                                      "yarn.alias.lock", "pnpm-lock.alias.v9.yaml"])
def test_alias_resolves_to_the_real_name(filename: str) -> None:
    """"my-ms": "npm:ms@2.1.3" is returned as ms 2.1.3, never under the alias."""
    result = read_lockfile(FIXTURES / filename)
    assert "my-ms" not in {entry.name for entry in result} and Locked("ms", "2.1.3") in result


@pytest.mark.parametrize("filename", ["pnpm-lock.peer.v5.yaml", "pnpm-lock.peer.v6.yaml"])
def test_pnpm_peer_suffix_is_stripped(filename: str) -> None:
    """/acorn-jsx/5.3.2_acorn@8.19.0 and /acorn-jsx@5.3.2(acorn@8.19.0) give acorn-jsx 5.3.2."""
    result = read_lockfile(FIXTURES / filename)
    assert Locked("acorn-jsx", "5.3.2") in result and Locked("@keyv/bigmap", "1.3.1") in result


@pytest.mark.parametrize("filename", ["package-lock.local.v3.json", "yarn.local.lock",
                                      "pnpm-lock.local.v5.yaml", "pnpm-lock.local.v9.yaml"])
def test_file_dependencies_are_skipped(filename: str) -> None:
    """A file: directory and a file: tarball are skipped although both carry version 1.0.0."""
    assert {e.name for e in read_lockfile(FIXTURES / filename)}.isdisjoint({"local-pkg", "vendored"})


@pytest.mark.parametrize("filename", ["package-lock.git.v1.json", "package-lock.git.v3.json",
                                      "yarn.git.lock", "pnpm-lock.git.v5.yaml", "pnpm-lock.git.v9.yaml"])
def test_git_dependency_is_skipped(filename: str) -> None:
    """A git dependency (whose package.json says 1.0.0) is not asked of the registry."""
    assert "gitdep" not in {entry.name for entry in read_lockfile(FIXTURES / filename)}


def test_pnpm_named_registry_package_is_skipped() -> None:
    """pnpm's ms@work:2.1.3 comes from another registry than nopard's, so it is left out."""
    assert Locked("ms", "2.1.3") not in read_lockfile(FIXTURES / "pnpm-lock.named.v9.yaml")


# Small inline lockfiles -----------------------------------------------------------


def test_npm_v3_bundled_and_link_entries_are_skipped() -> None:
    """inBundle and link entries of a v3 packages map are not fetched on their own."""
    text = """{"lockfileVersion": 3, "packages": {
      "": {"name": "root"},
      "node_modules/a": {"version": "1.0.0", "resolved": "https://r.example/a/-/a-1.0.0.tgz"},
      "node_modules/a/node_modules/b": {"version": "2.0.0", "inBundle": true},
      "node_modules/ws": {"resolved": "packages/ws", "link": true},
      "packages/ws": {"name": "ws", "version": "3.0.0"}}}"""
    assert pairs(parse_lockfile("package-lock.json", text)) == {("a", "1.0.0")}


def test_yarn_scoped_alias_resolves_to_the_real_scoped_name() -> None:
    """"est@npm:@types/estree@^1.0.0" is @types/estree."""
    text = '"est@npm:@types/estree@^1.0.0":\n  version "1.0.10"\n'
    assert pairs(parse_lockfile("yarn.lock", text)) == {("@types/estree", "1.0.10")}


def test_yarn_github_shorthand_is_skipped() -> None:
    """An entry for user/repo resolved through a codeload URL is not a registry package."""
    text = ('foo@user/foo#main:\n  version "1.0.0"\n'
            '  resolved "https://codeload.example/user/foo/tar.gz/0123abc"\n')
    assert parse_lockfile("yarn.lock", text) == []


def test_pnpm_block_style_git_resolution_is_skipped() -> None:
    """A resolution spread over several lines (type: git) is recognised too."""
    text = ("lockfileVersion: 5.1\npackages:\n  /a/1.0.0:\n    resolution:\n"
            "      integrity: sha1-x\n  /b/1.0.0:\n    dev: false\n    resolution:\n"
            "      commit: abc\n      repo: https://git.example/b.git\n      type: git\n")
    assert pairs(parse_lockfile("pnpm-lock.yaml", text)) == {("a", "1.0.0")}


def test_pnpm_v5_host_prefixed_key_names_the_package() -> None:
    """registry.example/@s/n/1.0.0_p@1.0.0 (another registry than the default) is @s/n 1.0.0."""
    text = "lockfileVersion: 5.4\npackages:\n  registry.example/@s/n/1.0.0_p@1.0.0:\n    dev: true\n"
    assert pairs(parse_lockfile("pnpm-lock.yaml", text)) == {("@s/n", "1.0.0")}


def test_pnpm_later_document_is_read_too() -> None:
    """Packages of every YAML document count (pnpm may prepend one for itself)."""
    text = ("---\nlockfileVersion: '9.0'\npackages:\n  pnpm@10.0.0:\n    resolution: {integrity: x}\n"
            "---\nlockfileVersion: '9.0'\npackages:\n  'a@1.0.0(b@2.0.0)':\n    resolution: {}\n")
    assert pairs(parse_lockfile("pnpm-lock.yaml", text)) == {("pnpm", "10.0.0"), ("a", "1.0.0")}


def test_format_is_recognised_by_content_under_another_name() -> None:
    """A yarn 1 lockfile saved as deps.txt is still read as one."""
    text = "# yarn lockfile v1\n\nms@^2.1.3:\n  version \"2.1.3\"\n"
    assert pairs(parse_lockfile("deps.txt", text)) == {("ms", "2.1.3")}


# Errors -----------------------------------------------------------------------


def test_unknown_file_is_refused_with_its_name() -> None:
    """A file that is no lockfile nopard knows is refused, naming the file."""
    with pytest.raises(LockfileError, match=r"^Gemfile\.lock: not a package-lock\.json"):
        parse_lockfile("Gemfile.lock", "GEM\n  remote: x\n")


def test_malformed_json_is_refused_with_file_and_line() -> None:
    """Broken JSON names the file and the line of the error."""
    with pytest.raises(LockfileError, match=r"^package-lock\.json:3: invalid JSON"):
        parse_lockfile("package-lock.json", '{\n "lockfileVersion": 3,\n "packages": {,}\n}')


def test_json_without_lockfile_version_is_refused() -> None:
    """A package.json passed by mistake is refused: it is not a lockfile."""
    with pytest.raises(LockfileError, match=r"^package-lock\.json: no lockfileVersion"):
        parse_lockfile("package-lock.json", '{"name": "x", "dependencies": {"ms": "^2.0.0"}}')


def test_malformed_yaml_key_is_refused_with_file_and_line() -> None:
    """An unterminated quoted key in pnpm-lock.yaml names the file and line."""
    with pytest.raises(LockfileError, match=r"^pnpm-lock\.yaml:3: unterminated quoted key"):
        parse_lockfile("pnpm-lock.yaml", "lockfileVersion: '9.0'\npackages:\n  '@s/n@1.0.0:\n")


def test_yaml_without_lockfile_version_is_refused() -> None:
    """YAML that never says lockfileVersion is not a pnpm lockfile."""
    with pytest.raises(LockfileError, match=r"^pnpm-lock\.yaml: no lockfileVersion"):
        parse_lockfile("pnpm-lock.yaml", "importers:\n  .: {}\n")


def test_json_in_a_yaml_file_is_refused() -> None:
    """A pnpm-lock.yaml holding JSON is refused at its first line."""
    with pytest.raises(LockfileError, match=r"^pnpm-lock\.yaml:1:"):
        parse_lockfile("pnpm-lock.yaml", '{"lockfileVersion": 3}')


def test_malformed_yarn_entry_is_refused_with_file_and_line() -> None:
    """An entry line that is not 'name@range:' names the file and line."""
    with pytest.raises(LockfileError, match=r"^yarn\.lock:4: expected an entry"):
        parse_lockfile("yarn.lock", '# yarn lockfile v1\n\n\n"debug@4.4.3:\n  version "4.4.3"\n')


def test_yarn_entry_without_version_is_refused() -> None:
    """A yarn entry with no version line is malformed."""
    with pytest.raises(LockfileError, match=r"^yarn\.lock:1: entry has no version"):
        parse_lockfile("yarn.lock", 'ms@^2.1.3:\n  resolved "https://r.example/ms/-/ms-2.1.3.tgz"\n')


def test_yarn_berry_lockfile_is_refused() -> None:
    """A yarn 2+ lockfile is refused with a message saying only yarn 1 is read."""
    with pytest.raises(LockfileError, match=r"^yarn\.lock: a yarn 2\+ lockfile"):
        parse_lockfile("yarn.lock", '__metadata:\n  version: 8\n\n"ms@npm:2.1.3":\n  version: 2.1.3\n')


def test_invalid_package_name_is_refused() -> None:
    """A locked package whose name nopard would refuse raises, naming the file."""
    text = '{"lockfileVersion": 3, "packages": {"node_modules/Bad Name": {"version": "1.0.0"}}}'
    message = r"^package-lock\.json: node_modules/Bad Name: invalid package name"
    with pytest.raises(LockfileError, match=message):
        parse_lockfile("package-lock.json", text)


def test_unreadable_file_is_refused_with_its_path(tmp_path: Path) -> None:
    """A missing file is a LockfileError naming the path, not an OSError."""
    with pytest.raises(LockfileError, match="missing.json: cannot read"):
        read_lockfile(tmp_path / "missing.json")
