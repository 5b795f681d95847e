"""The caching proxy over HTTP: a real nopard in front of the fake upstream."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Callable

import pytest

from nopard.mirror.policy import SILENT_ENOUGH
from tests.polling import poll_text, poll_until
from tests.support import REPO, NopardServer, Response, files_under, publish_body, until_upstream_down
from tests.upstream import FakeUpstream

ABBREVIATED = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@pytest.fixture
def mirror(start_nopard: Callable[..., NopardServer], fake: FakeUpstream) -> Callable[..., NopardServer]:
    """Start a nopard mirroring the fake upstream, with settings for tests."""
    def start(**settings: str) -> NopardServer:
        env = {"NOPARD_FORWARDER_URL": fake.url, "NOPARD_STALE_DEADLINE": "0.5",
               "NOPARD_UPSTREAM_TIMEOUT": "3", "NOPARD_MAX_USERS": "2"}
        env.update({f"NOPARD_{k.upper()}": v for k, v in settings.items()})
        return start_nopard(env, name=f"mirror-{len(env)}-{time.monotonic_ns()}")
    return start


def upstream_gets(fake: FakeUpstream, path: str) -> int:
    return sum(1 for method, p in fake.stats()["requests"] if method == "GET" and p == path)


def tarball_path(server: NopardServer, manifest: dict, version: str) -> str:
    """The path of a version's tarball on nopard, as its document gives it."""
    return "/" + manifest["versions"][version]["dist"]["tarball"][len(server.url):]


def cache_status(answer: Response) -> str:
    return answer.headers.get("x-nopard-cache", "")


def test_miss_then_hit(mirror, fake: FakeUpstream) -> None:
    """The first read fetches the full document once; later reads, either form, are HITs."""
    server = mirror()
    first = server.request("GET", "/debug", headers={"Accept": ABBREVIATED})
    assert first.status == 200 and cache_status(first) == "MISS"
    assert first.headers["content-type"] == "application/vnd.npm.install-v1+json"
    for accept in (ABBREVIATED, "application/json"):
        again = server.request("GET", "/debug", headers={"Accept": accept})
        assert cache_status(again) == "HIT"
    assert upstream_gets(fake, "/debug") == 1
    assert "debug" in server.request("GET", "/debug").json()["name"]


def test_tarball_urls_point_at_nopard(mirror) -> None:
    """Every dist.tarball of a mirrored document points at nopard, scoped names too."""
    server = mirror()
    for name, path in (("debug", "/debug"), ("@types/estree", "/@types%2festree")):
        document = server.request("GET", path).json()
        for version in document["versions"].values():
            assert version["dist"]["tarball"].startswith(f"{server.url}{name}/-/")


def test_access_log_says_how_it_was_served(mirror) -> None:
    """The access line carries the cache status."""
    server = mirror()
    server.request("GET", "/semver")
    server.request("GET", "/semver")
    log = poll_text(server.log, "cache=HIT")
    assert "path=/semver status=200" in log and log.count("cache=MISS") >= 1 and "cache=HIT" in log


def test_stale_document_is_revalidated(mirror, fake: FakeUpstream) -> None:
    """With every document stale, each read revalidates with If-None-Match (304) and serves it."""
    server = mirror(meta_ttl="0.001")
    server.request("GET", "/debug")
    answer = server.request("GET", "/debug")
    assert cache_status(answer) == "REVALIDATED" and answer.status == 200
    assert upstream_gets(fake, "/debug") == 2


def test_changed_upstream_document_is_picked_up(mirror, fake: FakeUpstream) -> None:
    """A stale document whose upstream changed is replaced by the new one."""
    server = mirror(meta_ttl="0.001")
    before = server.request("GET", "/ms").json()
    fake.change("ms")
    after = server.request("GET", "/ms").json()
    assert after["dist-tags"]["latest"] != before["dist-tags"]["latest"]
    assert set(after["versions"]) > set(before["versions"])


def test_blackholed_upstream_serves_stale_then_opens_the_breaker(mirror, fake: FakeUpstream) -> None:
    """Upstream silent: one read waits the short deadline, the others are served STALE at once while one
    background revalidation at a time finds out; the breaker opens and connections stop."""
    server = mirror(meta_ttl="0.001")
    for path in ("/debug", "/ms", "/semver"):
        assert server.request("GET", path).status == 200
    fake.fault("blackhole")
    fake.reset()
    timings = []

    def stale_until_the_breaker_opens() -> bool:
        started = time.monotonic()
        assert cache_status(server.request("GET", "/debug")) == "STALE"
        timings.append(time.monotonic() - started)
        return server.request("GET", "/-/nopard/status").json()["upstreams"][0]["state"] == "open"

    poll_until(stale_until_the_breaker_opens, "the breaker to open", interval=0.1)
    assert sum(1 for t in timings if t >= 0.5) == 1  # only the first read waited
    attempts = fake.stats()["connections"]
    assert 1 <= attempts <= 3
    for path in ("/debug", "/ms", "/semver") * 3:
        assert cache_status(server.request("GET", path)) == "STALE"
    assert fake.stats()["connections"] == attempts


# A deadline longer than any request of a test may take (the client gives up after 30 s): an
# answer at all shows that nopard did not wait for it. Counted, never timed.
NEVER = "600"


def restarted_with_upstream_silent(mirror, fake: FakeUpstream) -> NopardServer:
    """A nopard that cached /debug, restarted (same port and store) after the upstream went silent;
    its stale deadline is NEVER."""
    server = mirror(meta_ttl="0.001", stale_deadline=NEVER)
    server.request("GET", "/debug")
    server.stop()
    fake.fault("blackhole")
    return server.start()


def test_stale_reads_do_not_wait_on_an_upstream_not_heard_from(mirror, fake: FakeUpstream) -> None:
    """After a restart with the upstream silent, stale documents are served at once (no deadline wait):
    answered STALE while the upstream still sits on the revalidation, with a deadline of NEVER."""
    again = restarted_with_upstream_silent(mirror, fake)
    fake.reset()
    answer = again.request("GET", "/debug")
    assert cache_status(answer) == "STALE"
    assert poll_until(lambda: upstream_gets(fake, "/debug"), "the revalidation to reach the upstream") == 1


def test_missing_document_fails_fast_while_upstream_is_down(mirror, fake: FakeUpstream) -> None:
    """With the breaker open, a name never fetched gets a clear 404 and no upstream connection."""
    server = mirror(meta_ttl="0.001")
    server.request("GET", "/debug")
    fake.fault("500")
    until_upstream_down(server, "/debug")
    fake.reset()
    answer = server.request("GET", "/semver")
    assert answer.status == 404
    assert "upstream is unreachable" in answer.json()["error"]
    assert fake.stats()["connections"] == 0


def test_upstream_500_on_a_miss_is_503(mirror, fake: FakeUpstream) -> None:
    """A name not cached while a trusted upstream answers 500: 503 with a JSON error (clients retry)."""
    server = mirror()
    assert server.request("GET", "/debug").status == 200
    fake.fault("500")
    answer = server.request("GET", "/ms")
    assert answer.status == 503 and "500" in answer.json()["error"]


def test_miss_on_an_upstream_never_heard_from_fails_fast(mirror, fake: FakeUpstream) -> None:
    """Just started and the upstream silent: a miss is a 404 after the short deadline, not the full timeout."""
    fake.fault("blackhole")
    server = mirror(stale_deadline="0.5", upstream_timeout=NEVER)
    answer = server.request("GET", "/debug")
    # Answered at all, though the upstream never answers and its timeout is NEVER.
    assert answer.status == 404 and "upstream is unreachable" in answer.json()["error"]
    assert upstream_gets(fake, "/debug") == 1


def test_upstream_404_is_remembered(mirror, fake: FakeUpstream) -> None:
    """An upstream 404 is answered 404 and not asked again within NOPARD_NOT_FOUND_TTL."""
    server = mirror()
    for _ in range(3):
        assert server.request("GET", "/no-such-package-here").status == 404
    assert upstream_gets(fake, "/no-such-package-here") == 1


def test_tarball_is_fetched_once_for_concurrent_requests(mirror, fake: FakeUpstream) -> None:
    """Eight simultaneous requests for one uncached tarball make one upstream fetch."""
    server = mirror()
    manifest = server.request("GET", "/semver").json()
    version = manifest["dist-tags"]["latest"]
    path = tarball_path(server, manifest, version)
    answers: list[Response] = []
    barrier = threading.Barrier(8)

    def fetch() -> None:
        barrier.wait()
        answers.append(server.request("GET", path))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = manifest["versions"][version]["dist"]["shasum"]
    assert [a.status for a in answers] == [200] * 8
    assert {hashlib.sha1(a.body).hexdigest() for a in answers} == {expected}
    assert upstream_gets(fake, path) == 1
    assert cache_status(server.request("GET", path)) == "HIT"


def get_whole_or_cut(server: NopardServer, path: str) -> tuple[int, bytes, bool]:
    """GET ``path``: the status, the body received, and whether it was cut before its declared end."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        try:
            return answer.status, answer.read(), False
        except http.client.IncompleteRead as cut:
            return answer.status, cut.partial, True
    finally:
        connection.close()


@pytest.mark.parametrize("fault", ["corrupt", "truncated"])
def test_bad_tarball_is_refused_and_never_stored(mirror, fake: FakeUpstream, fault: str) -> None:
    """A corrupt or truncated upstream tarball never reaches a client whole: it gets an error, or (once
    its download began, sent while the upstream sends) a body cut before its declared length. Nothing
    is stored; a good one later works."""
    server = mirror()
    manifest = server.request("GET", "/ms").json()
    version = manifest["dist-tags"]["latest"]
    path = tarball_path(server, manifest, version)
    fake.fault(fault)
    status, body, cut = get_whole_or_cut(server, path)
    assert cut or (status in (502, 503) and json.loads(body)["error"])
    assert not [f for f in files_under(server.registry) if f.endswith(".tgz")]
    fake.fault("none")
    good = server.request("GET", path)
    assert good.status == 200
    assert hashlib.sha1(good.body).hexdigest() == manifest["versions"][version]["dist"]["shasum"]


def test_private_scopes_never_go_upstream(mirror, fake: FakeUpstream) -> None:
    """Names under NOPARD_PRIVATE_SCOPES are never asked of the upstream."""
    server = mirror(private_scopes="@types,@acme")
    assert server.request("GET", "/@types%2festree").status == 404
    assert server.request("GET", "/@types/estree/-/estree-1.0.10.tgz").status == 404
    assert fake.stats()["requests"] == []


def test_local_package_is_never_looked_up_upstream(mirror, fake: FakeUpstream) -> None:
    """A name published here shadows the upstream one entirely: no upstream request, no upstream version."""
    server = mirror()
    token = server.token("alice", "pw")
    assert server.request("PUT", "/debug", publish_body("debug", "99.0.0"), token=token).status == 201
    document = server.request("GET", "/debug")
    assert cache_status(document) == "LOCAL"
    assert list(document.json()["versions"]) == ["99.0.0"]
    assert server.request("GET", "/debug/-/debug-4.4.3.tgz").status == 404
    assert upstream_gets(fake, "/debug") == 0


def test_merged_package_lists_both_and_local_wins(mirror, fake: FakeUpstream) -> None:
    """With NOPARD_MERGE_UPSTREAM, the document lists upstream and local versions; local wins a number."""
    server = mirror(merge_upstream="semver")
    upstream_document = server.request("GET", "/semver").json()
    latest = upstream_document["dist-tags"]["latest"]
    token = server.token("alice", "pw")
    body = publish_body("semver", "99.0.0")
    assert server.request("PUT", "/semver", body, token=token).status == 201
    merged = server.request("GET", "/semver").json()
    assert set(merged["versions"]) == set(upstream_document["versions"]) | {"99.0.0"}
    assert merged["dist-tags"]["latest"] == "99.0.0"
    assert server.request("GET", "/semver/-/semver-99.0.0.tgz").status == 200
    assert server.request("GET", tarball_path(server, merged, latest)).status == 200


def test_audit_is_forwarded_and_fails_fast_when_down(mirror, fake: FakeUpstream) -> None:
    """Audit POSTs reach the upstream; with the breaker open they get 503 at once."""
    server = mirror(meta_ttl="0.001")
    bulk = "/-/npm/v1/security/advisories/bulk"
    answer = server.request("POST", bulk, json.dumps({"debug": ["4.4.3"]}),
                            headers={"Content-Type": "application/json"})
    assert answer.status == 200 and answer.json() == {}
    fake.fault("500")
    for _ in range(3):
        server.request("POST", bulk, "{}", headers={"Content-Type": "application/json"})
    fake.reset()
    down = server.request("POST", bulk, "{}", headers={"Content-Type": "application/json"})
    assert down.status == 503 and down.json()["error"]
    assert fake.stats()["connections"] == 0


def test_auto_forward_off_serves_only_what_is_mirrored(mirror, fake: FakeUpstream) -> None:
    """NOPARD_AUTO_FORWARD=no: names never mirrored are 404 without asking the upstream."""
    server = mirror(auto_forward="no")
    assert server.request("GET", "/debug").status == 404
    assert fake.stats()["requests"] == []


def test_upstream_through_a_proxy(mirror, fake: FakeUpstream, tmp_path) -> None:
    """NOPARD_PROXY_URL: upstream requests go through the proxy."""
    import subprocess
    import sys

    from tests.support import REPO

    log = tmp_path / "proxy.log"
    proxy = subprocess.Popen([sys.executable, "-m", "tests.proxy_server", "--log", str(log)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proxy.stdout.readline().split()[1])
        server = mirror(proxy_url=f"http://127.0.0.1:{port}")
        assert server.request("GET", "/semver").status == 200
        assert f"GET {fake.url}semver" in log.read_text()
    finally:
        proxy.terminate()
        proxy.wait()


def test_scope_upstream_with_its_own_token(mirror, fake: FakeUpstream) -> None:
    """A scope configured with its own upstream and token is fetched there, with the token; others are not."""
    with FakeUpstream() as corporate:
        server = mirror(scope_upstreams=f"@types={corporate.url}", scope_tokens="@types=corp-secret")
        assert server.request("GET", "/@types%2festree").status == 200
        assert server.request("GET", "/debug").status == 200
        assert corporate.stats()["authorizations"] == [["/@types/estree", "Bearer corp-secret"]]
        assert [p for _, p in corporate.stats()["requests"]] == ["/@types/estree"]
        assert "/@types/estree" not in [p for _, p in fake.stats()["requests"]]
        assert fake.stats()["authorizations"] == []


def test_huge_tarball_is_streamed_with_bounded_memory(start_nopard, tmp_path) -> None:
    """A 100 MB upstream tarball is verified and served while nopard's memory stays far below its size."""
    with FakeUpstream(extra_args=("--huge-size", str(100 * 1024 * 1024))) as upstream:
        server = start_nopard({"NOPARD_FORWARDER_URL": upstream.url}, name="huge")
        document = server.request("GET", "/huge-tarball-package").json()
        dist = document["versions"]["1.0.0"]["dist"]
        before_kb = peak_memory_kb(server)

        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.request("GET", "/" + dist["tarball"][len(server.url):])
        answer = connection.getresponse()
        assert answer.status == 200
        digest, size = hashlib.sha1(), 0
        while chunk := answer.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        connection.close()
        assert size == 100 * 1024 * 1024 and digest.hexdigest() == dist["shasum"]
        grown_kb = peak_memory_kb(server) - before_kb
        assert grown_kb < 20 * 1024, f"nopard's peak memory grew by {grown_kb} kB"


def peak_memory_kb(server: NopardServer) -> int:
    """The nopard process's peak resident memory so far (VmHWM)."""
    with open(f"/proc/{server.process.pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


def test_status_shows_upstream_health_and_cache_use(mirror, fake: FakeUpstream) -> None:
    """GET /-/nopard/status tells whether the upstream counts as down and what the cache holds."""
    server = mirror(meta_ttl="0.001")
    server.request("GET", "/debug")
    healthy = server.request("GET", "/-/nopard/status").json()
    assert healthy["upstreams"] == [{"url": fake.url.rstrip("/"), "state": "closed",
                                     "consecutive_failures": 0, "requests": 1, "down_since": None}]
    fake.fault("500")
    until_upstream_down(server, "/debug")
    down = server.request("GET", "/-/nopard/status").json()
    assert down["upstreams"][0]["state"] == "open"
    assert time.time() - 30 < down["upstreams"][0]["down_since"] <= time.time()
    assert down["cache"]["entries"] == 1
    poll_text(server.log, f"upstream {fake.url.rstrip('/')} is down after 3 failures: serving from nopard's copies")


def test_memory_held_stays_within_the_setting(mirror, fake: FakeUpstream) -> None:
    """Reading every recorded package with a 64 kB budget: prepared documents never exceed it."""
    server = mirror(memory_cache_size="64kb")
    index = json.loads((REPO / "tests" / "data" / "upstream" / "index.json").read_text())
    most_entries = 0
    for name in index["packages"]:
        assert server.request("GET", "/" + name.replace("/", "%2f")).status == 200
        cache = server.request("GET", "/-/nopard/status").json()["cache"]
        assert cache["bytes"] <= cache["limit"] == 64 * 1024
        most_entries = max(most_entries, cache["entries"])
    assert 0 < most_entries < len(index["packages"])


def test_slow_upstream_serves_stale_after_the_deadline(mirror, fake: FakeUpstream) -> None:
    """An upstream slower than NOPARD_STALE_DEADLINE: the stale document is served when the deadline passes."""
    server = mirror(meta_ttl="0.001", stale_deadline="0.3")
    server.request("GET", "/semver")
    fake.fault("slow", delay=float(NEVER))
    fake.reset()
    answer = server.request("GET", "/semver")
    # Served while the upstream sits on the revalidation for NEVER seconds.
    assert cache_status(answer) == "STALE" and answer.status == 200
    assert upstream_gets(fake, "/semver") == 1


def test_quick_audit_is_forwarded(mirror) -> None:
    """pnpm's and yarn 1's audit route reaches the upstream and returns its report."""
    server = mirror()
    answer = server.request("POST", "/-/npm/v1/security/audits/quick", json.dumps({"name": "x", "requires": {}}),
                            headers={"Content-Type": "application/json"})
    assert answer.status == 200 and "advisories" in answer.json()


def test_miss_after_upstream_failures_is_a_quick_404(mirror, fake: FakeUpstream) -> None:
    """Once the upstream has failed, a name never fetched gets 404 within the short deadline, not a
    503 after the full timeout (npm would retry a 503 for a minute, even for an optional package)."""
    server = mirror(stale_deadline="0.5", upstream_timeout=NEVER)
    server.request("GET", "/debug")
    fake.fault("500")
    assert server.request("GET", "/ms").status == 503  # the first failure: clients may retry
    fake.fault("blackhole")
    answer = server.request("GET", "/semver")
    # Answered at all, though the upstream never answers and its timeout is NEVER.
    assert answer.status == 404 and "upstream is unreachable" in answer.json()["error"]


def test_refused_connections_open_the_breaker(mirror, fake: FakeUpstream) -> None:
    """Upstream refusing connections: stale documents are served and the breaker opens."""
    server = mirror(meta_ttl="0.001")
    server.request("GET", "/ms")
    fake.fault("refused")
    try:
        def stale_until_the_breaker_opens() -> bool:
            assert cache_status(server.request("GET", "/ms")) == "STALE"
            return server.request("GET", "/-/nopard/status").json()["upstreams"][0]["state"] == "open"

        poll_until(stale_until_the_breaker_opens, "the breaker to open")
        assert server.request("GET", "/never-fetched").status == 404
    finally:
        fake.fault("none")


def test_late_answer_to_a_miss_is_kept(mirror, fake: FakeUpstream) -> None:
    """An upstream not yet trusted that answers after the deadline: the client got a 404, but the
    document fetched in the background is stored and served next time without asking again."""
    fake.fault("slow", delay=1)
    server = mirror(stale_deadline="0.3")
    assert server.request("GET", "/semver").status == 404
    fake.fault("none")
    poll_until((server.registry / "packages" / "semver" / "upstream" / "meta.json").exists,
               "the late answer to be stored", 10, 0.1)
    answer = server.request("GET", "/semver")
    assert answer.status == 200 and cache_status(answer) == "HIT"
    assert upstream_gets(fake, "/semver") == 1


def test_miss_fails_at_once_while_the_upstream_sits_on_a_request(mirror, fake: FakeUpstream) -> None:
    """After a restart with the upstream silent, once a background revalidation has gone unanswered
    for a moment, a name never fetched is a 404 at once (no second deadline wait)."""
    again = restarted_with_upstream_silent(mirror, fake)
    sent = time.monotonic()
    assert cache_status(again.request("GET", "/debug")) == "STALE"  # starts a background revalidation
    # Wait (not assert) until that revalidation has gone unanswered for longer than SILENT_ENOUGH.
    poll_until(lambda: time.monotonic() - sent > 2 * SILENT_ENOUGH, "the upstream to sit on it a moment")
    # Answered at all with a stale deadline of NEVER: no deadline wait.
    assert again.request("GET", "/semver").status == 404
