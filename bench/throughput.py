"""The wrk runs of scripts/bench: nopard alone, behind nginx, with N workers, and a peer.

One warm store serves every nopard: nopard alone (its ping, documents and a tarball); nginx in
front of it, sending that tarball's store file itself (the limit) and proxying to nopard; two
more nopards following X-Accel-Redirect (decision cache off and 10 s), each behind its own
nginx; nopard with NOPARD_WORKERS=auto; with --peer, the peer registry warmed with the same
document and tarball. All run at once, and the runs compared go in turn, round after round
(--rounds), so that load from elsewhere on a shared machine falls on one round of each rather
than on all of one; the best round of each is kept. bench/goals.py puts them side by side.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from pathlib import Path
from typing import NamedTuple

from bench import report, say, wrk
from bench.nginx import DIRECT, ONE_HOP, start_nginx
from bench.servers import INSTALL_ACCEPT, WARM_TTL, get, peak_rss, start_nopard, tree_peak_rss, written
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
    """Every server started at once on one warm store, then every wrk run of the module's
    docstring, in ``args.rounds`` interleaved rounds; the best round of each is kept."""
    run = Wrk(wrk_path, args)
    with contextlib.ExitStack() as stack:
        shared = {}
        if args.redis:
            from tests.redis_server import RedisServer

            shared["NOPARD_REDIS_URL"] = stack.enter_context(RedisServer()).url
        server = start_nopard(stack, work / "http-nopard", upstream, args, NOPARD_META_TTL=WARM_TTL, **shared)
        say(f"warming nopard: {BIG}'s documents and a tarball of {TARBALL[0]}")
        tarball = tarball_path(server.url)
        filename = tarball.rsplit("/", 1)[-1]
        documents = [("doc_gzip", "abbreviated doc, gzip", f"/{BIG}", {**ABBREVIATED, **GZIP}),
                     ("full", "full doc, identity", f"/{BIG}", FULL),
                     ("full_gzip", "full doc, gzip", f"/{BIG}", {**FULL, **GZIP})]
        base = server.url.rstrip("/")
        targets = {"ping": Target("/-/ping", base + "/-/ping"),
                   "doc": Target("abbreviated doc, identity", f"{base}/{BIG}", ABBREVIATED),
                   "nopard": Target(f"tarball {filename}", base + tarball)}
        # One request each first: nopard fetches and prepares whatever it lacks, and the
        # body size shows what every request of that run carries.
        sizes = {key: len(get(server.url, path, headers).body) for key, _, path, headers in documents}
        sizes.update({key: len(get(target.url, urllib.parse.urlsplit(target.url).path, target.headers).body)
                      for key, target in targets.items()})
        side = results["side"] = {"file": filename, "bytes": sizes["nopard"]}
        written(server)  # the other servers read the store it filled: nginx, the workers, more nopards
        if not args.skip_nginx:
            targets.update(behind_nginx(args, upstream, server, tarball, side, stack))
        workers_server = None
        if not args.skip_workers:
            workers_server = start_workers(args, upstream, server, tarball, stack)
            base = workers_server.url.rstrip("/")
            targets.update({"w_ping": Target("/-/ping, NOPARD_WORKERS=auto", base + "/-/ping"),
                            "w_doc": Target("abbreviated doc, NOPARD_WORKERS=auto", f"{base}/{BIG}", ABBREVIATED),
                            "w_tarball": Target("tarball, NOPARD_WORKERS=auto", base + tarball)})
        quarantined = start_quarantined(args, upstream, server, stack)
        targets["q_doc"] = Target("abbreviated doc, NOPARD_MIN_RELEASE_AGE=3d",
                                  f"{quarantined.url.rstrip('/')}/{BIG}", ABBREVIATED)
        peer = start_peer(upstream, work, side, stack) if args.peer else None
        if peer is not None:
            base = peer.url.rstrip("/")
            targets.update({"p_ping": Target(f"{peer.name} /-/ping", base + "/-/ping"),
                            "p_tarball": Target(f"{peer.name} tarball", base + tarball_path(peer.url))})
        best = rounds(run, targets, args.rounds)
        results["http"] = [{"label": targets[key].label, "path": urllib.parse.urlsplit(targets[key].url).path,
                            "headers": targets[key].headers, "body_bytes": sizes[key], "wrk": best[key]}
                           for key in ("ping", "doc")]
        for key, label, path, headers in documents:
            results["http"].append({"label": label, "path": path, "headers": headers, "body_bytes": sizes[key],
                                    "wrk": run(label, base_of(server) + path, headers)})
        results["http"].append({"label": targets["nopard"].label, "path": tarball, "headers": {},
                                "body_bytes": sizes["nopard"], "wrk": best["nopard"]})
        results["nopard_peak_rss"] = peak_rss(server.process.pid)
        side["doc_quarantine"] = best["q_doc"]
        side.update({key: best[key] for key in ("ping", "doc", "nopard", "nginx_direct", "nginx_proxy",
                                               "nginx_one_hop", "accel_0", "accel_one_hop", "accel_10")
                     if key in best})
        if workers_server is not None:
            results["workers"] = {
                "count": report.usable_cpus(), "one": {"ping": best["ping"], "doc": best["doc"],
                                                       "tarball": best["nopard"]},
                "many": {"ping": best["w_ping"], "doc": best["w_doc"], "tarball": best["w_tarball"]},
                "rss_one": results["nopard_peak_rss"], "rss_many": tree_peak_rss(workers_server.process.pid)}
        if peer is not None:
            # The document last, once: its slow answers would still be working in the next run.
            side["peer"] = {"name": peer.name, "version": peer.version, "ping": best["p_ping"],
                            "tarball": best["p_tarball"],
                            "doc": run(f"{peer.name} abbreviated doc", f"{peer.url}{BIG}", ABBREVIATED, timeout=30)}
            results["peer_peak_rss"] = peak_rss(peer.process.pid)
    results["settings"]["wrk rounds"] = (f"every server started at once on one store; each run but the documents' "
                                         f"(gzip, full) and the peer's document: best of {args.rounds} rounds, "
                                         "taken in turn")


class Target(NamedTuple):
    """What one wrk run measures: a label, a URL, request headers."""

    label: str
    url: str
    headers: dict[str, str] = {}


def base_of(server) -> str:
    """A server's URL without the trailing slash."""
    return server.url.rstrip("/")


def rounds(run: Wrk, targets: dict[str, Target], count: int) -> dict[str, dict]:
    """Every target measured ``count`` times, in turn (so a burst of load elsewhere on the
    machine falls on one round of each, not on every round of one); the round with the most
    req/s of each, with every round's req/s under "rounds"."""
    best: dict[str, dict] = {}
    for number in range(1, count + 1):
        for key, target in targets.items():
            measured = run(f"{target.label} (round {number}/{count})", target.url, target.headers)
            seen = best.get(key, {}).get("rounds", []) + [measured["requests_per_sec"]]
            if key not in best or measured["requests_per_sec"] > best[key]["requests_per_sec"]:
                best[key] = measured
            best[key]["rounds"] = seen
    return best


def behind_nginx(args, upstream: FakeUpstream, server, tarball: str, side: dict,
                 stack: contextlib.ExitStack) -> dict[str, Target]:
    """nginx in front of ``server`` (also sending the store file itself), and in front of two
    more nopards on the same store following X-Accel-Redirect (decision cache 0 and 10 s)."""
    store = server.registry
    relative = stored_file(store, side["file"]).relative_to(store)
    nginx = start_nginx(server.workdir / "nginx", server.port, store)
    stack.callback(nginx.stop)
    direct = f"{DIRECT}{relative}"
    if len(get(nginx.url, direct).body) != side["bytes"]:
        raise RuntimeError(f"nginx sent {direct} with another size than nopard's tarball")
    targets = {"nginx_direct": Target("nginx sending the store file itself", nginx.url + direct),
               "nginx_proxy": Target("nginx proxying to nopard (no accel)", nginx.url + tarball),
               "nginx_one_hop": Target("nginx proxying to nopard, no question first (no accel)",
                                       nginx.url + ONE_HOP + tarball)}
    for ttl in (0, 10):
        accel = start_nopard(stack, server.workdir.parent / f"http-accel-{ttl}", upstream, args,
                             NOPARD_REGISTRY_PATH=str(store), NOPARD_META_TTL=WARM_TTL,
                             NOPARD_ACCEL_REDIRECT=ACCEL_PREFIX, NOPARD_ACCEL_CACHE_TTL=str(ttl))
        if "x-accel-redirect" not in get(accel.url, tarball).headers:
            raise RuntimeError("nopard with NOPARD_ACCEL_REDIRECT answered the tarball without X-Accel-Redirect")
        front = start_nginx(accel.workdir / "nginx", accel.port, store)
        stack.callback(front.stop)
        if len(get(front.url, tarball).body) != side["bytes"]:
            raise RuntimeError("nginx following nopard's X-Accel-Redirect sent another size than the tarball")
        targets[f"accel_{ttl}"] = Target(f"nginx + accel redirect, decision cache {ttl} s", front.url + tarball)
        if ttl == 0:
            if len(get(front.url, ONE_HOP + tarball).body) != side["bytes"]:
                raise RuntimeError("nginx following nopard's X-Accel-Redirect in one hop sent another size")
            targets["accel_one_hop"] = Target("nginx + accel redirect, no question first",
                                              front.url + ONE_HOP + tarball)
    return targets


def start_workers(args, upstream: FakeUpstream, server, tarball: str, stack: contextlib.ExitStack):
    """nopard with NOPARD_WORKERS=auto on ``server``'s store, every worker warmed."""
    workers = start_nopard(stack, server.workdir.parent / "http-workers", upstream, args,
                           NOPARD_REGISTRY_PATH=str(server.registry), NOPARD_META_TTL=WARM_TTL,
                           NOPARD_WORKERS="auto")
    # Every worker reads the document and tarball once before wrk measures (the connections
    # are spread over them, so a few rounds reach each).
    for _ in range(4 * report.usable_cpus()):
        get(workers.url, f"/{BIG}", ABBREVIATED)
        get(workers.url, tarball)
    return workers


def start_quarantined(args, upstream: FakeUpstream, server, stack: contextlib.ExitStack):
    """nopard with a quarantine (NOPARD_MIN_RELEASE_AGE=3d) on ``server``'s store, its document warmed:
    the filter is part of preparing, so a warm document should cost the same."""
    quarantined = start_nopard(stack, server.workdir.parent / "http-quarantine", upstream, args,
                               NOPARD_REGISTRY_PATH=str(server.registry), NOPARD_META_TTL=WARM_TTL,
                               NOPARD_MIN_RELEASE_AGE="3d")
    get(quarantined.url, f"/{BIG}", ABBREVIATED)
    return quarantined


def start_peer(upstream: FakeUpstream, work: Path, side: dict, stack: contextlib.ExitStack):
    """The peer registry, warmed with big-package's document and the tarball."""
    from bench.peer import Verdaccio

    peer = stack.enter_context(Verdaccio(work / "http-verdaccio", upstream.url))
    say(f"warming {peer.name}: {BIG}'s document and a tarball of {TARBALL[0]}")
    tarball = tarball_path(peer.url)
    get(peer.url, f"/{BIG}", ABBREVIATED)
    if len(get(peer.url, tarball).body) != side["bytes"]:
        raise RuntimeError(f"{peer.name} sent {tarball} with another size than nopard")
    return peer
