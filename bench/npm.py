"""The npm timings of scripts/bench: the real npm CLI, a new project and an empty cache per run.

Through nopard: a cold `npm install` (nopard empty, once), then `npm ci` and a lockfile-less
`npm install` warm; `npm ci` cold (a new, empty nopard each run); and offline (every document
stale, the upstream blackholed). Against them, the two limits a warm install has: npm from
its own warm cache (`npm ci --offline`), and npm straight from the fake upstream (cold, with a
lockfile naming the upstream). With --peer, the peer registry's cold install, warm and cold
`npm ci`.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench import access_answer, say
from bench.servers import WARM_TTL, cpu_seconds, start_nopard
from tests.support import REPO, NopardServer, Npm, free_port, locked_versions, new_project
from tests.upstream import FakeUpstream

TREE = REPO / "tests" / "data" / "projects" / "tree"

Start = Callable[[contextlib.ExitStack, int], object]  # (stack, run number) -> a started registry


def stale_answers(server: object) -> int:
    """Access-log lines so far that say STALE (the log is kept across restarts); 0 for a
    registry other than nopard."""
    if not isinstance(server, NopardServer):
        return 0
    answers = filter(None, map(access_answer, server.log().splitlines()))
    return sum(1 for _, _, cache in answers if cache == "STALE")


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process this one has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def difference(after: float | None, before: float | None) -> float | None:
    """``after - before`` rounded, or None when either is unknown."""
    return None if after is None or before is None else round(after - before, 2)


class NpmRuns:
    """The npm timings: each run in a new project with a new, empty npm cache (unless given one)."""

    def __init__(self, upstream: FakeUpstream, work: Path, count_stale: bool) -> None:
        self.upstream, self.work, self.count_stale = upstream, work, count_stale
        self.runs: list[dict] = []

    def once(self, registry, key: str, command: str, source: Path, with_lock: bool, index: int,
             extra: tuple[str, ...] = (), cache: Path | None = None) -> tuple[Path, dict]:
        """One timed npm command against ``registry`` (anything with a ``url``); the project it
        installed and what it measured."""
        project = new_project(source, self.work / f"{key}-{index}", with_lock)
        env = {"npm_config_cache": str(cache)} if cache else {}
        npm = Npm(registry.url, self.work / f"npm-home-{key}-{index}", env)
        self.upstream.reset()
        stale_before = stale_answers(registry)
        # CPU used meanwhile by npm (and its children) and by the registry: which of the two
        # an install waits on.
        pid = registry.process.pid
        registry_cpu, npm_cpu = cpu_seconds(pid), children_cpu()
        started = time.monotonic()
        npm.run(command, "--no-audit", *extra, cwd=project)
        seconds = time.monotonic() - started
        npm_cpu, registry_cpu = children_cpu() - npm_cpu, difference(cpu_seconds(pid), registry_cpu)
        stats = self.upstream.stats()
        return project, {"seconds": round(seconds, 3), "connections": stats["connections"],
                         "requests": len(stats["requests"]), "stale": stale_answers(registry) - stale_before,
                         "npm_cpu": round(npm_cpu, 2), "registry_cpu": registry_cpu}

    def record(self, key: str, label: str, command: str, samples: list[dict], projects: list[Path]) -> None:
        """Add a run's samples: median time, every time, the most upstream connections seen."""
        seconds = sorted(sample["seconds"] for sample in samples)
        run = {"key": key, "label": label, "command": f"npm {command} --no-audit",
               "seconds": round(statistics.median(seconds), 3), "min_seconds": round(seconds[0], 3),
               "max_seconds": round(seconds[-1], 3), "samples": samples,
               "upstream_connections": max(sample["connections"] for sample in samples),
               "upstream_connections_total": sum(sample["connections"] for sample in samples),
               "upstream_requests": max(sample["requests"] for sample in samples),
               "npm_cpu": statistics.median(sample["npm_cpu"] for sample in samples),
               "registry_cpu": statistics.median(sample["registry_cpu"] or 0 for sample in samples)}
        if self.count_stale:  # STALE shows in the access log, whose lines are logged at info
            run["stale_answers"] = max(sample["stale"] for sample in samples)
        if key != "install_cold":
            cold = locked_versions(self.work / "install_cold-1")
            run["same_tree_as_cold"] = all(locked_versions(project) == cold for project in projects)
            if not run["same_tree_as_cold"]:
                say(f"  warning: {label} installed a different tree than the cold install")
        say(f"  {run['seconds']:.2f} s (median of {len(samples)}), upstream connections "
            f"{'/'.join(str(sample['connections']) for sample in samples)}")
        self.runs.append(run)

    def measure(self, key: str, label: str, command: str, source: Path, with_lock: bool, times: int,
                registry: object | None = None, start: Start | None = None,
                extra: tuple[str, ...] = (), cache: Path | None = None) -> Path:
        """Run ``times`` times on ``registry``, or on a fresh one from ``start()`` each time."""
        say(f"{label} (x{times})")
        samples, projects = [], []
        for index in range(1, times + 1):
            with contextlib.ExitStack() as stack:
                target = registry if registry is not None else start(stack, index)
                project, sample = self.once(target, key, command, source, with_lock, index, extra, cache)
            samples.append(sample)
            projects.append(project)
        self.record(key, label, command, samples, projects)
        return projects[0]


def npm_phase(args, upstream: FakeUpstream, work: Path, results: dict) -> None:
    """Every npm timing of the module's docstring, in one run."""
    npm = NpmRuns(upstream, work, count_stale=args.loglevel in ("debug", "info"))
    results["npm"] = {"project": str(TREE.relative_to(REPO)), "repeat": args.repeat, "runs": npm.runs}
    nopard_dir = work / "npm-nopard"
    with contextlib.ExitStack() as stack:
        server = start_nopard(stack, nopard_dir, upstream, args, NOPARD_META_TTL=WARM_TTL)
        port = server.port
        # Once: only the first install through an empty nopard is cold.
        cold = npm.measure("install_cold", "npm install, cold (nopard empty)", "install", TREE, False, 1, server)
        results["npm"]["packages"] = len(locked_versions(cold))
        npm.measure("ci_warm", "npm ci, warm", "ci", cold, True, args.repeat, server)
        npm.measure("install_warm", "npm install (no lockfile), warm", "install", cold, False, args.repeat, server)
        # The first warm `npm ci` left a full npm cache: npm alone, from it, is the first limit.
        npm.measure("ci_cache", "npm ci --offline, npm's own warm cache", "ci", cold, True, args.repeat, server,
                    extra=("--offline",), cache=work / "npm-home-ci_warm-1" / "cache")

    def empty(stack: contextlib.ExitStack, index: int) -> NopardServer:
        """A new, empty nopard on the port the lockfile's tarball URLs name."""
        return start_nopard(stack, work / f"npm-nopard-cold-{index}", upstream, args, port=port,
                            NOPARD_META_TTL=WARM_TTL)

    npm.measure("ci_cold", "npm ci, cold (nopard empty)", "ci", cold, True, args.repeat, start=empty)
    # The second limit: npm straight from the upstream, with a lockfile naming it.
    direct = npm.measure("install_direct", "npm install, straight from the upstream", "install", TREE, False, 1,
                         upstream)
    npm.measure("ci_direct", "npm ci, straight from the upstream", "ci", direct, True, args.repeat, upstream)

    def offline(stack: contextlib.ExitStack, index: int) -> NopardServer:
        """nopard on the same port (the lockfile's tarball URLs name it) and registry, every
        document stale; new for each run, so each starts with a closed breaker, as just after
        the upstream went silent."""
        return start_nopard(stack, nopard_dir, upstream, args, port=port, NOPARD_META_TTL="0.001",
                            NOPARD_STALE_DEADLINE=f"{args.stale_deadline:g}")

    upstream.fault("blackhole")
    try:
        npm.measure("ci_offline", "npm ci, offline", "ci", cold, True, args.repeat, start=offline)
        npm.measure("install_offline", "npm install (no lockfile), offline", "install", cold, False,
                    args.repeat, start=offline)
    finally:
        upstream.fault("none")
    if args.peer:
        peer_npm(args, npm, upstream, work)


def peer_npm(args, npm: NpmRuns, upstream: FakeUpstream, work: Path) -> None:
    """The peer registry: a cold install, then `npm ci` warm, and cold (a new, empty peer each run)."""
    from bench.peer import Verdaccio

    port = free_port()
    with Verdaccio(work / "npm-verdaccio", upstream.url, port) as peer:
        cold = npm.measure("peer_install_cold", f"{peer.name}: npm install, cold ({peer.name} empty)", "install",
                           TREE, False, 1, peer)
        npm.measure("peer_ci_warm", f"{peer.name}: npm ci, warm", "ci", cold, True, args.repeat, peer)

    def empty(stack: contextlib.ExitStack, index: int) -> Verdaccio:
        """A new, empty peer on the port the lockfile's tarball URLs name."""
        return stack.enter_context(Verdaccio(work / f"npm-verdaccio-cold-{index}", upstream.url, port))

    npm.measure("peer_ci_cold", "verdaccio: npm ci, cold (verdaccio empty)", "ci", cold, True, args.repeat,
                start=empty)
