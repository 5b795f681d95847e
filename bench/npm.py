"""The npm timings of scripts/bench: the real npm CLI, a new project and an empty cache per run.

Through nopard: a cold `npm install` (nopard empty, once), then `npm ci` and a lockfile-less
`npm install` warm; `npm ci` cold (a new, empty nopard each run); and offline (every document
stale, the upstream blackholed). Against them, the two limits a warm install has: npm from
its own warm cache (`npm ci --offline`), and npm straight from the fake upstream (cold, with a
lockfile naming the upstream); and, for information, npm straight from nginx sending the same
tarball files from nopard's store (the fastest HTTP server there is: whether any registry can
come near npm's own cache). With --peer, the peer registry's cold install, warm and cold
`npm ci`. The `npm ci` runs compared with one another (warm, from npm's cache, direct, cold,
and the peer's) are taken in turn, --repeat rounds of them, and each one's median is kept.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import access_answer, say
from bench.nginx import STATIC, start_nginx
from bench.servers import WARM_TTL, start_nopard, tree_cpu_seconds, written
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
        # CPU used meanwhile by npm (and its children) and by the registry (and its children:
        # nginx answers from its workers): which of the two an install waits on.
        pid = registry.process.pid
        registry_cpu, npm_cpu = tree_cpu_seconds(pid), children_cpu()
        started = time.monotonic()
        npm.run(command, "--no-audit", *extra, cwd=project)
        seconds = time.monotonic() - started
        npm_cpu, registry_cpu = children_cpu() - npm_cpu, difference(tree_cpu_seconds(pid), registry_cpu)
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
        if len(samples) > 1:
            say(f"  {label}: {run['seconds']:.2f} s (median of {len(samples)}), upstream connections "
                f"{'/'.join(str(sample['connections']) for sample in samples)}")
        self.runs.append(run)

    def measure(self, key: str, label: str, command: str, source: Path, with_lock: bool, times: int,
                registry: object | None = None, start: Start | None = None,
                extra: tuple[str, ...] = (), cache: Path | None = None) -> Path:
        """Run ``times`` times on ``registry``, or on a fresh one from ``start()`` each time;
        the first run's project."""
        return self.interleaved([Spec(key, label, command, source, with_lock, registry, start, extra, cache)],
                                times)[key]

    def interleaved(self, specs: list[Spec], times: int) -> dict[str, Path]:
        """Each of ``specs`` run ``times`` times, in turn (so that load from elsewhere on the
        machine falls on one run of each rather than on every run of one); each one's first
        project, by key."""
        samples: dict[str, list[dict]] = {spec.key: [] for spec in specs}
        projects: dict[str, list[Path]] = {spec.key: [] for spec in specs}
        for index in range(1, times + 1):
            for spec in specs:
                say(f"{spec.label} ({index}/{times})")
                with contextlib.ExitStack() as stack:
                    target = spec.registry if spec.registry is not None else spec.start(stack, index)
                    project, sample = self.once(target, spec.key, spec.command, spec.source, spec.with_lock, index,
                                                spec.extra, spec.cache)
                say(f"  {sample['seconds']:.2f} s, upstream connections {sample['connections']}")
                samples[spec.key].append(sample)
                projects[spec.key].append(project)
        for spec in specs:
            self.record(spec.key, spec.label, spec.command, samples[spec.key], projects[spec.key])
        return {key: found[0] for key, found in projects.items()}


@dataclass(frozen=True)
class Spec:
    """One npm timing: what runs, in which project, against which registry (or a fresh one
    from ``start`` each run), with which extra arguments and npm cache."""

    key: str
    label: str
    command: str
    source: Path
    with_lock: bool
    registry: object | None = None
    start: Start | None = None
    extra: tuple[str, ...] = ()
    cache: Path | None = None


def relocated(source: Path, target: Path, old_url: str, new_url: str) -> Path:
    """A copy of ``source``'s package.json and lockfile whose tarball URLs name ``new_url``
    instead of ``old_url`` (the same registry software on another port)."""
    project = new_project(source, target, True)
    lockfile = project / "package-lock.json"
    lockfile.write_text(lockfile.read_text().replace(old_url, new_url))
    return project


def npm_phase(args, upstream: FakeUpstream, work: Path, results: dict) -> None:
    """Every npm timing of the module's docstring, in one run; the `npm ci` runs compared with
    one another are taken in turn."""
    npm = NpmRuns(upstream, work, count_stale=args.loglevel in ("debug", "info"))
    results["npm"] = {"project": str(TREE.relative_to(REPO)), "repeat": args.repeat, "runs": npm.runs}
    nopard_dir = work / "npm-nopard"
    with contextlib.ExitStack() as stack:
        server = start_nopard(stack, nopard_dir, upstream, args, NOPARD_META_TTL=WARM_TTL)
        port = server.port
        # Once: only the first install through an empty nopard is cold.
        cold = npm.measure("install_cold", "npm install, cold (nopard empty)", "install", TREE, False, 1, server)
        results["npm"]["packages"] = len(locked_versions(cold))
        # The second limit: npm straight from the upstream, with a lockfile naming it.
        direct = npm.measure("install_direct", "npm install, straight from the upstream", "install", TREE, False,
                             1, upstream)
        npm.measure("install_warm", "npm install (no lockfile), warm", "install", cold, False, args.repeat, server)
        empty_port = free_port()
        empty_lock = relocated(cold, work / "lock-nopard-empty", server.url, f"http://127.0.0.1:{empty_port}/")

        def empty(stack: contextlib.ExitStack, index: int) -> NopardServer:
            """A new, empty nopard on the port ``empty_lock`` names."""
            return start_nopard(stack, work / f"npm-nopard-cold-{index}", upstream, args, port=empty_port,
                                NOPARD_META_TTL=WARM_TTL)

        written(server)  # nginx sends the tarballs nopard stored (static_spec)
        specs = [Spec("ci_warm", "npm ci, warm", "ci", cold, True, server),
                 # The first warm `npm ci` left a full npm cache: npm alone, from it, is the first limit.
                 Spec("ci_cache", "npm ci --offline, npm's own warm cache", "ci", cold, True, server,
                      extra=("--offline",), cache=work / "npm-home-ci_warm-1" / "cache"),
                 Spec("ci_direct", "npm ci, straight from the upstream", "ci", direct, True, upstream),
                 Spec("ci_cold", "npm ci, cold (nopard empty)", "ci", empty_lock, True, start=empty),
                 static_spec(work, server, cold, stack)]
        if args.peer:
            specs += peer_specs(npm, upstream, work, stack)
        npm.interleaved(specs, args.repeat)

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


def static_spec(work: Path, server: NopardServer, cold: Path, stack: contextlib.ExitStack) -> Spec:
    """`npm ci` straight from nginx sending nopard's stored tarballs (bench/nginx.py STATIC): the
    lockfile's URLs relocated there. Not a goal: how near any HTTP server comes to npm's cache."""
    nginx = start_nginx(work / "npm-nginx", server.port, server.registry)
    stack.callback(nginx.stop)
    lock = relocated(cold, work / "lock-nginx-static", server.url, f"{nginx.url}{STATIC}")
    return Spec("ci_static", "npm ci, straight from static nginx (same files)", "ci", lock, True, nginx)


def peer_specs(npm: NpmRuns, upstream: FakeUpstream, work: Path, stack: contextlib.ExitStack) -> list[Spec]:
    """The peer registry, started (and stopped by ``stack``) after a cold install through it:
    `npm ci` warm, and cold (a new, empty peer each run)."""
    from bench.peer import Verdaccio

    peer = stack.enter_context(Verdaccio(work / "npm-verdaccio", upstream.url))
    cold = npm.measure("peer_install_cold", f"{peer.name}: npm install, cold ({peer.name} empty)", "install",
                       TREE, False, 1, peer)
    empty_port = free_port()
    empty_lock = relocated(cold, work / "lock-peer-empty", peer.url, f"http://127.0.0.1:{empty_port}/")

    def empty(stack: contextlib.ExitStack, index: int) -> Verdaccio:
        """A new, empty peer on the port ``empty_lock`` names."""
        return stack.enter_context(Verdaccio(work / f"npm-verdaccio-cold-{index}", upstream.url, empty_port))

    return [Spec("peer_ci_warm", f"{peer.name}: npm ci, warm", "ci", cold, True, peer),
            Spec("peer_ci_cold", f"{peer.name}: npm ci, cold ({peer.name} empty)", "ci", empty_lock, True,
                 start=empty)]
