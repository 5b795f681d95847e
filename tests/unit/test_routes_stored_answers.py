"""Answers taken from what is stored and configured, never fixed: `npm access get status` and
`list collaborators`, a login's `rev`, the fields of `npm token list`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest_twisted

from nopard.storage import keys
from tests.support import publish_body
from tests.unit.route_harness import build

# alice and bob maintain "team-*" packages; only alice may publish them; carol may not even read them.
RULES = {"packages": [
    {"pattern": "team-*", "access": ["alice", "bob"], "publish": ["alice"], "unpublish": ["alice"]},
    {"pattern": "**", "access": ["$all"], "publish": ["$authenticated"], "unpublish": ["$authenticated"]},
]}


@pytest_twisted.ensureDeferred
async def test_visibility_says_public_only_when_anyone_may_install_it(tmp_path: Path) -> None:
    """`public` is true for a package anonymous readers get, false under access rules or NOPARD_AUTH_READ."""
    app = build(tmp_path / "open", rules=RULES)
    alice = await app.user("alice")
    for name in ("open-pkg", "team-pkg"):
        assert (await app.call("PUT", f"/{name}", publish_body(name, "1.0.0"), token=alice)).status == 201
    assert (await app.call("GET", "/-/package/open-pkg/visibility", token=alice)).json() == {"public": True}
    assert (await app.call("GET", "/-/package/team-pkg/visibility", token=alice)).json() == {"public": False}
    closed = build(tmp_path / "closed", auth_read="yes")
    token = await closed.user("alice")
    assert (await closed.call("PUT", "/open-pkg", publish_body("open-pkg", "1.0.0"), token=token)).status == 201
    assert (await closed.call("GET", "/-/package/open-pkg/visibility", token=token)).json() == {"public": False}


@pytest_twisted.ensureDeferred
async def test_collaborators_carry_the_permission_the_rules_give(tmp_path: Path) -> None:
    """A maintainer who may publish is read-write, one who may only read is read-only, one who cannot read: left out."""
    app = build(tmp_path, rules=RULES)
    alice, _bob, _carol = await app.user("alice"), await app.user("bob"), await app.user("carol")
    assert (await app.call("PUT", "/team-pkg", publish_body("team-pkg", "1.0.0"), token=alice)).status == 201
    owners = {"_id": "team-pkg", "maintainers": [{"name": n, "email": f"{n}@example.test"}
                                                  for n in ("alice", "bob", "carol")]}
    answer = await app.call("PUT", "/team-pkg", owners, token=alice)  # npm owner add, as in test_routes_packages
    assert answer.status == 200, answer.body
    answer = await app.call("GET", "/-/package/team-pkg/collaborators", token=alice)
    assert answer.json() == {"alice": "read-write", "bob": "read-only"}


@pytest_twisted.ensureDeferred
async def test_a_login_answers_the_rev_of_the_stored_profile(tmp_path: Path) -> None:
    """The `rev` of a login is that of the user's stored profile: each user's own, the same at each login."""
    app = build(tmp_path)
    revs = {}
    for user in ("alice", "bob", "alice"):
        answer = await app.call("PUT", f"/-/user/org.couchdb.user:{user}",
                                {"name": user, "password": "secret-pw", "email": f"{user}@example.test"})
        assert answer.status == 201, answer.body
        revs.setdefault(user, set()).add(answer.json()["rev"])
    stored = await app.storage.read(keys.user_key("alice"))
    assert revs["alice"] == {"1-" + hashlib.md5(stored).hexdigest()}
    assert revs["bob"] != revs["alice"]


@pytest_twisted.ensureDeferred
async def test_token_list_shows_what_each_record_holds(tmp_path: Path) -> None:
    """`npm token list` fields come from the stored record: its address list and last change when it has them."""
    app = build(tmp_path)
    token = await app.user("alice")
    created = await app.call("POST", "/-/npm/v1/tokens", {"password": "secret-pw"}, token=token)
    assert created.status == 200, created.body
    [record_key] = [k for k in await app.storage.list(keys.TOKENS) if k.endswith(".json")
                    and orjson.loads(await app.storage.read(k))["key"] == created.json()["key"]]
    record = orjson.loads(await app.storage.read(record_key))
    await app.storage.write(record_key, orjson.dumps(
        {**record, "cidr_whitelist": ["192.0.2.0/24"], "updated": "2027-01-02T03:04:05.000Z"}))
    listed = {t["key"]: t for t in (await app.call("GET", "/-/npm/v1/tokens", token=token)).json()["objects"]}
    shown = listed[created.json()["key"]]
    assert shown["cidr_whitelist"] == ["192.0.2.0/24"] and shown["updated"] == "2027-01-02T03:04:05.000Z"
    others = [t for key, t in listed.items() if key != created.json()["key"]]
    assert others and all(t["cidr_whitelist"] is None and t["updated"] == t["created"] for t in others)
