"""npm's package-management commands against a real nopard: dist-tag, deprecate,
unpublish, owner, star and access; and the same routes refusing bad input over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import NopardServer, Npm, Response, files_under, make_package, publish_body


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NopardServer]:
    server = NopardServer(tmp_path_factory.mktemp("nopard"), {"NOPARD_MAX_USERS": "5"})
    server.start()
    yield server
    server.stop()


def logged_in(registry: NopardServer, home: Path, user: str) -> Npm:
    npm = Npm(registry.url, home)
    status, output = npm.login("adduser", user, f"pw {user}", f"{user}@example.com")
    assert status == 0, output
    return npm


@pytest.fixture(scope="module")
def alice(registry: NopardServer, tmp_path_factory: pytest.TempPathFactory) -> Npm:
    return logged_in(registry, tmp_path_factory.mktemp("alice"), "alice")


@pytest.fixture(scope="module")
def bob(registry: NopardServer, tmp_path_factory: pytest.TempPathFactory) -> Npm:
    return logged_in(registry, tmp_path_factory.mktemp("bob"), "bob")


def publish(npm: Npm, work: Path, name: str, *versions: str) -> None:
    for version in versions:
        npm.run("publish", cwd=make_package(work / name.replace("/", "+") / version, name, version))


def served(registry: NopardServer, name: str) -> dict[str, Any]:
    answer = registry.request("GET", "/" + name.replace("/", "%2f"))
    assert answer.status == 200, answer.body
    return answer.json()


def failed(result: Any, text: str) -> None:
    assert result.returncode != 0
    assert text in result.stderr, result.stderr


def test_dist_tag_add_ls_rm(registry: NopardServer, alice: Npm, bob: Npm, tmp_path: Path) -> None:
    """A maintainer adds, lists and removes tags of a scoped package; others get 403."""
    publish(alice, tmp_path, "@acme/tags", "1.0.0", "1.1.0")
    assert alice.run("dist-tag", "add", "@acme/tags@1.0.0", "stable").stdout == "+stable: @acme/tags@1.0.0\n"
    assert alice.run("dist-tag", "ls", "@acme/tags").stdout == "latest: 1.1.0\nstable: 1.0.0\n"
    assert served(registry, "@acme/tags")["dist-tags"] == {"latest": "1.1.0", "stable": "1.0.0"}
    failed(bob.run("dist-tag", "add", "@acme/tags@1.1.0", "stable", check=False), "403")
    assert alice.run("dist-tag", "rm", "@acme/tags", "stable").stdout == "-stable: @acme/tags@1.0.0\n"
    assert served(registry, "@acme/tags")["dist-tags"] == {"latest": "1.1.0"}
    failed(alice.run("dist-tag", "rm", "@acme/tags", "latest", check=False), "latest")


def test_deprecate_and_undeprecate(registry: NopardServer, alice: Npm, tmp_path: Path) -> None:
    """`npm deprecate pkg@range msg` marks the matching versions; "" removes the mark."""
    publish(alice, tmp_path, "old-thing", "1.0.0", "1.1.0", "2.0.0")
    alice.run("deprecate", "old-thing@<2", "use 2.x")
    versions = served(registry, "old-thing")["versions"]
    assert {v: m.get("deprecated") for v, m in versions.items()} == {
        "1.0.0": "use 2.x", "1.1.0": "use 2.x", "2.0.0": None}
    abbreviated = registry.request("GET", "/old-thing", headers={"Accept": "application/vnd.npm.install-v1+json"})
    assert abbreviated.json()["versions"]["1.0.0"]["deprecated"] == "use 2.x"
    alice.run("deprecate", "old-thing@1.0.0", "")
    versions = served(registry, "old-thing")["versions"]
    assert "deprecated" not in versions["1.0.0"] and versions["1.1.0"]["deprecated"] == "use 2.x"
    assert set(versions) == {"1.0.0", "1.1.0", "2.0.0"}


def test_unpublish_one_version_then_republish_is_refused(
    registry: NopardServer, alice: Npm, tmp_path: Path
) -> None:
    """The version, its tags and tarball go; latest falls back; the number stays retired."""
    publish(alice, tmp_path, "@acme/gone", "1.0.0", "1.1.0")
    assert alice.run("unpublish", "@acme/gone@1.1.0").stdout == "- @acme/gone@1.1.0\n"
    document = served(registry, "@acme/gone")
    assert list(document["versions"]) == ["1.0.0"] and document["dist-tags"] == {"latest": "1.0.0"}
    assert registry.request("GET", "/@acme/gone/-/gone-1.1.0.tgz").status == 404
    assert not (registry.registry / "packages/@acme/gone/tarballs/gone-1.1.0.tgz").exists()
    again = make_package(tmp_path / "again", "@acme/gone", "1.1.0")
    failed(alice.run("publish", cwd=again, check=False), "unpublished")


def test_unpublish_whole_package(registry: NopardServer, alice: Npm, bob: Npm, tmp_path: Path) -> None:
    """`npm unpublish pkg --force` removes document and tarballs; old versions stay retired; the
    name stays alice's for NOPARD_UNPUBLISH_GRACE, so bob's npm publish of it is 403."""
    publish(alice, tmp_path, "whole-pkg", "1.0.0", "1.1.0")
    assert alice.run("unpublish", "whole-pkg", "--force").stdout == "- whole-pkg\n"
    failed(bob.run("publish", cwd=make_package(tmp_path / "b", "whole-pkg", "3.0.0"), check=False), "was unpublished")
    assert registry.request("GET", "/whole-pkg").status == 404
    assert registry.request("GET", "/whole-pkg/-/whole-pkg-1.0.0.tgz").status == 404
    assert files_under(registry.registry / "packages/whole-pkg") == ["unpublished.json"]
    failed(alice.run("publish", cwd=make_package(tmp_path / "a", "whole-pkg", "1.0.0"), check=False), "unpublished")
    publish(alice, tmp_path / "new", "whole-pkg", "2.0.0")
    assert list(served(registry, "whole-pkg")["versions"]) == ["2.0.0"]


def test_owner_ls_add_rm(registry: NopardServer, alice: Npm, bob: Npm, tmp_path: Path) -> None:
    """Owners are listed, added (then may write) and removed; unknown users are refused."""
    publish(alice, tmp_path, "@acme/owned", "1.0.0")
    assert alice.run("owner", "ls", "@acme/owned").stdout == "alice <alice@example.com>\n"
    failed(bob.run("dist-tag", "add", "@acme/owned@1.0.0", "canary", check=False), "403")
    assert alice.run("owner", "add", "bob", "@acme/owned").stdout == "+ bob (@acme/owned)\n"
    assert alice.run("owner", "ls", "@acme/owned").stdout == "alice <alice@example.com>\nbob <bob@example.com>\n"
    bob.run("dist-tag", "add", "@acme/owned@1.0.0", "canary")
    failed(alice.run("owner", "add", "nobody", "@acme/owned", check=False), "404")
    assert alice.run("owner", "rm", "bob", "@acme/owned").stdout == "- bob (@acme/owned)\n"
    document = served(registry, "@acme/owned")
    assert document["maintainers"] == [{"name": "alice", "email": "alice@example.com"}]
    assert list(document["versions"]) == ["1.0.0"]


def test_star_stars_unstar(registry: NopardServer, alice: Npm, bob: Npm, tmp_path: Path) -> None:
    """Any logged-in user stars; `npm stars [user]` lists; unstar removes only their entry."""
    publish(alice, tmp_path, "@acme/shiny", "1.0.0")
    alice.run("star", "@acme/shiny")
    assert bob.run("star", "@acme/shiny").stdout == "(*) @acme/shiny\n"
    assert bob.run("stars").stdout == "@acme/shiny\n"
    assert alice.run("stars", "bob").stdout == "@acme/shiny\n"
    assert served(registry, "@acme/shiny")["users"] == {"alice": True, "bob": True}
    assert bob.run("unstar", "@acme/shiny").stdout == "( ) @acme/shiny\n"
    assert served(registry, "@acme/shiny")["users"] == {"alice": True}
    assert "has not starred" in bob.run("stars").stderr


def test_access_status_and_collaborators(alice: Npm, tmp_path: Path) -> None:
    """A package anyone may install (reads need no login here) is public; maintainers who may publish are
    read-write collaborators."""
    publish(alice, tmp_path, "@acme/acc", "1.0.0")
    assert alice.run("access", "get", "status", "@acme/acc").stdout == "@acme/acc: public\n"
    assert alice.run("access", "list", "collaborators", "@acme/acc").stdout == "alice: read-write\n"
    assert json.loads(alice.run("access", "list", "collaborators", "@acme/acc", "--json").stdout) == {
        "alice": "read-write"}


# Bad input over HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(registry: NopardServer, alice: Npm, bob: Npm) -> dict[str, str]:
    token = registry.token("alice", "pw alice")
    answer = registry.request("PUT", "/@acme%2fhttp", publish_body("@acme/http", "1.0.0"), token=token)
    assert answer.status == 201, answer.body
    answer = registry.request("PUT", "/@acme%2fhttp", publish_body("@acme/http", "1.1.0"), token=token)
    assert answer.status == 201, answer.body
    return {"alice": token, "bob": registry.token("bob", "pw bob")}


@pytest.fixture
def unchanged(registry: NopardServer, tokens: dict[str, str]) -> Iterator[None]:
    """Asserts, after the test, that no package file changed (names or bytes)."""
    packages = registry.registry / "packages"
    before = {p: (packages / p).read_bytes() for p in files_under(packages)}
    yield
    assert {p: (packages / p).read_bytes() for p in files_under(packages)} == before


def refused(answer: Response, status: int, text: str = "") -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert text in answer.json()["error"]


TAGS = "/-/package/@acme%2fhttp/dist-tags"


def document(registry: NopardServer) -> dict[str, Any]:
    return served(registry, "@acme/http")


@pytest.mark.usefixtures("unchanged")
class TestRefused:
    @pytest.mark.parametrize("tag, body, text", [
        ("1.x", '"1.0.0"', "range"), ("v1.0.0", '"1.0.0"', "range"), ("beta", '"9.9.9"', "does not exist"),
        ("beta", "1", "does not exist"), ("beta", '{"v": 1}', "does not exist"), ("beta", '"1.0.', "not valid JSON"),
        ("latest", '""', "does not exist"), ("__proto__", '"1.0.0"', "property"), ("%2e%2e", '"1.0.0"', "path segment"),
        ("1.2.3beta", '"1.0.0"', "semver range"),
    ])
    def test_bad_dist_tags(self, registry: NopardServer, tokens: dict, tag: str, body: str, text: str) -> None:
        refused(registry.request("PUT", f"{TAGS}/{tag}", body, token=tokens["alice"]), 400, text)

    def test_dist_tag_permissions(self, registry: NopardServer, tokens: dict) -> None:
        """401 anonymous or with a revoked token, 403 for a non-maintainer; latest stays."""
        refused(registry.request("PUT", f"{TAGS}/beta", '"1.0.0"'), 401, "log in")
        refused(registry.request("PUT", f"{TAGS}/beta", '"1.0.0"', token="npd_revoked"), 401, "token")
        refused(registry.request("PUT", f"{TAGS}/beta", '"1.0.0"', token=tokens["bob"]), 403, "maintainer")
        refused(registry.request("DELETE", f"{TAGS}/latest", token=tokens["alice"]), 400, "latest")
        refused(registry.request("DELETE", f"{TAGS}/nope", token=tokens["alice"]), 404, "nope")

    def test_mirrored_or_unknown_packages_cannot_change(self, registry: NopardServer, tokens: dict) -> None:
        refused(registry.request("PUT", "/-/package/nothere/dist-tags/beta", '"1.0.0"', token=tokens["alice"]),
                404, "not published on this registry")
        refused(registry.request("DELETE", "/nothere/-rev/1-a", token=tokens["alice"]), 404)

    def test_put_that_drops_every_version(self, registry: NopardServer, tokens: dict) -> None:
        body = {**document(registry), "versions": {}}
        refused(registry.request("PUT", "/@acme%2fhttp", body, token=tokens["alice"]), 400, "every version")

    @pytest.mark.parametrize("change", [
        lambda d: {**d, "versions": []},
        lambda d: {"_id": d["_id"], "_rev": d["_rev"]},
        lambda d: {"_id": d["_id"], "_rev": d["_rev"], "maintainers": []},
        lambda d: {"_id": d["_id"], "_rev": d["_rev"], "maintainers": [{"name": "ghost"}]},
        lambda d: {"_id": d["_id"], "_rev": d["_rev"], "maintainers": "alice"},
        lambda d: {"_id": d["_id"], "_rev": d["_rev"], "users": ["alice"]},
        lambda d: {**d, "versions": {**d["versions"], "1.0.0": {**d["versions"]["1.0.0"], "deprecated": 5}}},
        lambda d: json.dumps([d]),
    ])
    def test_malformed_changes(self, registry: NopardServer, tokens: dict, change: Any) -> None:
        answer = registry.request("PUT", "/@acme%2fhttp", change(document(registry)), token=tokens["alice"])
        refused(answer, 400)

    def test_stale_revision_and_non_maintainer_writes(self, registry: NopardServer, tokens: dict) -> None:
        current = document(registry)
        body = {"_id": current["_id"], "_rev": "1-stale", "maintainers": [{"name": "bob"}]}
        refused(registry.request("PUT", "/@acme%2fhttp/-rev/1-stale", body, token=tokens["alice"]), 409, "revision")
        body["_rev"] = current["_rev"]
        path = f"/@acme%2fhttp/-rev/{current['_rev']}"
        refused(registry.request("PUT", path, body, token=tokens["bob"]), 403, "maintainer")
        refused(registry.request("DELETE", path, token=tokens["bob"]), 403, "maintainer")
        refused(registry.request("DELETE", path), 401)
        tarball_path = f"/@acme/http/-/http-1.0.0.tgz/-rev/{current['_rev']}"
        refused(registry.request("DELETE", tarball_path, token=tokens["alice"]), 400, "published version")

    def test_unknown_user_lookup(self, registry: NopardServer, tokens: dict) -> None:
        refused(registry.request("GET", "/-/user/org.couchdb.user:ghost", token=tokens["alice"]), 404)
        assert registry.request("GET", "/-/user/org.couchdb.user:bob", token=tokens["alice"]).json() == {
            "name": "bob", "email": "bob@example.com"}
