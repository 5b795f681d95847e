"""The wrk runs of scripts/bench: nopard alone, behind nginx, with N workers, and a peer.

One warm store serves every run: nopard alone (its ping, documents and a tarball), then nginx
in front of it sending that tarball's store file itself (the limit), proxying to nopard, and
following nopard's X-Accel-Redirect (decision cache off and 10 s); then nopard with
NOPARD_WORKERS=auto on the same store; then, with --peer, the peer registry warmed with the
same document and tarball. Each run's wrk figures go into ``results``; bench/goals.py puts
them side by side.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from pathlib import Path

from bench import report, say, wrk
from bench.nginx import DIRECT, start_nginx
from bench.servers import INSTALL_ACCEPT, WARM_TTL, get, peak_rss, start_nopard, tree_peak_rss
from tests.upstream import FakeUpstream

BIG = "big-package"
# The tarball every server sends: a real one of tests/data/projects/tree (52 KiB), of a package
# with an ordinary document (big-package's is huge: a registry that reads a package's document
# to send one of its tarballs would be measured on that instead).
TARBALL = ("commander", "15.1.0")
ACCEL_PREFIX = "/_nopard_store/"
ABBREVIATED, FULL, GZIP = {"Accept": INSTALL_ACCEPT}, {"Accept": "application/json"}, {"Accept-Encoding": "gzip"}


class Wrk:
    """wrk with the command line's threads, connections and duration."""

    def __init__(self, path: str, args) -> None:
        self.path, self.args = path, args

    def __call__(self, label: str, url: str, headers: dict[str, str] | None = None,
                 timeout: float | None = None) -> dict:
        """One run against ``url``; its figures as a dict (wrk.WrkResult's fields). ``timeout``
        is wrk's (2 s by default): answers slower than that count as errors, not in latencies."""
        say(f"wrk {label} ({self.args.duration:g} s)")
        measured, _ = wrk.run(self.path, url, headers or {}, self.args.threads, self.args.connections,
                              self.args.duration, timeout)
        errors = measured.non_2xx_3xx + measured.socket_errors
        say(f"  {measured.requests_per_sec:,.0f} req/s, p99 {report.millis(measured.latency_ms.get('99'))}"
            + (f", {errors} ERRORS" if errors else ""))
        return measured.as_dict()


def tarball_path(base_url: str) -> str:
    """The path of TARBALL on the registry at ``base_url`` (its document fetched, so the
    registry has it)."""
    name, version = TARBALL
    document = get(base_url, f"/{name}", FULL).json()
    return urllib.parse.urlsplit(document["versions"][version]["dist"]["tarball"]).path


def stored_file(store: Path, filename: str) -> Path:
    """The tarball file named ``filename`` in nopard's filesystem store."""
    found = sorted(store.glob(f"packages/**/tarballs/{filename}"))
    if not found:
        raise RuntimeError(f"{filename} is not in the store {store}")
    return found[0]


def http_phase(args, wrk_path: str, upstream: FakeUpstream, work: Path, results: dict) -> None:
    """Every wrk run, in the order the module's docstring gives."""
    run = Wrk(wrk_path, args)
    store_dir = work / "http-nopard"
    with contextlib.ExitStack() as stack:
        shared = {}
        if args.redis:
            from tests.redis_server import RedisServer

            shared["NOPARD_REDIS_URL"] = stack.enter_context(RedisServer()).url
        server = start_nopard(stack, store_dir, upstream, args, NOPARD_META_TTL=WARM_TTL, **shared)
        say(f"warming nopard: {BIG}'s documents and a tarball of {TARBALL[0]}")
        tarball = tarball_path(server.url)
        filename = tarball.rsplit("/", 1)[-1]
        targets = [("ping", "/-/ping", "/-/ping", {}),
                   ("doc", "abbreviated doc, identity", f"/{BIG}", ABBREVIATED),
                   ("doc_gzip", "abbreviated doc, gzip", f"/{BIG}", {**ABBREVIATED, **GZIP}),
                   ("full", "full doc, identity", f"/{BIG}", FULL),
                   ("full_gzip", "full doc, gzip", f"/{BIG}", {**FULL, **GZIP}),
                   ("tarball", f"tarball {filename}", tarball, {})]
        # One request each first: nopard fetches and prepares whatever it lacks, and the
        # body size shows what every request of that run carries.
        sizes = {key: len(get(server.url, path, headers).body) for key, _, path, headers in targets}
        runs = results["http"] = []
        alone = {}
        for key, label, path, headers in targets:
            alone[key] = run(label, server.url.rstrip("/") + path, headers)
            runs.append({"label": label, "path": path, "headers": headers, "body_bytes": sizes[key],
                         "wrk": alone[key]})
        results["nopard_peak_rss"] = peak_rss(server.process.pid)
        side = results["side"] = {"file": filename, "bytes": sizes["tarball"],
                                  "ping": alone["ping"], "doc": alone["doc"], "nopard": alone["tarball"]}
        if not args.skip_nginx:
            behind_nginx(args, run, upstream, server, tarball, side, stack)
        if not args.skip_workers:
            results["workers"] = workers(args, run, upstream, store_dir, tarball, alone, results, stack)
    if args.peer:
        peer_runs(run, upstream, work, side, results)


def behind_nginx(args, run: Wrk, upstream: FakeUpstream, server, tarball: str, side: dict,
                 stack: contextlib.ExitStack) -> None:
    """nginx sending the store file itself, proxying to nopard, and following its accel redirects."""
    store = server.registry
    relative = stored_file(store, side["file"]).relative_to(store)
    nginx = start_nginx(server.workdir / "nginx", server.port, store)
    stack.callback(nginx.stop)
    direct = f"{DIRECT}{relative}"
    if len(get(nginx.url, direct).body) != side["bytes"]:
        raise RuntimeError(f"nginx sent {direct} with another size than nopard's tarball")
    side["nginx_direct"] = run("nginx sending the store file itself", nginx.url + direct)
    side["nginx_proxy"] = run("nginx proxying to nopard (no accel)", nginx.url + tarball)
    for ttl in (0, 10):
        server.stop()
        server = start_nopard(stack, server.workdir, upstream, args, port=server.port, NOPARD_META_TTL=WARM_TTL,
                              NOPARD_ACCEL_REDIRECT=ACCEL_PREFIX, NOPARD_ACCEL_CACHE_TTL=str(ttl))
        if "x-accel-redirect" not in get(server.url, tarball).headers:
            raise RuntimeError("nopard with NOPARD_ACCEL_REDIRECT answered the tarball without X-Accel-Redirect")
        if len(get(nginx.url, tarball).body) != side["bytes"]:
            raise RuntimeError("nginx following nopard's X-Accel-Redirect sent another size than the tarball")
        side[f"accel_{ttl}"] = run(f"nginx + accel redirect, decision cache {ttl} s", nginx.url + tarball)
    server.stop()
    nginx.stop()


def workers(args, run: Wrk, upstream: FakeUpstream, store_dir: Path, tarball: str, alone: dict,
            results: dict, stack: contextlib.ExitStack) -> dict:
    """nopard with NOPARD_WORKERS=auto on the same store: ping, abbreviated document, tarball."""
    server = start_nopard(stack, store_dir, upstream, args, NOPARD_META_TTL=WARM_TTL, NOPARD_WORKERS="auto")
    # Every worker reads the document and tarball once before wrk measures (the connections
    # are spread over them, so a few rounds reach each).
    for _ in range(4 * report.usable_cpus()):
        get(server.url, f"/{BIG}", ABBREVIATED)
        get(server.url, tarball)
    many = {"ping": run("/-/ping, NOPARD_WORKERS=auto", server.url + "-/ping"),
            "doc": run("abbreviated doc, NOPARD_WORKERS=auto", server.url + BIG, ABBREVIATED),
            "tarball": run("tarball, NOPARD_WORKERS=auto", server.url.rstrip("/") + tarball)}
    rss = tree_peak_rss(server.process.pid)
    server.stop()
    return {"count": report.usable_cpus(), "one": {key: alone[key] for key in ("ping", "doc", "tarball")},
            "many": many, "rss_one": results.get("nopard_peak_rss"), "rss_many": rss}


def peer_runs(run: Wrk, upstream: FakeUpstream, work: Path, side: dict, results: dict) -> None:
    """The peer registry, warmed with big-package's document and tarball: ping, document, tarball."""
    from bench.peer import Verdaccio

    with Verdaccio(work / "http-verdaccio", upstream.url) as peer:
        say(f"warming {peer.name}: {BIG}'s document and a tarball of {TARBALL[0]}")
        tarball = tarball_path(peer.url)
        get(peer.url, f"/{BIG}", ABBREVIATED)
        if len(get(peer.url, tarball).body) != side["bytes"]:
            raise RuntimeError(f"{peer.name} sent {tarball} with another size than nopard")
        # The document last: a slow answer would still be working while the next run starts.
        side["peer"] = {"name": peer.name, "version": peer.version,
                        "ping": run(f"{peer.name} /-/ping", peer.url + "-/ping"),
                        "tarball": run(f"{peer.name} tarball", peer.url.rstrip("/") + tarball),
                        "doc": run(f"{peer.name} abbreviated doc", peer.url + BIG, ABBREVIATED, timeout=30)}
        results["peer_peak_rss"] = peak_rss(peer.process.pid)
