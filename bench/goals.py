"""The side-by-side part of scripts/bench's summary: ratios between the runs, and issue 14's goals.

Pure functions of the results dict (bench/throughput.py and bench/npm.py fill it), so the
formatting is tested without running anything (tests/unit/test_bench_goals.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.report import millis, ratio, size, table

# (key in results["side"], label), in the order the tarball table shows them.
TARBALL_ROWS = (("nginx_direct", "nginx sending the store file itself (the limit)"),
                ("nopard", "nopard alone"),
                ("nginx_proxy", "nginx -> nopard, no accel"),
                ("nginx_one_hop", "nginx -> nopard, no accel, no question first (bench conf)"),
                ("accel_0", "nginx -> nopard, accel redirect, decision cache 0 s"),
                ("accel_one_hop", "nginx -> nopard, accel redirect, no question first (bench conf)"),
                ("accel_10", "nginx -> nopard, accel redirect, decision cache 10 s"))


@dataclass(frozen=True)
class Goal:
    """One of issue 14's goals: ``value`` compared with ``target`` (at least, or at most); or,
    ``target`` None, a figure shown beside them for information, judged against nothing."""

    label: str
    value: float | None
    target: float | None
    at_least: bool
    unit: str = "x"

    def verdict(self) -> str:
        """met, MISSED, "not measured", or "information" (no target)."""
        if self.value is None:
            return "not measured"
        if self.target is None:
            return "information"
        met = self.value >= self.target if self.at_least else self.value <= self.target
        return "met" if met else "MISSED"

    def row(self) -> list[str]:
        """The goal as a table row: label, value, target, verdict."""
        shown = "-" if self.value is None else (f"{self.value:.2f}x" if self.unit == "x" else f"{self.value:g}")
        if self.target is None:
            return [self.label, shown, "-", self.verdict()]
        target = f"{self.target:.2f}x" if self.unit == "x" else f"{self.target:g}"
        return [self.label, shown, f"{'>=' if self.at_least else '<='} {target}", self.verdict()]


def rps(measured: dict | None) -> float | None:
    """A wrk run's requests a second, or None when it did not run."""
    return measured["requests_per_sec"] if measured else None


def quotient(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or zero."""
    return numerator / denominator if numerator and denominator else None


def wrk_cells(measured: dict | None) -> list[str]:
    """req/s, p99 and errors of a wrk run, as table cells."""
    if not measured:
        return ["-", "-", "-"]
    errors = measured["non_2xx_3xx"] + measured["socket_errors"]
    return [f"{measured['requests_per_sec']:,.0f}", millis(measured["latency_ms"].get("99")), str(errors)]


def tarball_section(side: dict) -> list[str]:
    """The tarball req/s of every server side by side, with ratios to nginx and to nopard."""
    peer = side.get("peer")
    rows = [(label, side.get(key)) for key, label in TARBALL_ROWS if side.get(key)]
    if peer:
        rows.append((f"{peer['name']} {peer['version']}", peer["tarball"]))
    rows += [("nopard /-/ping (for reference)", side.get("ping"))]
    if peer:
        rows.append((f"{peer['name']} /-/ping (for reference)", peer["ping"]))
    direct, alone = rps(side.get("nginx_direct")), rps(side.get("nopard"))
    out = ["", f"tarball {side['file']} ({size(side['bytes'])}): req/s side by side"]
    out += table(["server", "req/s", "p99", "errors", "/ nginx direct", "/ nopard alone"],
                 [[label, *wrk_cells(measured), ratio(rps(measured), direct), ratio(rps(measured), alone)]
                  for label, measured in rows])
    if peer:
        out += ["", f"nopard / {peer['name']}: req/s ratio (above 1.00x: nopard serves more)"]
        out += table(["target", "nopard", peer["name"], "ratio"],
                     [[label, *(f"{value:,.0f}" if value else "-" for value in (ours, theirs)), ratio(ours, theirs)]
                      for label, ours, theirs in (
                          ("/-/ping", rps(side.get("ping")), rps(peer["ping"])),
                          ("abbreviated doc", rps(side.get("doc")), rps(peer["doc"])),
                          ("tarball", alone, rps(peer["tarball"])))])
    return out


def workers_section(workers: dict) -> list[str]:
    """req/s with NOPARD_WORKERS=1 and =auto, their ratio, and the memory of each."""
    count = workers["count"]
    labels = (("ping", "/-/ping"), ("doc", "abbreviated doc"), ("tarball", "tarball"))
    rows = [[label, f"{rps(workers['one'].get(key)) or 0:,.0f}", f"{rps(workers['many'].get(key)) or 0:,.0f}",
             ratio(rps(workers["many"].get(key)), rps(workers["one"].get(key)))] for key, label in labels]
    rows.append(["peak RSS (every process)", *(size(value) if value else "-"
                                               for value in (workers.get("rss_one"), workers.get("rss_many"))),
                 ratio(workers.get("rss_many"), workers.get("rss_one"))])
    return ["", f"NOPARD_WORKERS=1 and =auto ({count} on this machine): req/s"] + table(
        ["target", "1 worker", f"{count} workers", f"{count} / 1"], rows)


def npm_seconds(results: dict) -> dict[str, float]:
    """Median seconds of each npm run, by key."""
    return {run["key"]: run["seconds"] for run in results.get("npm", {}).get("runs", [])}


def offline_requests(results: dict) -> int | None:
    """The most upstream requests (or accepted connections, if more) one offline install
    (`npm ci` or `npm install`) made; None when neither ran."""
    counts = [max(run["upstream_requests"], run["upstream_connections"])
              for run in results.get("npm", {}).get("runs", []) if run["key"] in ("ci_offline", "install_offline")]
    return max(counts) if counts else None


def goals(results: dict) -> list[Goal]:
    """Issue 14's goals, each with this run's figure (None where that part did not run)."""
    side, seconds = results.get("side", {}), npm_seconds(results)
    peer = side.get("peer") or {}
    limits = [seconds[key] for key in ("ci_cache", "ci_direct") if key in seconds]
    requests = offline_requests(results)
    return [
        Goal("nopard tarball / nopard /-/ping", quotient(rps(side.get("nopard")), rps(side.get("ping"))), 0.60, True),
        Goal("nginx + accel (cache 0 s) / nginx direct",
             quotient(rps(side.get("accel_0")), rps(side.get("nginx_direct"))), 0.50, True),
        Goal("nginx + accel (cache 10 s) / nginx direct",
             quotient(rps(side.get("accel_10")), rps(side.get("nginx_direct"))), 0.50, True),
        Goal("abbreviated doc, NOPARD_MIN_RELEASE_AGE=3d / without",
             quotient(rps(side.get("doc_quarantine")), rps(side.get("doc"))), 0.90, True),
        Goal("nopard tarball / peer tarball", quotient(rps(side.get("nopard")), rps(peer.get("tarball"))), 2.5, True),
        # Not a goal (issue 14's is one process against one, the row above): how far every core
        # goes. On 2 cores wrk takes one, and wrk's 32 connections, opened at once, may all be
        # accepted by whichever worker wakes first.
        Goal("nopard tarball, NOPARD_WORKERS=auto / peer tarball",
             quotient(rps((results.get("workers") or {}).get("many", {}).get("tarball")), rps(peer.get("tarball"))),
             None, True),
        Goal("warm npm ci / faster of (npm cache, direct)",
             quotient(seconds.get("ci_warm"), min(limits) if limits else None), 1.10, False),
        Goal("cold npm ci (nopard empty) / direct npm ci", quotient(seconds.get("ci_cold"), seconds.get("ci_direct")),
             1.10, False),
        Goal("upstream requests, offline install (blackholed)", None if requests is None else float(requests), 5,
             False, unit="n"),
        # Not a goal: whether any HTTP server, the fastest static one, comes within 1.10x of npm's cache.
        Goal("npm ci from static nginx / npm's cache", quotient(seconds.get("ci_static"), seconds.get("ci_cache")),
             None, False),
    ]


def goals_section(results: dict) -> list[str]:
    """The goals table; where a run is missing, "not measured"."""
    return ["", "issue 14's goals, this run (ratios of figures measured above)"] + table(
        ["goal", "this run", "goal", "verdict"], [goal.row() for goal in goals(results)])


def npm_limits(results: dict) -> list[str]:
    """Each `npm ci` against the two limits (and static nginx's figure) and, with --peer, against
    the peer's."""
    seconds = npm_seconds(results)
    if "ci_warm" not in seconds:
        return []
    pairs = [("warm npm ci / npm ci --offline (npm's cache)", "ci_warm", "ci_cache"),
             ("warm npm ci / npm ci straight from the upstream", "ci_warm", "ci_direct"),
             ("npm ci --offline / npm ci straight from the upstream", "ci_cache", "ci_direct"),
             ("npm ci from static nginx (same files) / npm ci --offline", "ci_static", "ci_cache"),
             ("warm npm ci / npm ci from static nginx", "ci_warm", "ci_static"),
             ("cold npm ci (nopard empty) / npm ci straight from the upstream", "ci_cold", "ci_direct"),
             ("offline npm ci (blackholed) / warm npm ci", "ci_offline", "ci_warm"),
             ("npm install (no lockfile): offline / warm", "install_offline", "install_warm"),
             ("cold npm install (nopard empty) / straight from the upstream", "install_cold", "install_direct"),
             ("warm npm ci: nopard / peer", "ci_warm", "peer_ci_warm"),
             ("cold npm ci: nopard / peer", "ci_cold", "peer_ci_cold"),
             ("peer warm npm ci / faster of (npm cache, direct)", "peer_ci_warm", "limit")]
    limits = [seconds[key] for key in ("ci_cache", "ci_direct") if key in seconds]
    if limits:
        seconds["limit"] = min(limits)
    pairs = [(label, a, b) for label, a, b in pairs if a in seconds and b in seconds]
    width = max(len(label) for label, _, _ in pairs)
    return ["", "npm ratios (time / time: 1.00x is as fast; below 1.00x, faster)"] + [
        f"  {label.ljust(width)}  {ratio(seconds[a], seconds[b])}" for label, a, b in pairs]


def memory_line(results: dict) -> list[str]:
    """Peak resident memory of every server measured."""
    parts = [f"{label} {size(results[key])}" for key, label in (
        ("nopard_peak_rss", "nopard (after its wrk runs)"),
        ("peer_peak_rss", "peer (after its wrk runs)")) if results.get(key)]
    workers = results.get("workers") or {}
    if workers.get("rss_many"):
        parts.append(f"nopard with {workers['count']} workers (supervisor + workers) {size(workers['rss_many'])}")
    return ["", "peak RSS: " + "; ".join(parts)] if parts else []


def sections(results: dict) -> list[str]:
    """Every side-by-side section for the parts that ran, then the goals."""
    out = tarball_section(results["side"]) if results.get("side") else []
    if results.get("workers"):
        out += workers_section(results["workers"])
    return out + npm_limits(results) + memory_line(results) + goals_section(results)
