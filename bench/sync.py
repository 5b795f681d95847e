"""The sync section of scripts/bench: cached-read latency while the sync worker runs.

A fresh nopard mirrors a fake upstream serving ``--sync-packages`` synthetic packages
(tests/fake_synthetic.py). Every synthetic document is requested once, then wrk reads one warm
document (debug's abbreviated form, a HIT from memory) twice: with nopard idle, and while
``POST /-/nopard/sync`` refreshes every stale document and backfills every latest tarball.

Freshness is arranged with NOPARD_META_TTL = wrk's duration + MARGIN: the measured document is
confirmed upstream right before each wrk run, so it stays fresh for the whole run (and the sync
skips it), while the synthetic documents, fetched earlier, are all stale when the sync starts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from bench import access_answer, report, say, wrk
from bench.servers import cpu_seconds
from tests.fake_synthetic import Synthetic
from tests.support import NopardServer
from tests.upstream import FakeUpstream

TARGET = "/debug"
ACCEPT = {"Accept": "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"}
WRK_THREADS, WRK_CONNECTIONS, WRK_TIMEOUT = 1, 8, 30.0
CLIENTS = 16  # concurrent requests while populating
MARGIN = 5.0  # seconds a document stays fresh beyond one wrk run
SYNC_TIMEOUT = 3600.0  # the POST answers once both jobs have finished
# Warnings and errors, in the README's text lines or in key=value / JSON ones.
PROBLEM = re.compile(r'#(?:warn|error|critical)\]|\b(?:WARN|ERROR|CRITICAL) |"level":\s*"(?:warn|error|critical)"')

Start = Callable[..., NopardServer]  # (stack, workdir, upstream, **env) -> a started nopard


def settings(args) -> dict[str, str]:
    """nopard's sync settings: no schedule (the bench starts the sync), tags backfilled."""
    return {"NOPARD_SYNC_INTERVAL": "0", "NOPARD_SYNC_RATE": str(args.sync_rate), "NOPARD_BACKFILL": "tags"}


def meta_ttl(duration: float) -> float:
    """NOPARD_META_TTL for the section: one wrk run plus a margin."""
    return round(duration + MARGIN, 1)


def describe(args) -> str:
    """The section's settings, for the summary's header."""
    env = " ".join(f"{key}={value}" for key, value in settings(args).items())
    return (f"fake upstream --synthetic {args.sync_packages}; nopard {env} "
            f"NOPARD_META_TTL={meta_ttl(args.duration):g}; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} "
            f"-d{args.duration:g}s --timeout {WRK_TIMEOUT:g}s on {TARGET} (abbreviated)")


def populate(port: int, names: list[str]) -> dict:
    """GET every name once through nopard (CLIENTS at a time, kept-alive connections)."""
    local = threading.local()

    def fetch(name: str) -> str | None:
        """None when nopard fetched and served it; else what went wrong."""
        for attempt in range(2):
            if getattr(local, "connection", None) is None:
                local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                local.connection.request("GET", f"/{name}", headers=ACCEPT)
                answer = local.connection.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException) as problem:
                local.connection.close()
                local.connection = None
                if attempt:
                    return f"{name}: {problem}"
                continue
            return None if answer.status == 200 else f"{name}: {answer.status}"
        return f"{name}: failed"

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        problems = [problem for problem in pool.map(fetch, names) if problem]
    seconds = time.monotonic() - started
    if problems:
        raise RuntimeError(f"populating failed for {len(problems)} documents, e.g. {problems[:3]}")
    return {"documents": len(names), "seconds": round(seconds, 2), "clients": CLIENTS}


def make_fresh(server: NopardServer) -> str:
    """Have nopard confirm TARGET with the upstream now, so it stays fresh for a whole TTL.

    Returns how nopard answered (MISS or REVALIDATED). A STALE answer (upstream not trusted,
    revalidated in the background) is retried.
    """
    for _ in range(50):
        answer = server.request("GET", TARGET, headers=ACCEPT)
        if answer.status != 200:
            raise RuntimeError(f"GET {TARGET}: {answer.status} {answer.body[:300]!r}")
        cache = answer.headers.get("x-nopard-cache", "")
        if cache in ("MISS", "REVALIDATED"):
            return cache
        time.sleep(0.2)
    raise RuntimeError(f"nopard never revalidated {TARGET} (last answer: {cache})")


class SyncRequest(threading.Thread):
    """``POST /-/nopard/sync`` in a thread; it answers when refresh and backfill have finished."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.headers = headers
        self.sent = threading.Event()
        self.started = self.ended = None
        self.status: int | None = None
        self.body = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SYNC_TIMEOUT)
        try:
            self.started = time.monotonic()
            connection.request("POST", "/-/nopard/sync", body=b"{}",
                               headers={"Content-Type": "application/json", **self.headers})
            self.sent.set()
            answer = connection.getresponse()
            self.status, self.body = answer.status, answer.read()
        except BaseException as problem:  # reported by the main thread
            self.error = problem
        finally:
            self.ended = time.monotonic()
            self.sent.set()
            connection.close()

    def reports(self) -> list[dict]:
        """The jobs' reports; raises when the sync failed."""
        if self.error is not None:
            raise RuntimeError(f"POST /-/nopard/sync failed: {self.error}")
        if self.status != 200:
            raise RuntimeError(f"POST /-/nopard/sync: {self.status} {self.body[:300]!r}")
        return json.loads(self.body)["reports"]


def job_seconds(job: dict) -> float | None:
    """How long one job ran, from its report's start and end."""
    try:
        started, ended = (datetime.fromisoformat(job[key].replace("Z", "+00:00")) for key in ("started", "ended"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return round((ended - started).total_seconds(), 2)


def log_since(server: NopardServer, offset: int) -> list[str]:
    """nopard's log lines written after byte ``offset``."""
    with open(server.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def log_size(server: NopardServer) -> int:
    """Bytes nopard's log holds so far."""
    return server.log_path.stat().st_size if server.log_path.exists() else 0


def read_run(wrk_path: str, server: NopardServer, upstream: FakeUpstream, duration: float, label: str) -> dict:
    """wrk on TARGET once, with nopard's and the fake upstream's CPU use (the machine's CPUs are
    shared by wrk, nopard and the fake upstream) and the cache statuses of nopard's answers."""
    pids = {"nopard": server.process.pid, "upstream": upstream.process.pid}
    offset, started = log_size(server), time.monotonic()
    cpu_before = {key: cpu_seconds(pid) for key, pid in pids.items()}
    say(f"wrk {TARGET} (abbreviated), {label} ({duration:g} s)")
    measured, _ = wrk.run(wrk_path, server.url.rstrip("/") + TARGET, ACCEPT, WRK_THREADS, WRK_CONNECTIONS,
                          duration, timeout=WRK_TIMEOUT)
    wall = time.monotonic() - started
    cpu_after = {key: cpu_seconds(pid) for key, pid in pids.items()}
    cpu = {key: None if cpu_before[key] is None or cpu_after[key] is None
           else round(100 * (cpu_after[key] - cpu_before[key]) / wall) for key in pids}
    lines = log_since(server, offset)
    answers = filter(None, map(access_answer, lines))
    statuses = Counter(cache for method, path, cache in answers if (method, path) == ("GET", TARGET))
    run = {"label": label, "wrk": measured.as_dict(), "cache_statuses": dict(statuses),
           **{f"{key}_cpu_percent": percent for key, percent in cpu.items()},
           "log_warnings": sum(1 for line in lines if PROBLEM.search(line))}
    say(f"  {measured.requests_per_sec:,.0f} req/s, p50 {report.millis(measured.latency_ms.get('50'))}, "
        f"p99 {report.millis(measured.latency_ms.get('99'))}, CPU: nopard {cpu['nopard']}%, "
        f"fake upstream {cpu['upstream']}%")
    return run


def sync_phase(args, wrk_path: str, work: Path, results: dict, start: Start) -> None:
    """The whole section; its numbers go to results["sync"]."""
    count, ttl = args.sync_packages, meta_ttl(args.duration)
    section = results["sync"] = {"packages": count, "target": TARGET, "meta_ttl": ttl,
                                 "wrk": f"-t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{args.duration:g}s "
                                        f"--timeout {WRK_TIMEOUT:g}s --latency"}
    say(f"sync: starting a fake upstream with {count} synthetic packages and a fresh nopard")
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(FakeUpstream(extra_args=("--synthetic", str(count))))
        server = start(stack, work / "sync-nopard", upstream, NOPARD_META_TTL=f"{ttl:g}", **settings(args))
        say(f"sync: populating nopard with {count} documents ({CLIENTS} clients)")
        section["populate"] = populate(server.port, Synthetic(count).names())
        say(f"  {section['populate']['seconds']:.1f} s")

        make_fresh(server)
        confirmed = time.monotonic()
        section["idle"] = read_run(wrk_path, server, upstream, args.duration, "idle")

        # Every document, the measured one included, stale; then only the measured one fresh.
        wait = confirmed + ttl + 0.5 - time.monotonic()
        if wait > 0:
            say(f"sync: waiting {wait:.1f} s for every document to go stale (NOPARD_META_TTL={ttl:g})")
            time.sleep(wait)
        make_fresh(server)
        upstream.reset()
        sync = SyncRequest(server.port, server.operator_headers())
        sync.start()
        sync.sent.wait(30)
        wrk_started = time.monotonic()
        section["during"] = read_run(wrk_path, server, upstream, args.duration, "during a sync")
        wrk_ended = time.monotonic()
        if sync.is_alive():
            say("sync: still running after wrk; waiting for it")
        sync.join(SYNC_TIMEOUT)
        if sync.is_alive():
            raise RuntimeError(f"the sync did not finish within {SYNC_TIMEOUT:g} s")
        jobs = sync.reports()
        requests = upstream.stats()["requests"]
        section["sync"] = {
            "seconds": round(sync.ended - sync.started, 2),
            "jobs": [{**{key: job.get(key) for key in ("job", "checked", "changed", "tarballs", "bytes",
                                                       "failure_count", "failures", "skipped")},
                      "seconds": job_seconds(job)} for job in jobs],
            "upstream_requests": {"documents": sum(1 for _, path in requests if "/-/" not in path),
                                  "tarballs": sum(1 for _, path in requests if "/-/" in path)},
            # Seconds of the wrk run with the sync still going (wrk started after the POST).
            "overlap_seconds": round(max(0.0, min(sync.ended, wrk_ended) - wrk_started), 2),
            "wrk_seconds": round(wrk_ended - wrk_started, 2),
            "finished_before_wrk": sync.ended < wrk_ended,
            "after_wrk_seconds": round(max(0.0, sync.ended - wrk_ended), 2),
        }
        done = section["sync"]
        if done["finished_before_wrk"]:
            say(f"  the sync finished {wrk_ended - sync.ended:.1f} s before wrk did: only "
                f"{done['overlap_seconds']:.1f} of {done['wrk_seconds']:.1f} s were measured during the sync")
        say(f"  sync took {done['seconds']:.1f} s: " + "; ".join(
            f"{job['job']} {job['seconds']} s, checked {job['checked']}, changed {job['changed']}, "
            f"tarballs {job['tarballs']}, failures {job['failure_count']}" for job in done["jobs"]))
