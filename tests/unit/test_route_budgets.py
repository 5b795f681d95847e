"""What one anonymous request may cost, per route, as counted quantities (never wall time).

Every route the app mounts (RegistryApp.routes) has at least one anonymous request in
``CASES``; a route without one fails the suite. Each request runs on a fresh copy of one
registry (tests/unit/hostile_world.py) whose store is wrapped to count its calls, and is
held to its budget: store reads and writes, requests to the upstream (a cold mirrored
read asks once, a warm one never), web-login sessions held and readmes rendered. The body
limits are held generically too: on every route, an oversized body is refused having
buffered no more than the route's limit (nopard.web.bodies.body_limit).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from nopard.web.bodies import body_limit
from tests.unit.hostile_world import World, fake_upstream, fresh_directory, make_worlds
from tests.unit.mirror_harness import FakeRegistry
from tests.unit.route_harness import build

READS = ("read", "read_versioned", "exists", "open", "list", "sizes", "usage")
WRITES = ("write", "create", "replace", "create_from_file", "delete", "delete_versioned")
MAX_BODY = 64 * 1024  # NOPARD_MAX_BODY_SIZE here: the largest route limit


class CountingStorage:
    """A store that counts the calls made to it, by kind (reads, writes)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads = 0
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name not in READS + WRITES:
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            if name in READS:
                self.reads += 1
            else:
                self.writes += 1
            return found(*args, **kwargs)
        return counted


@dataclass(frozen=True)
class Budget:
    """One anonymous request and the most it may cost (upstream requests: exactly); ``warm``
    requests are sent first, uncounted. The figures are what nopard spends today: a change
    that spends more fails here, and one that spends less may lower them."""

    endpoint: str
    method: str
    path: str
    reads: int
    writes: int = 0
    upstream: int = 0
    sessions: int = 0
    renders: int = 0
    body: Any = None
    warm: tuple[str, ...] = field(default=())


TARBALL = "/mirrored-pkg/-/mirrored-pkg-1.0.0.tgz"
COLD_TARBALL = "/@ext/mirrored/-/mirrored-1.0.0.tgz"
CASES = (
    Budget("web.root:/", "GET", "/", 0),
    # The search index's first build reads every stored document and each package's blocks.
    Budget("web.web:/-/web/", "GET", "/-/web/", 16),
    Budget("web.web:/-/web/_branch", "GET", "/-/web/nothing", 0),
    Budget("operations.ping:/-/ping", "GET", "/-/ping", 0),
    Budget("operations.status:/-/nopard/status", "GET", "/-/nopard/status", 0),
    Budget("operations.health_check:/-/nopard/health", "GET", "/-/nopard/health", 1, writes=2),
    # The probe's answer is kept briefly: the next health check costs the store nothing.
    Budget("operations.health_check:/-/nopard/health", "GET", "/-/nopard/health", 0, warm=("/-/nopard/health",)),
    Budget("operations.metrics_exposition:/-/metrics", "GET", "/-/metrics", 0),
    Budget("operations.sync_status:/-/nopard/sync", "GET", "/-/nopard/sync", 0),
    Budget("operations.sync_now:/-/nopard/sync", "POST", "/-/nopard/sync", 0, body={"job": "refresh"}),
    Budget("operations.prefetch:/-/nopard/prefetch", "POST", "/-/nopard/prefetch", 0,
           body={"packages": [["mirrored-pkg", "1.0.0"]]}),
    Budget("accounts.whoami:/-/whoami", "GET", "/-/whoami", 0),
    # The users' object (users/htpasswd) when due, and again before refusing (a user just added elsewhere).
    Budget("accounts.login:/-/user/<userid>", "PUT", "/-/user/org.couchdb.user:bob", 2,
           body={"name": "bob", "password": "wrong"}),
    # The users' object read and swapped (compare-and-swap), the profile and token written; a login
    # answers the rev of the profile it stored: one read.
    Budget("accounts.login:/-/user/<userid>", "PUT", "/-/user/org.couchdb.user:newcomer", 3, writes=3,
           body={"name": "newcomer", "password": "new-secret", "email": "n@example.test"}),
    Budget("accounts.user_profile:/-/user/<userid>", "GET", "/-/user/org.couchdb.user:bob", 0),
    Budget("accounts.logout:/-/user/token/<token>", "DELETE", "/-/user/token/npd_nothing", 0),
    Budget("accounts.list_tokens:/-/npm/v1/tokens", "GET", "/-/npm/v1/tokens", 0),
    Budget("accounts.create_token:/-/npm/v1/tokens", "POST", "/-/npm/v1/tokens", 0, body={"password": "x"}),
    Budget("accounts.revoke_token:/-/npm/v1/tokens/token/<path:key>", "DELETE", "/-/npm/v1/tokens/token/abc", 0),
    Budget("profile.get:/-/npm/v1/user", "GET", "/-/npm/v1/user", 0),
    Budget("profile.set:/-/npm/v1/user", "POST", "/-/npm/v1/user", 0,
           body={"tfa": {"mode": "auth-only", "password": "x"}}),
    Budget("weblogin.start:/-/v1/login", "POST", "/-/v1/login", 0, sessions=1, body={}),
    Budget("weblogin.form:/-/v1/login/<session_id>", "GET", "/-/v1/login/" + "0" * 64, 0),
    Budget("weblogin.submit:/-/v1/login/<session_id>", "POST", "/-/v1/login/" + "0" * 64, 0),
    Budget("weblogin.done:/-/v1/done/<session_id>", "GET", "/-/v1/done/" + "0" * 64, 0),
    Budget("search.search_packages:/-/v1/search", "GET", "/-/v1/search?text=demo", 16),
    Budget("search.search_packages:/-/v1/search", "GET", "/-/v1/search?text=demo", 0, warm=("/-/v1/search?text=x",)),
    Budget("search.audit:/-/npm/v1/security/advisories/bulk", "POST", "/-/npm/v1/security/advisories/bulk", 0,
           upstream=1, body={"demo": ["1.0.0"]}),
    Budget("search.audit:/-/npm/v1/security/audits/quick", "POST", "/-/npm/v1/security/audits/quick", 0,
           upstream=1, body={}),
    Budget("search.audit:/-/npm/v1/security/audits", "POST", "/-/npm/v1/security/audits", 0, upstream=1, body={}),
    # The advisories index, then (for a stored record) the shard of each package it names.
    Budget("search.advisory:/-/npm/v1/security/advisories/<osv_id>", "GET",
           "/-/npm/v1/security/advisories/GHSA-2222-3333-4444", 1),
    # The first ask makes nopard's key and keeps the upstream's list; later ones only read both.
    Budget("provenance.keys:/-/npm/v1/keys", "GET", "/-/npm/v1/keys", 3, writes=2, upstream=1),
    Budget("provenance.keys:/-/npm/v1/keys", "GET", "/-/npm/v1/keys", 2, warm=("/-/npm/v1/keys",)),
    Budget("provenance.attestations:/-/npm/v1/attestations/", "GET", "/-/npm/v1/attestations/", 0),
    # A mirrored version whose manifest names no attestations: a 404 without asking the upstream.
    Budget("provenance.attestations:/-/npm/v1/attestations/_branch", "GET",
           "/-/npm/v1/attestations/mirrored-pkg@1.0.0", 3, warm=("/mirrored-pkg",)),
    Budget("settings.get_settings:/-/nopard/settings", "GET", "/-/nopard/settings", 0),
    Budget("blocks.list_blocks:/-/nopard/blocks", "GET", "/-/nopard/blocks", 0),
    # A page of the changes feed reads at most the two segments its changes are in.
    Budget("changes.changes:/-/nopard/changes", "GET", "/-/nopard/changes?since=0&limit=1000", 2),
    # Where the feed is now: the head hint and its segment.
    Budget("changes.changes:/-/nopard/changes", "GET", "/-/nopard/changes?since=now", 2),
    Budget("blocks.add_block:/-/nopard/blocks", "POST", "/-/nopard/blocks", 0,
           body={"spec": "demo@1.0.0", "reason": "x"}),
    Budget("blocks.remove_block:/-/nopard/blocks/<block_id>", "DELETE", "/-/nopard/blocks/0123456789abcdef", 0),
    Budget("settings.put_settings:/-/nopard/settings", "PUT", "/-/nopard/settings", 0, body={"values": {}}),
    Budget("packages.starred_by_user:/-/_view/starredByUser", "GET", '/-/_view/starredByUser?key="bob"', 5),
    Budget("packages.package_action:/-/package/<path:ignored>", "GET", "/-/package/demo/dist-tags", 2),
    Budget("packages.package_action:/-/package/<path:ignored>", "PUT", "/-/package/demo/dist-tags/next", 0,
           body="1.0.0"),
        # A document prepared reads the package's blocks too (blocks/<name>.json; nopard.firewall), and
    # so does the first tarball of a package this process holds no prepared document of.
    Budget("packages.package:/<path:ignored>", "GET", "/demo", 2),
    Budget("packages.package:/<path:ignored>", "GET", "/demo", 0, warm=("/demo",)),
    Budget("packages.package:/<path:ignored>", "GET", "/demo/1.0.0", 2),
    Budget("packages.package:/<path:ignored>", "GET", "/demo/-/demo-1.0.0.tgz", 2),
    # A document fetched upstream is a change in the changes feed: its head hint read, the last
    # segment read and swapped (nopard.catalog.changes).
    Budget("packages.package:/<path:ignored>", "GET", "/@ext%2fmirrored", 6, writes=3, upstream=1),
    Budget("packages.package:/<path:ignored>", "GET", "/@ext%2fmirrored", 0, warm=("/@ext%2fmirrored",)),
    Budget("packages.package:/<path:ignored>", "GET", COLD_TARBALL, 9, writes=4, upstream=2),
    Budget("packages.package:/<path:ignored>", "GET", TARBALL, 7, writes=1, upstream=1),
    Budget("packages.package:/<path:ignored>", "GET", TARBALL, 0, warm=(TARBALL,)),
    Budget("packages.package:/<path:ignored>", "GET", "/demo/-/demo-1.0.0.tgz", 0, warm=("/demo/-/demo-1.0.0.tgz",)),
    Budget("packages.package:/<path:ignored>", "GET", "/no-such-package", 3, upstream=1),
    Budget("packages.package:/<path:ignored>", "PUT", "/demo", 0, body={"_id": "demo", "users": {"x": True}}),
    Budget("packages.package:/<path:ignored>", "DELETE", "/demo/-rev/1-abc", 0),
    Budget("pages.static:/static/<name>", "GET", "/-/web/static/nopard.css", 0),
    Budget("pages.home:/", "GET", "/-/web/", 16),
    Budget("pages.package:/package/_branch", "GET", "/-/web/package/demo", 4, renders=1),
    Budget("pages.package:/package/_branch", "GET", "/-/web/package/demo", 2, warm=("/-/web/package/demo",)),
    Budget("pages.package:/package/_branch", "POST", "/-/web/package/mirrored-pkg/refresh", 0),
    Budget("pages.package:/package/", "GET", "/-/web/package/", 0),
    Budget("pages.login_form:/login", "GET", "/-/web/login", 0),
    Budget("pages.login:/login", "POST", "/-/web/login", 0),
    Budget("pages.logout:/logout", "POST", "/-/web/logout", 0),
    Budget("pages.settings:/settings", "GET", "/-/web/settings", 0),
    Budget("pages.blocks:/blocks", "GET", "/-/web/blocks", 0),
    Budget("pages.blocks:/blocks", "POST", "/-/web/blocks", 0),
    Budget("pages.status:/status", "GET", "/-/web/status", 1),
)


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The registry every case runs on a copy of (users, local, scoped and mirrored packages)."""
    return make_worlds(tmp_path_factory.mktemp("worlds"))[0]


def test_every_route_has_a_budget(tmp_path: Path) -> None:
    """A route added to the app without an anonymous budget here fails the suite."""
    app = build(tmp_path)
    assert app.app is not None
    mounted = {route.endpoint for route in app.app.routes()}
    assert mounted - {case.endpoint for case in CASES} == set()
    assert {case.endpoint for case in CASES} - mounted == set()


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.method} {case.path}")
@pytest_twisted.ensureDeferred
async def test_an_anonymous_request_costs_at_most_its_budget(public: World, case: Budget) -> None:
    """Store reads and writes, upstream requests, sessions held and readmes rendered by one request."""
    directory = fresh_directory()
    try:
        counting: list[CountingStorage] = []
        upstream: FakeRegistry = fake_upstream()

        def wrap(inner: Any) -> CountingStorage:
            counting.append(CountingStorage(inner))
            return counting[0]

        app = public.open(directory, upstream=upstream, wrap_storage=wrap)
        for path in case.warm:
            await app.call("GET", path)
        store, asked, sessions, renders = counting[0], upstream.asked(), app.sessions.held(), app.readmes.renders
        store.reads = store.writes = 0
        answer = await app.call(case.method, case.path, case.body)
        spent = {"reads": store.reads, "writes": store.writes, "upstream": upstream.asked() - asked,
                 "sessions": app.sessions.held() - sessions, "renders": app.readmes.renders - renders}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    allowed = {"reads": case.reads, "writes": case.writes, "upstream": case.upstream, "sessions": case.sessions,
               "renders": case.renders}
    assert answer.status < 500, answer.body
    assert {k: v for k, v in spent.items() if v > allowed[k]} == {}, (answer.status, spent)
    assert spent["upstream"] == case.upstream, spent  # a cold mirrored read asks once, a warm one never


@pytest.mark.parametrize("endpoint", sorted({case.endpoint for case in CASES}))
@pytest_twisted.ensureDeferred
async def test_no_route_buffers_more_than_its_body_limit(tmp_path: Path, endpoint: str) -> None:
    """A chunked body that never ends, on every route: refused once past the route's limit,
    having buffered at most that limit (web/bodies.py decides it from the method and path)."""
    case = next(case for case in CASES if case.endpoint == endpoint)
    app = build(tmp_path, max_body_size=str(MAX_BODY))
    limit = body_limit(case.method.encode(), case.path.encode(), MAX_BODY).size
    piece = b"1000\r\n" + b"[" * 4096 + b"\r\n"
    head = (f"{case.method} {case.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n").encode()
    exchange = await app.raw(head, [piece] * (limit // 4096 + 3))
    assert exchange.status == 413, exchange.reply[:300]
    assert exchange.request.content.tell() <= limit
