"""What a hostile client sends, as hypothesis strategies: per route its paths, and for all of
them methods, headers and bodies.

``ROUTE_PATHS`` has one entry per endpoint the app mounts (RegistryApp.routes); the
suite fails when a route has no entry, so a route added later must get one here.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.support import publish_body

# Names and path segments ------------------------------------------------------------

EXISTING_NAMES = ("demo", "@scope/lib", "upstream", "@scope/upstream", "mirrored-pkg", "@ext/mirrored",
                  "secret-pkg", "@hidden/pkg", "secret-mirror")
HOSTILE_NAMES = (
    "..", ".", "%2e%2e", "%2E%2E", "..%2f..", "%2e%2e%2f%2e%2e%2fusers", "%2f", "%00", "a%00b", "@scope/..",
    "@scope%2f..", "@scope/.", "@..%2fx", "@scope%2f%2e%2e", "__proto__", "constructor", "prototype",
    "tarballs", "package.json", "users", "tokens", "settings", "sync", "health", "-", "-rev", "-/",
    "-%2fping", "@", "@scope", "@scope/", "@scope%2f", "%40scope%2flib", "@scope%2Flib", "demo/..",
    "demo%2f..%2fsecret-pkg", "@scope/lib/../../secret-pkg", "%ff", "%c3%bc", "ünï", "DEMO", "demo%20",
    "%20demo", "demo.", "..demo", "node_modules", "favicon.ico", "con", "a" * 215, "b" * 300,
    "@" + "s" * 120 + "/" + "n" * 120, "%" + "2e" * 10, "demo\\..\\x", "demo%5c..%5cx", "@scope/upstream/upstream",
    "@hidden%2fpkg", "%40hidden%2fpkg", "secret-pkg%00", "secret-pkg/..", "upstream/package.json",
)
SEGMENTS = (
    "", ".", "..", "%2e%2e", "%2f", "%00", "%ff", "-", "-rev", "-/", "latest", "1.0.0", "__proto__",
    "constructor", "package.json", "upstream", "tarballs", "meta.json", "x" * 2000, "%c3%bc", "ü",
    "9007199254740993.0.0", "1-0", "1-abc", "..%2f..%2fusers%2fbob.json", "a/b/c", "?", "%3f", "#", "%23",
)
VERSIONS = ("1.0.0", "1.0.1", "2.0.0", "latest", "next", "9007199254740993.0.0", "1.0.0-alpha.%00", "..",
            "__proto__", "constructor", "^1.0.0", ">=1", "v1.0.0", "1.0", "-", "1.0.0+build")


def quoted_text(max_size: int = 30) -> st.SearchStrategy[str]:
    """Any text at all, percent-encoded whole (NUL, controls, surrogates' replacements, unicode)."""
    return st.text(max_size=max_size).map(lambda text: quote(text.encode("utf-8", "replace"), safe=""))


NAMES = st.one_of(st.sampled_from(HOSTILE_NAMES), st.sampled_from(EXISTING_NAMES), quoted_text(),
                  st.from_regex(r"@?[a-z0-9._~-]{1,12}(/[a-z0-9._-]{1,12})?", fullmatch=True))
SEGMENT = st.one_of(st.sampled_from(SEGMENTS), quoted_text())
VERSION = st.one_of(st.sampled_from(VERSIONS), SEGMENT)


def spelled(name: str) -> st.SearchStrategy[str]:
    """The ways clients write a (scoped) name in a path: as is, ``%2f``, ``%2F``, ``%40...%2f``."""
    return st.sampled_from((name, name.replace("/", "%2f"), name.replace("/", "%2F"),
                            name.replace("@", "%40").replace("/", "%2f")))


def unscoped(name: str) -> str:
    """The part of a name after its scope (where a tarball's file name starts)."""
    return name.rsplit("/", 1)[-1].rsplit("%2f", 1)[-1]


def tarball_file(name: str) -> st.SearchStrategy[str]:
    """A tarball file of ``name`` (well formed or not), or any segment."""
    return st.one_of(VERSION.map(lambda version: f"{unscoped(name)}-{version}.tgz"), SEGMENT,
                     st.sampled_from(("../package.json", "..%2fpackage.json", "x.tgz", ".tgz",
                                      f"{unscoped(name)}-1.0.0.tgz%00", f"{unscoped(name)}-1.0.0.tar")))


def query(*keys: str) -> st.SearchStrategy[str]:
    """A query string of some of ``keys`` with hostile values (or none at all)."""
    value = st.one_of(quoted_text(), st.sampled_from(("", "-1", "0", "1e9", "99999999999999999999", "nan",
                                                     '"bob"', '"alice"', '"', "%00", "x" * 3000)))
    pair = st.tuples(st.sampled_from(keys), value).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, max_size=3).map(lambda pairs: "?" + "&".join(pairs) if pairs else "")


def fixed(path: str, *keys: str) -> Callable[[str], st.SearchStrategy[str]]:
    """A route at one path; its query string from ``keys`` (plus junk keys)."""
    return lambda name: query(*keys, "x", "__proto__").map(lambda q: path + q)


def under(prefix: str, part: Callable[[str], st.SearchStrategy[str]] | None = None) -> Callable[[str], Any]:
    """A route ``prefix`` + one part (a segment, by default), sometimes more segments after it."""
    def paths(name: str) -> st.SearchStrategy[str]:
        first = part(name) if part is not None else SEGMENT
        rest = st.lists(SEGMENT, max_size=2).map(lambda segments: "".join("/" + s for s in segments))
        return st.tuples(first, rest).map(lambda pr: prefix + pr[0] + pr[1])
    return paths


def package_paths(name: str) -> st.SearchStrategy[str]:
    """``/<name>`` and everything below it that npm asks for, well formed or not."""
    base = spelled(name).map(lambda spelling: "/" + spelling)
    suffix = st.one_of(
        st.just(""), VERSION.map(lambda v: "/" + v), tarball_file(name).map(lambda f: "/-/" + f),
        SEGMENT.map(lambda rev: "/-rev/" + rev),
        st.tuples(tarball_file(name), SEGMENT).map(lambda fr: f"/-/{fr[0]}/-rev/{fr[1]}"),
        st.lists(SEGMENT, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    )
    return st.tuples(base, suffix, query("write", "x", "__proto__")).map("".join)


def package_action_paths(name: str) -> st.SearchStrategy[str]:
    """``/-/package/<name>/(dist-tags[/<tag>]|collaborators|visibility|...)``."""
    action = st.one_of(st.sampled_from(("dist-tags", "collaborators", "visibility", "access", "")),
                       VERSION.map(lambda tag: "dist-tags/" + tag), SEGMENT,
                       st.tuples(VERSION, SEGMENT).map(lambda ts: f"dist-tags/{ts[0]}/{ts[1]}"))
    return st.tuples(spelled(name), action).map(lambda na: f"/-/package/{na[0]}/{na[1]}")


def user_ids(name: str) -> st.SearchStrategy[str]:
    """A CouchDB user id (``org.couchdb.user:<name>``), well formed or not."""
    user = st.one_of(st.sampled_from(("bob", "alice", "carol", "nobody", "", "..", "%2f", "admin", "__proto__",
                                      "b%00b", "x" * 500)), quoted_text(), st.just(name))
    return st.tuples(st.sampled_from(("org.couchdb.user:", "org.couchdb.user%3a", "", "user:")), user).map(
        "".join)


def page_paths(name: str) -> st.SearchStrategy[str]:
    """A package's page (and its refresh) under /-/web/package/."""
    return st.tuples(spelled(name), st.sampled_from(("", "/refresh", "/", "/x", "/refresh/x"))).map(
        lambda ns: "/-/web/package/" + "".join(ns))


SESSION_IDS = st.one_of(SEGMENT, st.text("0123456789abcdef", min_size=64, max_size=64))

ROUTE_PATHS: dict[str, Callable[[str], st.SearchStrategy[str]]] = {
    "web.root:/": fixed("/", "q"),
    "web.web:/-/web/": fixed("/-/web/", "q"),
    "web.web:/-/web/_branch": under("/-/web/"),
    "operations.ping:/-/ping": fixed("/-/ping"),
    "operations.status:/-/nopard/status": fixed("/-/nopard/status"),
    "operations.health_check:/-/nopard/health": fixed("/-/nopard/health"),
    "operations.metrics_exposition:/-/metrics": fixed("/-/metrics"),
    "operations.sync_status:/-/nopard/sync": fixed("/-/nopard/sync", "job"),
    "operations.sync_now:/-/nopard/sync": fixed("/-/nopard/sync", "job"),
    "operations.prefetch:/-/nopard/prefetch": fixed("/-/nopard/prefetch"),
    "accounts.whoami:/-/whoami": fixed("/-/whoami"),
    "accounts.login:/-/user/<userid>": under("/-/user/", user_ids),
    "accounts.user_profile:/-/user/<userid>": under("/-/user/", user_ids),
    "accounts.logout:/-/user/token/<token>": under("/-/user/token/"),
    "accounts.list_tokens:/-/npm/v1/tokens": fixed("/-/npm/v1/tokens", "page", "perPage"),
    "accounts.create_token:/-/npm/v1/tokens": fixed("/-/npm/v1/tokens"),
    "accounts.revoke_token:/-/npm/v1/tokens/token/<path:key>": under("/-/npm/v1/tokens/token/"),
    "profile.get:/-/npm/v1/user": fixed("/-/npm/v1/user"),
    "profile.set:/-/npm/v1/user": fixed("/-/npm/v1/user"),
    "weblogin.start:/-/v1/login": fixed("/-/v1/login"),
    "weblogin.form:/-/v1/login/<session_id>": under("/-/v1/login/", lambda name: SESSION_IDS),
    "weblogin.submit:/-/v1/login/<session_id>": under("/-/v1/login/", lambda name: SESSION_IDS),
    "weblogin.done:/-/v1/done/<session_id>": under("/-/v1/done/", lambda name: SESSION_IDS),
    "search.search_packages:/-/v1/search": lambda name: st.one_of(
        query("text", "size", "from", "quality"), spelled(name).map(lambda n: f"/-/v1/search?text={n}")).map(
        lambda q: q if q.startswith("/") else "/-/v1/search" + q),
    "search.audit:/-/npm/v1/security/advisories/bulk": fixed("/-/npm/v1/security/advisories/bulk"),
    "search.audit:/-/npm/v1/security/audits/quick": fixed("/-/npm/v1/security/audits/quick"),
    "search.audit:/-/npm/v1/security/audits": fixed("/-/npm/v1/security/audits"),
    "search.advisory:/-/npm/v1/security/advisories/<osv_id>": under("/-/npm/v1/security/advisories/"),
    "provenance.keys:/-/npm/v1/keys": fixed("/-/npm/v1/keys"),
    "provenance.attestations:/-/npm/v1/attestations/": fixed("/-/npm/v1/attestations/"),
    "provenance.attestations:/-/npm/v1/attestations/_branch": lambda name: spelled(name).map(
        lambda n: f"/-/npm/v1/attestations/{n}@1.0.0"),
    "settings.get_settings:/-/nopard/settings": fixed("/-/nopard/settings"),
    "settings.put_settings:/-/nopard/settings": fixed("/-/nopard/settings"),
    "blocks.list_blocks:/-/nopard/blocks": fixed("/-/nopard/blocks"),
    "blocks.add_block:/-/nopard/blocks": fixed("/-/nopard/blocks"),
    "blocks.remove_block:/-/nopard/blocks/<block_id>": lambda name: st.one_of(
        quoted_text(20), st.sampled_from(("0123456789abcdef", quote(name, safe="")))).map(
        lambda i: "/-/nopard/blocks/" + i),
    "changes.changes:/-/nopard/changes": fixed("/-/nopard/changes", "since", "limit"),
    "packages.starred_by_user:/-/_view/starredByUser": lambda name: st.one_of(
        query("key"), st.sampled_from(('"alice"', "alice", '"bob"', f'"{name}"')).map(lambda k: "?key=" + k)).map(
        lambda q: "/-/_view/starredByUser" + q),
    "packages.package_action:/-/package/<path:ignored>": package_action_paths,
    "packages.package:/<path:ignored>": package_paths,
    "pages.static:/static/<name>": under("/-/web/static/", lambda name: st.one_of(
        st.sampled_from(("nopard.css", "favicon.png", "../app.py", "%2e%2e%2fui.py")), SEGMENT)),
    "pages.home:/": fixed("/-/web/", "q"),
    "pages.package:/package/_branch": page_paths,
    "pages.package:/package/": fixed("/-/web/package/"),
    "pages.login_form:/login": fixed("/-/web/login", "next"),
    "pages.login:/login": fixed("/-/web/login", "next"),
    "pages.logout:/logout": fixed("/-/web/logout"),
    "pages.settings:/settings": fixed("/-/web/settings", "saved"),
    "pages.blocks:/blocks": fixed("/-/web/blocks"),
    "pages.status:/status": fixed("/-/web/status"),
}

OTHER_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "TRACE", "get", "X")


def methods(route_methods: frozenset[str] | None) -> st.SearchStrategy[str]:
    """Mostly the route's own methods, sometimes any other."""
    own = sorted(route_methods or {"GET", "POST"})
    return st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from(OTHER_METHODS))


# Headers -------------------------------------------------------------------------------

ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
ACCEPT = ("application/json", "text/html", "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
          "*/*", "text/html;q=0.9, */*;q=0.1", "application/openmetrics-text; version=1.0.0", "", ";;;,,,")
CONTENT_TYPE = ("application/json", "text/plain", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x", "application/json; charset=latin-1", "", "application/octet-stream")
CONTENT_ENCODING = ("gzip", "deflate", "br", "identity", "gzip, gzip", "GZIP", "x-gzip", "")
AUTHORIZATION = ("Bearer ", "Bearer x", "Bearer " + "a" * 3000, "Basic !!!", "Digest x", "bearer", "Token x", "",
                 *("Basic " + base64.b64encode(pair).decode()
                   for pair in (b"bob:wrong", b"nocolon", b"\xff:\xfe", b"alice:" + b"x" * 2000)))

HEADERS = st.fixed_dictionaries({}, optional={
    "Accept": st.one_of(st.sampled_from(ACCEPT), ASCII),
    "Content-Type": st.one_of(st.sampled_from(CONTENT_TYPE), ASCII),
    "Content-Encoding": st.one_of(st.sampled_from(CONTENT_ENCODING), ASCII),
    "Authorization": st.one_of(st.sampled_from(AUTHORIZATION), ASCII),
    "X-Forwarded-For": st.one_of(st.sampled_from(("127.0.0.1", "::1", "10.0.0.1, 127.0.0.1", "")), ASCII),
    "X-Forwarded-Host": st.one_of(st.sampled_from(("registry.invalid", "a b", "x" * 300)), ASCII),
    "X-Forwarded-Proto": st.sampled_from(("https", "http", "gopher", "")),
    "Cookie": st.one_of(st.sampled_from(("nopard_session=" + "0" * 64, "nopard_csrf=x; nopard_session=..")), ASCII),
    "npm-command": st.sampled_from(("publish", "install", "unpublish", "")),
    "X-Nopard-Operator-Token": st.one_of(st.sampled_from(("", "o" * 42, "o" * 44, "O" * 43)), ASCII),
})


# Bodies -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def mutated_publish(name: str, version: str, mutation: str) -> dict[str, Any]:
    """A publish body for ``name@version`` as npm sends it, then broken in one way."""
    body = publish_body(name, version)
    attachment = next(iter(body["_attachments"].values()))
    if mutation == "bad base64":
        attachment["data"] = "!!!not base64"
    elif mutation == "length":
        attachment["length"] = 10**12
    elif mutation == "traversal file":
        body["_attachments"] = {"../../users/bob.json": attachment}
    elif mutation == "two attachments":
        body["_attachments"]["other-9.9.9.tgz"] = copy.deepcopy(attachment)
    elif mutation == "no versions":
        body["versions"] = {}
    elif mutation == "version mismatch":
        body["versions"] = {"6.6.6": next(iter(body["versions"].values()))}
    elif mutation == "hostile tags":
        body["dist-tags"] = {"__proto__": version, "..": version, "^1.0.0": version}
    elif mutation == "attachments list":
        body["_attachments"] = [attachment]
    elif mutation == "other name":
        body["name"] = body["_id"] = "demo"
    elif mutation == "integrity":
        manifest = next(iter(body["versions"].values()))
        manifest["dist"]["integrity"] = "sha512-" + base64.b64encode(b"x" * 64).decode()
    elif mutation == "description object":
        body["description"] = {"a": [1, 2]}
        next(iter(body["versions"].values()))["description"] = 5
    return body


MUTATIONS = ("none", "bad base64", "length", "traversal file", "two attachments", "no versions", "version mismatch",
             "hostile tags", "attachments list", "other name", "integrity", "description object")


def shaped(name: str) -> st.SearchStrategy[Any]:
    """Bodies shaped like the ones each route expects, with hostile parts."""
    user = st.one_of(st.sampled_from(("bob", "alice", "carol", "nobody", "", "__proto__", "..")), st.text(max_size=8))
    return st.one_of(
        st.builds(mutated_publish, st.just(name), VERSION, st.sampled_from(MUTATIONS)),
        st.builds(lambda users, rev: {"_id": name, "_rev": rev, "users": users},
                  st.dictionaries(user, JSON, max_size=3), SEGMENT),
        st.builds(lambda people: {"_id": name, "maintainers": people},
                  st.lists(st.fixed_dictionaries({"name": user, "email": st.text(max_size=8)}), max_size=3) | JSON),
        VERSION,  # a dist-tag's body: a JSON string
        st.builds(lambda who, pw, mail: {"name": who, "password": pw, "email": mail}, user, JSON, JSON),
        st.builds(lambda pw, ro: {"password": pw, "readonly": ro, "cidr_whitelist": ["0.0.0.0/0"]}, JSON, JSON),
        st.builds(lambda job: {"job": job}, st.sampled_from(("refresh", "backfill", "prefetch", "x", "")) | JSON),
        st.builds(lambda pairs: {"packages": pairs}, st.lists(st.tuples(st.just(name), VERSION).map(list),
                                                             max_size=2) | JSON),
        st.builds(lambda values: {"values": values}, st.dictionaries(st.text(max_size=12), JSON, max_size=2)),
        st.builds(lambda create: {"create": create}, JSON),
        st.builds(lambda versions: {"_id": name, "name": name, "versions": versions},
                  st.dictionaries(VERSION, JSON, max_size=2)),
    )


def encoded(value: Any) -> bytes:
    """JSON text, as Python writes it (NaN and huge integers included: hostile too)."""
    return json.dumps(value).encode()


FORMS = st.lists(st.tuples(st.sampled_from(("username", "password", "email", "csrf", "q", "x")), quoted_text()),
                 max_size=4).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode())


def bodies(name: str) -> st.SearchStrategy[bytes | None]:
    """No body, arbitrary JSON, route-shaped JSON, a form, or bytes that are none of those."""
    return st.one_of(st.none(), JSON.map(encoded), shaped(name).map(encoded), shaped(name).map(encoded),
                     FORMS, st.binary(max_size=200),
                     st.sampled_from((b"", b"{", b"[" * 500, b'{"a":' * 200, b"\xff\xfe", b"null", b"\x00")))


def compressed(body: bytes, how: str) -> bytes:
    """``body`` gzipped (whole, without its trailer, twice over as two members) or deflated."""
    packed = gzip.compress(body)
    return {"gzip": packed, "cut": packed[:-8], "two members": packed + gzip.compress(body),
            "deflate": zlib.compress(body)}.get(how, body)


@dataclass(frozen=True)
class Hostile:
    """One generated request."""

    caller: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None

    def describe(self) -> str:
        """The request as a failure message shows it."""
        shown = self.body[:300] if self.body else self.body
        return f"{self.caller}: {self.method} {self.path[:300]} {self.headers} {shown!r}"


@st.composite
def hostile_requests(draw: Any, routes: list[Any], callers: tuple[str, ...]) -> Hostile:
    """A request to one of ``routes`` (RegistryApp.routes) by one of ``callers``."""
    route = draw(st.sampled_from(routes))
    name = draw(NAMES)
    path = draw(ROUTE_PATHS[route.endpoint](name))
    body = draw(bodies(name))
    headers = draw(HEADERS)
    if body is not None and "Content-Encoding" in headers:
        body = compressed(body, draw(st.sampled_from(("gzip", "cut", "two members", "deflate", "plain"))))
    return Hostile(draw(st.sampled_from(callers)), draw(methods(route.methods)), path, headers, body)
