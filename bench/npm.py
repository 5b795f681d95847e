"""The npm timings of scripts/bench: the real npm CLI, a new project and an empty cache per run."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench import access_answer, say
from tests.support import NopardServer, Npm, locked_versions, new_project
from tests.upstream import FakeUpstream


def stale_answers(server: NopardServer) -> int:
    """Access-log lines so far that say STALE (the log is kept across restarts)."""
    answers = filter(None, map(access_answer, server.log().splitlines()))
    return sum(1 for _, _, cache in answers if cache == "STALE")


class NpmRuns:
    """The npm timings: each run in a new project with a new, empty npm cache."""

    def __init__(self, upstream: FakeUpstream, work: Path, count_stale: bool) -> None:
        self.upstream, self.work, self.count_stale = upstream, work, count_stale
        self.runs: list[dict] = []

    def once(self, server: NopardServer, key: str, command: str, source: Path, with_lock: bool,
             index: int) -> tuple[Path, dict]:
        """One timed npm command; the project it installed and what it measured."""
        project = new_project(source, self.work / f"{key}-{index}", with_lock)
        npm = Npm(server.url, self.work / f"npm-home-{key}-{index}")
        self.upstream.reset()
        stale_before = stale_answers(server)
        started = time.monotonic()
        npm.run(command, "--no-audit", cwd=project)
        seconds = time.monotonic() - started
        stats = self.upstream.stats()
        return project, {"seconds": round(seconds, 3), "connections": stats["connections"],
                         "requests": len(stats["requests"]), "stale": stale_answers(server) - stale_before}

    def record(self, key: str, label: str, command: str, samples: list[dict], projects: list[Path]) -> None:
        """Add a run's samples: median time, every time, the most upstream connections seen."""
        seconds = sorted(sample["seconds"] for sample in samples)
        run = {"key": key, "label": label, "command": f"npm {command} --no-audit",
               "seconds": round(statistics.median(seconds), 3), "min_seconds": round(seconds[0], 3),
               "max_seconds": round(seconds[-1], 3), "samples": samples,
               "upstream_connections": max(sample["connections"] for sample in samples),
               "upstream_connections_total": sum(sample["connections"] for sample in samples),
               "upstream_requests": max(sample["requests"] for sample in samples)}
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
                server: NopardServer | None = None,
                start: Callable[[contextlib.ExitStack], NopardServer] | None = None) -> Path:
        """Run ``times`` times on ``server``, or on a fresh one from ``start()`` each time."""
        say(f"{label} (x{times})")
        samples, projects = [], []
        for index in range(1, times + 1):
            with contextlib.ExitStack() as stack:
                project, sample = self.once(server or start(stack), key, command, source, with_lock, index)
            samples.append(sample)
            projects.append(project)
        self.record(key, label, command, samples, projects)
        return projects[0]
