"""Search and NOPARD_CONFIG's access rules over HTTP and with the real npm CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BIN, NopardServer, Npm, publish_body, twistd_env
from tests.upstream import FakeUpstream

RULES = """
admins = ["root"]

[groups]
team = ["bob"]

[[packages]]
pattern = "@acme/*"
access = ["team"]
publish = ["team"]
unpublish = ["root"]
proxy = []

[[packages]]
pattern = "members-*"
access = ["$authenticated"]
publish = ["root"]
proxy = []

[[packages]]
pattern = "@types/*"
access = ["$all"]
publish = ["root"]
proxy = []

[[packages]]
pattern = "**"
access = ["$all"]
publish = ["$authenticated"]
proxy = ["$all"]
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[NopardServer]:
    workdir = tmp_path_factory.mktemp("search-acl")
    (workdir / "rules.toml").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "rules.toml").write_text(RULES)
    server = NopardServer(workdir, {
        "NOPARD_CONFIG": str(workdir / "rules.toml"), "NOPARD_MAX_USERS": "5",
        "NOPARD_FORWARDER_URL": upstream.url, "NOPARD_STALE_DEADLINE": "0.5", "NOPARD_UPSTREAM_TIMEOUT": "3",
    })
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokens(registry: NopardServer) -> dict[str, str]:
    tokens = {user: registry.token(user, f"pw-{user}") for user in ("root", "bob", "eve")}
    published = [
        ("bob", "@acme/secret", "1.0.0", {"description": "the widget secret", "keywords": ["widget"]}),
        ("bob", "@acme/secret", "1.0.1", {"description": "the widget secret", "keywords": ["widget"]}),
        ("root", "members-only", "1.0.0", {"description": "a widget for members"}),
        ("eve", "open-widget", "1.0.0", {"description": "anyone's", "keywords": ["widget"]}),
    ]
    for user, name, version, manifest in published:
        answer = registry.request("PUT", "/" + name.replace("/", "%2f"),
                                  publish_body(name, version, **manifest), token=tokens[user])
        assert answer.status == 201, answer.body
    return tokens


def read_paths(name: str) -> list[str]:
    encoded = name.replace("/", "%2f")
    bare = name.rsplit("/", 1)[-1]
    return [f"/{encoded}", f"/{encoded}/1.0.0", f"/{encoded}/latest", f"/{name}/-/{bare}-1.0.0.tgz",
            f"/-/package/{encoded}/dist-tags", f"/-/package/{encoded}/collaborators",
            f"/-/package/{encoded}/visibility"]


def answers(registry: NopardServer, name: str, token: str | None, method: str = "GET") -> list[tuple]:
    return [(path, *_status_and_body(registry.request(method, path, token=token), name))
            for path in read_paths(name)]


def _status_and_body(answer, name: str) -> tuple[int, bytes]:
    return answer.status, answer.body.replace(name.encode(), b"NAME").replace(name.rsplit("/", 1)[-1].encode(), b"B")


def search(registry: NopardServer, query: str, token: str | None = None) -> list[str]:
    answer = registry.request("GET", f"/-/v1/search?{query}", token=token)
    assert answer.status == 200, answer.body
    return [o["package"]["name"] for o in answer.json()["objects"]]


def test_a_user_outside_the_group_learns_nothing(registry: NopardServer, tokens: dict[str, str]) -> None:
    """Every read route answers a hidden package exactly like one that does not exist."""
    for path, status, _ in answers(registry, "@acme/secret", tokens["bob"]):
        assert status == 200, path
    for token in (tokens["eve"], None):
        hidden = answers(registry, "@acme/secret", token)
        missing = answers(registry, "@acme/nosuch", token)
        assert [a[1:] for a in hidden] == [a[1:] for a in missing]
        assert {a[1] for a in hidden} == {404}
        heads = [registry.request("HEAD", p, token=token).status for p in read_paths("@acme/secret")[:4]]
        assert heads == [404] * 4
    assert "@acme/secret" not in search(registry, "text=secret", tokens["eve"])
    assert "@acme/secret" not in search(registry, "text=widget", None)
    assert "@acme/secret" in search(registry, "text=widget", tokens["bob"])
    assert "@acme/secret" in search(registry, "text=widget", tokens["root"])  # admin


def test_writes_to_a_hidden_package_look_like_writes_to_a_missing_one(
    registry: NopardServer, tokens: dict[str, str]
) -> None:
    eve = tokens["eve"]
    for name in ("@acme/secret", "@acme/nosuch"):
        encoded = name.replace("/", "%2f")
        tag = registry.request("PUT", f"/-/package/{encoded}/dist-tags/beta", '"1.0.0"',
                               headers={"Content-Type": "application/json"}, token=eve)
        gone = registry.request("DELETE", f"/{encoded}/-rev/undefined", token=eve)
        assert (tag.status, gone.status) == (404, 404)
        assert b"is not published on this registry" in tag.body
    star = registry.request("PUT", "/@acme%2fsecret", {"_id": "@acme/secret", "users": {"eve": True}}, token=eve)
    assert star.status == 404


def test_anonymous_denied_where_configured(registry: NopardServer, tokens: dict[str, str]) -> None:
    hidden = answers(registry, "members-only", None)
    missing = answers(registry, "members-nothin", None)  # no such package, same rule
    assert [a[1:] for a in hidden] == [a[1:] for a in missing] and {a[1] for a in hidden} == {404}
    assert registry.request("GET", "/members-only", token=tokens["eve"]).status == 200
    assert "members-only" not in search(registry, "text=widget")
    assert "members-only" in search(registry, "text=widget", tokens["eve"])


def test_publish_and_unpublish_rules(registry: NopardServer, tokens: dict[str, str]) -> None:
    """A reader who may not publish gets 403; unpublish has its own list."""
    denied = registry.request("PUT", "/members-only", publish_body("members-only", "2.0.0"), token=tokens["eve"])
    assert denied.status == 403 and b"may not publish" in denied.body
    denied = registry.request("PUT", "/@types%2fmine", publish_body("@types/mine", "1.0.0"), token=tokens["eve"])
    assert denied.status == 403
    anonymous = registry.request("PUT", "/anon-pkg", publish_body("anon-pkg", "1.0.0"))
    assert anonymous.status == 401
    document = registry.request("GET", "/@acme%2fsecret", token=tokens["bob"]).json()
    del document["versions"]["1.0.1"]
    removal = registry.request("PUT", f"/@acme%2fsecret/-rev/{document['_rev']}", document, token=tokens["bob"])
    assert removal.status == 403 and b"may not unpublish" in removal.body
    whole = registry.request("DELETE", f"/@acme%2fsecret/-rev/{document['_rev']}", token=tokens["bob"])
    assert whole.status == 403
    document = registry.request("GET", "/@acme%2fsecret", token=tokens["bob"]).json()
    document["versions"]["1.0.0"]["deprecated"] = "use 1.0.1"
    deprecate = registry.request("PUT", f"/@acme%2fsecret/-rev/{document['_rev']}", document, token=tokens["bob"])
    assert deprecate.status == 200, deprecate.body
    tag = registry.request("PUT", "/-/package/@acme%2fsecret/dist-tags/beta", '"1.0.0"',
                           headers={"Content-Type": "application/json"}, token=tokens["bob"])
    assert tag.status == 200


def test_no_proxy_names_never_go_upstream(registry: NopardServer, fake: FakeUpstream, tokens) -> None:
    """@types/* has proxy = []: it is not fetched, though the upstream has it; other names are."""
    assert registry.request("GET", "/@types%2festree").status == 404
    assert registry.request("GET", "/@types/estree/-/estree-1.0.8.tgz").status == 404
    assert registry.request("GET", "/debug").status == 200
    paths = [path for _, path in fake.stats()["requests"]]
    assert not any("estree" in path for path in paths)
    assert "/debug" in paths
    assert "debug" in search(registry, "text=debug")  # mirrored documents are searched too


@pytest.mark.parametrize(
    "query",
    ["text=%00", "text=%ff%fe", "text=%E4%B8%AD%F0%9F%98%80", "text=a&text=b",
     "text=x&size=99999999999999999999&from=-5", "text=x&size=abc&from=xyz", "text=x&from=1e400&size=-1",
     "text=" + "x" * 5000, "text=keywords%3A&size=%00", "text=*%20?%20[&from=%20",
     "text=x&quality=2&popularity=x&maintenance="],
)
def test_odd_queries_never_fail(registry: NopardServer, tokens, query: str) -> None:
    answer = registry.request("GET", f"/-/v1/search?{query}")
    assert answer.status == 200, answer.body
    body = answer.json()
    assert isinstance(body["objects"], list) and len(body["objects"]) <= 250
    assert isinstance(body["total"], int) and isinstance(body["time"], str)


@pytest.mark.parametrize("query", ["", "text=", "text=%20", "size=5&from=1", "quality=2&popularity=x"])
def test_a_search_without_words_is_a_400(registry: NopardServer, query: str) -> None:
    answer = registry.request("GET", f"/-/v1/search?{query}")
    assert answer.status == 400 and "text=" in answer.json()["error"]


def test_search_shape_ranking_and_paging(registry: NopardServer, tokens) -> None:
    body = registry.request("GET", "/-/v1/search?text=widget&size=1", token=tokens["bob"]).json()
    assert body["total"] == 3 and len(body["objects"]) == 1
    first = body["objects"][0]
    assert first["package"]["name"] == "open-widget"  # a name match beats keyword and description ones
    package = first["package"]
    assert set(package) >= {"name", "version", "description", "keywords", "date", "links", "publisher",
                            "maintainers"}
    assert package["maintainers"] == [{"username": "eve", "email": "x@example.com"}]
    assert package["publisher"] == {"username": "eve", "email": "x@example.com"}
    assert set(first["score"]["detail"]) == {"quality", "popularity", "maintenance"}
    assert isinstance(first["searchScore"], (int, float))
    rest = registry.request("GET", "/-/v1/search?text=widget&from=1&size=10", token=tokens["bob"]).json()
    assert [o["package"]["name"] for o in rest["objects"]][:1] != ["open-widget"]
    assert len(rest["objects"]) == 2


def test_npm_search(registry: NopardServer, tokens: dict[str, str], tmp_path: Path) -> None:
    """The real `npm search` lists what the user may read."""
    anonymous = Npm(registry.url, tmp_path / "anon")
    output = anonymous.run("search", "widget").stdout
    assert "open-widget" in output and "@acme/secret" not in output and "members-only" not in output
    bob = Npm(registry.url, tmp_path / "bob")
    with bob.userconfig.open("a") as config:
        config.write(f"//127.0.0.1:{registry.port}/:_authToken={tokens['bob']}\n")
    output = bob.run("search", "widget").stdout
    assert "@acme/secret" in output and "open-widget" in output
    parsed = bob.run("search", "--json", "secret").stdout
    assert '"@acme/secret"' in parsed


def test_bad_config_stops_startup_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text('[[packages]]\npattern = "**"\nreader = ["$all"]\n')
    result = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "nopard"], cwd=tmp_path,
                            env=twistd_env({"NOPARD_CONFIG": str(config)}), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nopard: NOPARD_CONFIG: ") and "'reader'" in lines[0]


def test_hidden_package_looks_missing_while_the_upstream_is_down(start_nopard, fake: FakeUpstream, tmp_path) -> None:
    """With the upstream down, a hidden package answers like a name that does not exist (which then
    says the upstream is unreachable), on the document, version and tarball routes."""
    from tests.support import publish_body, until_upstream_down

    rules = tmp_path / "rules.toml"
    rules.write_text('[[packages]]\npattern = "hidden-*"\naccess = ["alice"]\npublish = ["alice"]\n'
                     'proxy = ["$all"]\n\n[[packages]]\npattern = "**"\naccess = ["$all"]\n'
                     'publish = ["$authenticated"]\nproxy = ["$all"]\n')
    server = start_nopard({"NOPARD_CONFIG": str(rules), "NOPARD_FORWARDER_URL": fake.url,
                           "NOPARD_META_TTL": "0.001", "NOPARD_STALE_DEADLINE": "0.5"}, name="hidden-down")
    token = server.token("alice", "pw")
    assert server.request("PUT", "/hidden-pkg", publish_body("hidden-pkg", "1.0.0"), token=token).status == 201
    server.request("GET", "/debug")
    fake.fault("500")
    until_upstream_down(server, "/debug")
    for hidden, missing in (("/hidden-pkg", "/open-nothing"), ("/hidden-pkg/1.0.0", "/open-nothing/1.0.0"),
                            ("/hidden-pkg/-/hidden-pkg-1.0.0.tgz", "/open-nothing/-/open-nothing-1.0.0.tgz")):
        a, b = server.request("GET", hidden), server.request("GET", missing)
        assert (a.status, a.body.replace(b"hidden-pkg", b"X")) == (b.status, b.body.replace(b"open-nothing", b"X"))
        assert b"unreachable" in b.body
