"""Package routes in-process: document and tarball reads, publish, hidden names, the error table."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
import pytest_twisted
from twisted.internet import task

from nopard.domain.prepared import PreparedCache
from nopard.domain.publication import parse_publication
from nopard.local.packages import Registry
from nopard.storage import keys
from nopard.storage.fs import FilesystemStorage
from tests.support import publish_body, tarball_bytes
from tests.unit.route_harness import InProcess, build, run_now


async def published(app: InProcess, name: str = "demo", version: str = "1.0.0", token: str | None = None) -> None:
    """Publish ``name@version`` as ``token``'s user (default: a user named pat)."""
    token = token or await app.user("pat")
    answer = await app.call("PUT", f"/{name}", publish_body(name, version), token=token)
    assert answer.status == 201, answer.body


@pytest_twisted.ensureDeferred
async def test_publish_then_read_the_document(tmp_path: Path) -> None:
    """A version published with PUT is in the document served afterwards, marked LOCAL."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("GET", "/demo")
    assert answer.status == 200
    assert answer.headers["x-nopard-cache"] == "LOCAL"
    assert answer.json()["dist-tags"] == {"latest": "1.0.0"}


@pytest_twisted.ensureDeferred
async def test_published_tarball_comes_back_byte_for_byte(tmp_path: Path) -> None:
    """The tarball of a published version is served as it was sent, cacheable for a year."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("GET", "/demo/-/demo-1.0.0.tgz")
    assert answer.status == 200 and answer.body == tarball_bytes("demo", "1.0.0")
    assert "immutable" in answer.headers["cache-control"]


@pytest_twisted.ensureDeferred
async def test_version_by_tag(tmp_path: Path) -> None:
    """/<name>/latest answers the manifest the tag points at."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("GET", "/demo/latest")
    assert answer.json()["version"] == "1.0.0"


@pytest_twisted.ensureDeferred
async def test_missing_package_is_a_json_404(tmp_path: Path) -> None:
    """A name nobody published (and the upstream lacks) is 404 with a JSON error."""
    answer = await build(tmp_path).call("GET", "/nothing-here")
    assert answer.status == 404 and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_missing_tarball_is_a_json_404(tmp_path: Path) -> None:
    """A tarball of a version never published is 404."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("GET", "/demo/-/demo-9.9.9.tgz")
    assert answer.status == 404 and "error" in answer.json()


HIDING_RULES = {"packages": [{"pattern": "secret-*", "access": ["alice"], "publish": ["alice"]},
                             {"pattern": "**", "access": ["$all"], "publish": ["$all"], "proxy": ["$all"]}]}


@pytest_twisted.ensureDeferred
async def test_hidden_package_answers_as_a_missing_one(tmp_path: Path) -> None:
    """A package the caller may not read gets the same 404 as a name that does not exist."""
    app = build(tmp_path, rules=HIDING_RULES)
    token = await app.user("alice")
    await published(app, "secret-thing", token=token)
    hidden = await app.call("GET", "/secret-thing")
    missing = await app.call("GET", "/secret-other")
    assert hidden.status == missing.status == 404
    assert hidden.json()["error"].replace("thing", "X") == missing.json()["error"].replace("other", "X")


@pytest_twisted.ensureDeferred
async def test_allowed_reader_sees_the_hidden_package(tmp_path: Path) -> None:
    """The user the rule names reads the package the others cannot see."""
    app = build(tmp_path, rules=HIDING_RULES)
    token = await app.user("alice")
    await published(app, "secret-thing", token=token)
    assert (await app.call("GET", "/secret-thing", token=token)).status == 200


@pytest_twisted.ensureDeferred
async def test_publishing_a_version_twice_is_refused(tmp_path: Path) -> None:
    """The same version published again is 403 (VersionExists in the error table)."""
    app = build(tmp_path)
    await published(app)
    again = await app.call("PUT", "/demo", publish_body("demo", "1.0.0"), token=await app.user("pat"))
    assert again.status == 403 and "error" in again.json()


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_json_is_a_400(tmp_path: Path) -> None:
    """A publish whose body is not JSON is 400 with a message saying so (InvalidInput)."""
    app = build(tmp_path)
    answer = await app.call("PUT", "/demo", raw=b"{not json", token=await app.user("pat"),
                            Content_Type="application/json")
    assert answer.status == 400 and "JSON" in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_publish_without_login_is_401(tmp_path: Path) -> None:
    """A publish without a token is 401 and says how to authenticate (NOPARD_AUTH_WRITE)."""
    app = build(tmp_path)
    answer = await app.call("PUT", "/demo", publish_body("demo", "1.0.0"))
    assert answer.status == 401 and "www-authenticate" in answer.headers


@pytest_twisted.ensureDeferred
async def test_publish_refused_by_the_rules_is_403(tmp_path: Path) -> None:
    """A logged-in user whom the rules do not let publish a name gets 403."""
    app = build(tmp_path, rules=HIDING_RULES)
    await app.user("alice")
    bob = await app.user("bob")
    answer = await app.call("PUT", "/secret-x", publish_body("secret-x", "1.0.0"), token=bob)
    assert answer.status in (403, 404) and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_unsupported_method_on_a_package_is_405(tmp_path: Path) -> None:
    """DELETE of a document without a revision is refused as not supported (405, JSON)."""
    app = build(tmp_path)
    answer = await app.call("DELETE", "/demo", token=await app.user("pat"))
    assert answer.status == 405 and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_unknown_internal_route_is_a_json_404(tmp_path: Path) -> None:
    """A /-/ path nopard does not serve is 404 in JSON, not a package lookup."""
    answer = await build(tmp_path).call("GET", "/-/no-such-route")
    assert answer.status == 404 and answer.json() == {"error": "not found"}


@pytest_twisted.ensureDeferred
async def test_dist_tag_added_is_listed(tmp_path: Path) -> None:
    """npm dist-tag add: PUT /-/package/<name>/dist-tags/<tag> shows up in the tags."""
    app = build(tmp_path)
    await published(app)
    token = await app.user("pat")
    assert (await app.call("PUT", "/-/package/demo/dist-tags/beta", "1.0.0", token=token)).status == 200
    tags = await app.call("GET", "/-/package/demo/dist-tags")
    assert tags.json() == {"latest": "1.0.0", "beta": "1.0.0"}


@pytest_twisted.ensureDeferred
async def test_browser_asking_for_a_package_is_sent_to_its_page(tmp_path: Path) -> None:
    """A browser opening /<name> is redirected to the package's web page."""
    app = build(tmp_path)
    answer = await app.call("GET", "/demo", Accept="text/html,*/*")
    assert answer.status == 302 and answer.headers["location"] == "/-/web/package/demo"


@pytest_twisted.ensureDeferred
async def test_unchanged_document_is_a_304(tmp_path: Path) -> None:
    """A client sending back the document's ETag gets 304 and no body."""
    app = build(tmp_path)
    await published(app)
    etag = (await app.call("GET", "/demo")).headers["etag"]
    again = await app.call("GET", "/demo", If_None_Match=etag)
    assert again.status == 304 and again.body == b""


@pytest_twisted.ensureDeferred
async def test_abbreviated_document_when_npm_asks_for_it(tmp_path: Path) -> None:
    """npm install's Accept header gets the abbreviated document, without readmes."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("GET", "/demo", Accept="application/vnd.npm.install-v1+json")
    assert answer.headers["content-type"] == "application/vnd.npm.install-v1+json"
    assert "readme" not in answer.json()["versions"]["1.0.0"]


@pytest_twisted.ensureDeferred
async def test_head_of_a_tarball_has_its_length_and_no_body(tmp_path: Path) -> None:
    """HEAD on a tarball says its size and sends nothing."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("HEAD", "/demo/-/demo-1.0.0.tgz")
    assert answer.status == 200 and answer.body == b""
    assert answer.headers["content-length"] == str(len(tarball_bytes("demo", "1.0.0")))


# Versions and tags npm cannot use (issue 13, item 12) ------------------------

@pytest_twisted.ensureDeferred
async def test_publish_of_a_version_past_2_53_is_a_400_and_stores_nothing(tmp_path: Path) -> None:
    """9007199254740993.0.0 is refused at publish, saying why; no document or tarball is kept."""
    app = build(tmp_path)
    answer = await app.call("PUT", "/demo", publish_body("demo", "9007199254740993.0.0"), token=await app.user("pat"))
    assert answer.status == 400 and "2^53-1" in answer.json()["error"]
    assert (await app.call("GET", "/demo")).status == 404
    assert not (tmp_path / "registry" / "packages" / "demo").exists()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tag, why", [
    ("__proto__", "property"), ("constructor", "property"), ("%2e%2e", "path segment"), ("1.x", "semver range"),
    ("%5E1.0.0", "only letters"), ("v1", "semver range"), ("a%20b", "only letters"),
])
async def test_publish_with_a_bad_tag_is_a_400(tmp_path: Path, tag: str, why: str) -> None:
    """A publish whose dist-tags name a tag npm cannot use is refused, saying why, and stores nothing."""
    app = build(tmp_path)
    body = publish_body("demo", "1.0.0", tag=unquote(tag))
    answer = await app.call("PUT", "/demo", body, token=await app.user("pat"))
    assert answer.status == 400 and why in answer.json()["error"]
    assert (await app.call("GET", "/demo")).status == 404


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tag, why", [
    ("__proto__", "property"), ("constructor", "property"), ("%2e%2e", "path segment"), ("1.x", "semver range"),
    ("%5E1.0.0", "only letters"), ("a%20b", "only letters"), ("1.2.3beta", "semver range"),
])
async def test_dist_tag_add_of_a_bad_tag_is_a_400(tmp_path: Path, tag: str, why: str) -> None:
    """npm dist-tag add with a tag npm cannot use: 400 saying why; the tags stay as they were."""
    app = build(tmp_path)
    token = await app.user("pat")
    await published(app, token=token)
    answer = await app.call("PUT", f"/-/package/demo/dist-tags/{tag}", "1.0.0", token=token)
    assert answer.status == 400 and why in answer.json()["error"], answer.body
    assert (await app.call("GET", "/-/package/demo/dist-tags")).json() == {"latest": "1.0.0"}


@pytest_twisted.ensureDeferred
async def test_document_sent_back_cannot_bring_in_bad_tags_or_versions(tmp_path: Path) -> None:
    """A document sent back (npm deprecate) adds no tag and no version: a __proto__ tag and a
    version past 2^53-1 in it are not taken, while the deprecation is."""
    app = build(tmp_path)
    token = await app.user("pat")
    await published(app, token=token)
    document = (await app.call("GET", "/demo", token=token)).json()
    document["versions"]["1.0.0"]["deprecated"] = "use 2"
    document["versions"]["9007199254740993.0.0"] = dict(document["versions"]["1.0.0"], version="9007199254740993.0.0")
    document["dist-tags"].update({"__proto__": "1.0.0", "next": "9007199254740993.0.0"})
    assert (await app.call("PUT", f"/demo/-rev/{document['_rev']}", document, token=token)).status == 200
    after = (await app.call("GET", "/demo")).json()
    assert after["dist-tags"] == {"latest": "1.0.0"} and list(after["versions"]) == ["1.0.0"]
    assert after["versions"]["1.0.0"]["deprecated"] == "use 2"


# Authorization inside the compare-and-swap (issue 13, item 4) -----------------

RACE_RULES = {"packages": [{"pattern": "**", "access": ["$all"], "publish": ["alice", "bob"],
                            "unpublish": ["alice"], "proxy": ["$all"]}]}


async def maintained_by_alice_and_bob(app: InProcess) -> tuple[str, str]:
    """demo@1.0.0 published by alice, bob added as a maintainer; their tokens."""
    alice, bob = await app.user("alice"), await app.user("bob")
    await published(app, "demo", "1.0.0", token=alice)
    owners = {"_id": "demo", "maintainers": [{"name": "alice", "email": "a@example.test"},
                                             {"name": "bob", "email": "b@example.test"}]}
    assert (await app.call("PUT", "/demo", owners, token=alice)).status == 200
    return alice, bob


def publish_when_the_swap_reads(monkeypatch: pytest.MonkeyPatch, registry_path: Path, version: str) -> list[str]:
    """The next compare-and-swap read of demo's document first lets another instance (its own
    Registry on the same store, so no shared lock) publish ``version`` as alice: a publish landing
    after a route read the document, before its change is applied. Returns the versions injected."""
    injected: list[str] = []
    original = FilesystemStorage.read_versioned
    other = Registry(FilesystemStorage(str(registry_path), run_now), PreparedCache(lambda: 1 << 20), task.Clock())

    async def read_versioned(self: FilesystemStorage, key: str) -> tuple[bytes, str] | None:
        if key == keys.local_document_key("demo") and not injected:
            injected.append(version)
            publication = parse_publication("demo", publish_body("demo", version))
            await other.publish(publication, {"name": "alice", "email": "a@example.test"})
        return await original(self, key)

    monkeypatch.setattr(FilesystemStorage, "read_versioned", read_versioned)
    return injected


@pytest_twisted.ensureDeferred
async def test_deprecation_racing_a_publish_cannot_unpublish_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob may publish but not unpublish: his document sent back (a deprecation of 1.0.0, read before
    alice published 1.0.1) is refused 403 once it would drop 1.0.1, and 1.0.1 and its tarball stay."""
    app = build(tmp_path, rules=RACE_RULES)
    _alice, bob = await maintained_by_alice_and_bob(app)
    sent_back = (await app.call("GET", "/demo", token=bob)).json()
    sent_back["versions"]["1.0.0"]["deprecated"] = "use 1.0.1"
    injected = publish_when_the_swap_reads(monkeypatch, tmp_path / "registry", "1.0.1")
    answer = await app.call("PUT", "/demo", sent_back, token=bob)
    assert injected == ["1.0.1"]
    assert answer.status == 403 and "unpublish" in answer.json()["error"]
    store = FilesystemStorage(str(tmp_path / "registry"), run_now)
    stored = orjson.loads(await store.read(keys.local_document_key("demo")) or b"{}")
    assert sorted(stored["versions"]) == ["1.0.0", "1.0.1"] and "deprecated" not in stored["versions"]["1.0.0"]
    assert await store.read(keys.tarball_key("demo", "demo-1.0.1.tgz")) == tarball_bytes("demo", "1.0.1")


@pytest_twisted.ensureDeferred
async def test_deprecation_racing_a_publish_still_deprecates_when_nothing_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race with bob's document listing both versions is a plain deprecation: 200, both stay."""
    app = build(tmp_path, rules=RACE_RULES)
    _alice, bob = await maintained_by_alice_and_bob(app)
    sent_back = (await app.call("GET", "/demo", token=bob)).json()
    sent_back["versions"]["1.0.0"]["deprecated"] = "use 1.0.1"
    sent_back["versions"]["1.0.1"] = {"deprecated": ""}
    publish_when_the_swap_reads(monkeypatch, tmp_path / "registry", "1.0.1")
    assert (await app.call("PUT", "/demo", sent_back, token=bob)).status == 200
    stored = (await app.call("GET", "/demo/1.0.0")).json()
    assert stored["deprecated"] == "use 1.0.1"
    assert (await app.call("GET", "/demo/-/demo-1.0.1.tgz")).status == 200


@pytest_twisted.ensureDeferred
async def test_who_may_unpublish_still_drops_versions(tmp_path: Path) -> None:
    """alice (in unpublish) drops 1.0.0 with a document sent back; bob's attempt is 403."""
    app = build(tmp_path, rules=RACE_RULES)
    alice, bob = await maintained_by_alice_and_bob(app)
    await published(app, "demo", "1.0.1", token=alice)
    sent_back = (await app.call("GET", "/demo", token=bob)).json()
    del sent_back["versions"]["1.0.0"]
    assert (await app.call("PUT", "/demo", sent_back, token=bob)).status == 403
    assert (await app.call("PUT", "/demo", sent_back, token=alice)).status == 200
    assert list((await app.call("GET", "/demo")).json()["versions"]) == ["1.0.1"]


# A wholly unpublished name stays its maintainers' for a while (issue 13, item 7) ----

DAY = 24 * 3600


async def unpublished_by_alice(app: InProcess) -> tuple[str, str]:
    """demo@1.0.0 published by alice, then the whole package unpublished (npm unpublish --force)."""
    alice, bob = await app.user("alice"), await app.user("bob")
    await published(app, "demo", "1.0.0", token=alice)
    revision = (await app.call("GET", "/demo", token=alice)).json()["_rev"]
    assert (await app.call("DELETE", f"/demo/-rev/{revision}", token=alice)).status == 200
    assert (await app.call("GET", "/demo")).status == 404
    return alice, bob


@pytest_twisted.ensureDeferred
async def test_another_user_cannot_take_an_unpublished_name_within_the_grace(tmp_path: Path) -> None:
    """Right after alice unpublished demo, bob's publish of it is 403 saying when the name frees;
    nothing of his is stored."""
    app = build(tmp_path)
    _alice, bob = await unpublished_by_alice(app)
    app.clock.advance(DAY - 1)
    answer = await app.call("PUT", "/demo", publish_body("demo", "2.0.0"), token=bob)
    assert answer.status == 403
    assert "was unpublished" in answer.json()["error"] and "until 2027-01-16T08:00:00.000Z" in answer.json()["error"]
    assert (await app.call("GET", "/demo")).status == 404
    store = FilesystemStorage(str(tmp_path / "registry"), run_now)
    assert await store.read(keys.tarball_key("demo", "demo-2.0.0.tgz")) is None


@pytest_twisted.ensureDeferred
async def test_a_former_maintainer_may_publish_the_name_again(tmp_path: Path) -> None:
    """alice, who maintained demo, publishes it again within the grace and stays its maintainer."""
    app = build(tmp_path)
    alice, _bob = await unpublished_by_alice(app)
    assert (await app.call("PUT", "/demo", publish_body("demo", "2.0.0"), token=alice)).status == 201
    assert [m["name"] for m in (await app.call("GET", "/demo")).json()["maintainers"]] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_an_admin_may_publish_an_unpublished_name(tmp_path: Path) -> None:
    """An admin (NOPARD_ADMINS) is not held by the grace."""
    app = build(tmp_path, admins=("root",))
    await unpublished_by_alice(app)
    root = await app.user("root")
    assert (await app.call("PUT", "/demo", publish_body("demo", "2.0.0"), token=root)).status == 201


@pytest_twisted.ensureDeferred
async def test_anyone_may_publish_the_name_after_the_grace_but_never_its_old_versions(tmp_path: Path) -> None:
    """24h after the unpublish bob may publish demo; version 1.0.0, once published, never comes back."""
    app = build(tmp_path)
    _alice, bob = await unpublished_by_alice(app)
    app.clock.advance(DAY)
    again = await app.call("PUT", "/demo", publish_body("demo", "1.0.0"), token=bob)
    assert again.status == 403 and "unpublished" in again.json()["error"]
    assert (await app.call("PUT", "/demo", publish_body("demo", "2.0.0"), token=bob)).status == 201
    assert [m["name"] for m in (await app.call("GET", "/demo")).json()["maintainers"]] == ["bob"]


@pytest_twisted.ensureDeferred
async def test_a_grace_of_zero_reserves_nothing(tmp_path: Path) -> None:
    """NOPARD_UNPUBLISH_GRACE=0: another user may publish the name right after the unpublish."""
    app = build(tmp_path, unpublish_grace="0")
    _alice, bob = await unpublished_by_alice(app)
    assert (await app.call("PUT", "/demo", publish_body("demo", "2.0.0"), token=bob)).status == 201


@pytest_twisted.ensureDeferred
async def test_a_version_published_during_a_whole_unpublish_is_never_lost_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance publishing 1.0.1 between the unpublish's read and its delete: npm's
    revision is no longer current, so the unpublish is 409 and removes nothing (before, 1.0.1 was
    deleted unrecorded, free to be published again with other bytes); sent again, it records 1.0.1."""
    app = build(tmp_path)
    alice = await app.user("alice")
    await published(app, "demo", "1.0.0", token=alice)
    other = Registry(FilesystemStorage(str(tmp_path / "registry"), run_now), PreparedCache(lambda: 1 << 20),
                     task.Clock())
    injected: list[str] = []

    def publishing_first(original: Any) -> Any:
        async def delete(self: FilesystemStorage, key: str, *rest: str) -> bool:
            if key == keys.local_document_key("demo") and not injected:
                injected.append("1.0.1")
                publication = parse_publication("demo", publish_body("demo", "1.0.1"))
                await other.publish(publication, {"name": "alice", "email": "a@example.test"})
            return bool(await original(self, key, *rest))
        return delete

    for method in ("delete", "delete_versioned"):
        monkeypatch.setattr(FilesystemStorage, method, publishing_first(getattr(FilesystemStorage, method)))
    revision = (await app.call("GET", "/demo", token=alice)).json()["_rev"]
    assert (await app.call("DELETE", f"/demo/-rev/{revision}", token=alice)).status == 409
    store = FilesystemStorage(str(tmp_path / "registry"), run_now)
    stored = orjson.loads(await store.read(keys.local_document_key("demo")) or b"{}")
    assert injected == ["1.0.1"] and sorted(stored["versions"]) == ["1.0.0", "1.0.1"]
    assert await store.read(keys.tarball_key("demo", "demo-1.0.1.tgz")) == tarball_bytes("demo", "1.0.1")
    assert (await app.call("DELETE", f"/demo/-rev/{stored['_rev']}", token=alice)).status == 200
    different = publish_body("demo", "1.0.1", b"other bytes")
    again = await app.call("PUT", "/demo", different, token=alice)
    assert again.status == 403 and "unpublished" in again.json()["error"]
