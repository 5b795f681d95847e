"""The facts about the machine and the plain-text summary scripts/bench prints."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

from bench.wrk import PERCENTILES


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's machine type."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (what nproc prints), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_facts(versions: dict[str, str]) -> dict[str, str]:
    """nproc, CPU, OS, date, and the tool versions handed in."""
    import twisted

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": str(usable_cpus()), "cpu": cpu_model(),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "twisted": twisted.__version__, **versions}


def size(count: float) -> str:
    """A byte count with a binary prefix, three significant figures."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} GiB"


def millis(value: float | None) -> str:
    """A latency in ms, with a precision that suits its size."""
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Aligned text lines: the first ``left`` columns left-aligned, numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(cell).ljust(width) if i < left else str(cell).rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths, strict=False))).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``1.03x``, or ``-`` when either is missing."""
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def summary(results: dict) -> str:
    """The whole summary: machine, settings, HTTP throughput, npm timings and ratios."""
    machine, settings = results["machine"], results["settings"]
    out = [f"nopard benchmark, {machine['date']}", ""]
    facts = [["machine", f"{machine['nproc']} CPUs ({machine['cpu']}), {machine['os']}"],
             ["software", f"Python {machine['python']}, Twisted {machine['twisted']}, "
                          f"node {machine.get('node', '?')}, npm {machine.get('npm', '?')}, "
                          f"wrk {machine.get('wrk', '?')}"]]
    facts += [[key, value] for key, value in settings.items()]
    width = max(len(key) for key, _ in facts)
    out += [f"{key.ljust(width)}  {value}" for key, value in facts]

    if results.get("http"):
        out += ["", "HTTP: wrk against a warm nopard (body = one response's payload as sent)"]
        rows = []
        for run in results["http"]:
            measured = run["wrk"]
            errors = measured["non_2xx_3xx"] + measured["socket_errors"]
            rows.append([run["label"], size(run["body_bytes"]), f"{measured['requests_per_sec']:,.0f}",
                         f"{size(measured['transfer_per_sec'])}/s",
                         *(millis(measured["latency_ms"].get(p)) for p in PERCENTILES), str(errors)])
        out += table(["target", "body", "req/s", "transfer", *(f"p{p}" for p in PERCENTILES), "errors"], rows)
        if results.get("nopard_peak_rss"):
            out.append(f"nopard's peak RSS after these runs: {size(results['nopard_peak_rss'])}")

    if results.get("sync"):
        out += sync_summary(results["sync"])
    if results.get("changes"):
        out += changes_summary(results["changes"])

    npm = results.get("npm")
    if npm:
        out += ["", f"npm: {npm['project']} ({npm['packages']} packages), new project and empty npm cache "
                    f"on every run; time = median of {npm['repeat']} (min-max)"]
        rows = [[run["label"], f"{run['seconds']:.2f} s",
                 f"{run['min_seconds']:.2f}-{run['max_seconds']:.2f}" if len(run["samples"]) > 1 else "",
                 f"{run['npm_cpu']:.1f} s" if "npm_cpu" in run else "-",
                 f"{run['registry_cpu']:.1f} s" if "registry_cpu" in run else "-",
                 str(run["upstream_connections"]), str(run["upstream_requests"]),
                 str(run.get("stale_answers", "-"))] for run in npm["runs"]]
        out += table(["run", "time", "min-max", "npm CPU", "registry CPU", "upstream conns", "upstream reqs",
                      "STALE answers"], rows)
        out.append("(CPU: medians, npm's with its children, the registry's is the process answering it "
                   "with its children (nginx's workers); "
                   "upstream conns/reqs/STALE answers: the most seen in one run)")
        offline = [run for run in npm["runs"] if run["key"].endswith("_offline")]
        total = sum(run["upstream_connections_total"] for run in offline)
        count = sum(len(run["samples"]) for run in offline)
        out.append(f"connections the blackholed upstream accepted: {total} over all {count} offline runs")
    return "\n".join(out)


def sync_summary(section: dict) -> list[str]:
    """The sync section: cached reads idle and during a sync, and what the sync did."""
    out = ["", f"sync: wrk {section['wrk']} on {section['target']} (abbreviated, a warm document), "
               f"idle and while a sync of {section['packages']} mirrored packages runs"]
    rows = []
    for key, label in (("idle", "idle"), ("during", "during sync")):
        run = section[key]
        measured = run["wrk"]
        cpus = [run.get("nopard_cpu_percent"), run.get("upstream_cpu_percent")]
        rows.append([label, f"{measured['requests_per_sec']:,.0f}",
                     *(millis(measured["latency_ms"].get(p)) for p in ("50", "90", "99")),
                     str(measured["non_2xx_3xx"] + measured["socket_errors"]),
                     *("-" if cpu is None else f"{cpu}%" for cpu in cpus),
                     " ".join(f"{status} {count}" for status, count in sorted(run["cache_statuses"].items())) or "-"])
    out += table(["reads", "req/s", "p50", "p90", "p99", "errors", "nopard CPU", "upstream CPU", "answers"], rows)
    warnings = section["idle"].get("log_warnings", 0) + section["during"].get("log_warnings", 0)
    if warnings:
        out.append(f"NOTE: nopard logged {warnings} warnings or errors during these runs (see its log, --keep)")
    idle, during = section["idle"]["wrk"], section["during"]["wrk"]
    out.append(f"p99 during sync / idle: {ratio(during['latency_ms'].get('99'), idle['latency_ms'].get('99'))}, "
               f"p50: {ratio(during['latency_ms'].get('50'), idle['latency_ms'].get('50'))}, "
               f"req/s: {ratio(during['requests_per_sec'], idle['requests_per_sec'])}")
    sync = section["sync"]
    jobs = "; ".join(f"{job['job']} {job['seconds']} s: checked {job['checked']}, changed {job['changed']}, "
                     f"tarballs {job['tarballs']} ({size(job['bytes'] or 0)}), failures {job['failure_count']}"
                     for job in sync["jobs"])
    out.append(f"the sync (POST /-/nopard/sync): {sync['seconds']:.1f} s; {jobs}")
    upstream = sync["upstream_requests"]
    out.append(f"upstream requests during the sync: {upstream['documents']} documents, {upstream['tarballs']} tarballs")
    if sync["finished_before_wrk"]:
        out.append(f"NOTE: the sync finished before wrk did: only {sync['overlap_seconds']:.1f} s of the "
                   f"{sync['wrk_seconds']:.1f} s run overlapped it (raise --sync-packages or lower --duration)")
    else:
        out.append(f"wrk ran entirely during the sync, which went on {sync['after_wrk_seconds']:.1f} s after wrk ended")
    populate = section["populate"]
    out.append(f"populating beforehand: {populate['documents']} documents in {populate['seconds']:.1f} s "
               f"with {populate['clients']} concurrent clients")
    return out


def changes_summary(section: dict) -> list[str]:
    """The changes section (bench/changes.py): upstream requests per refreshed package, and the ratio."""
    out = ["", f"changes: one refresh run after {section['changed']} of {section['packages']} mirrored packages "
               "changed upstream, every copy stale"]
    rows = [[run["label"], str(run["checked"]), str(run["changed"]), str(run["document_requests"]),
             str(run["feed_requests"]),
             "-" if run["requests_per_refreshed"] is None else f"{run['requests_per_refreshed']:.2f}"]
            for run in (section["without"], section["with"])]
    out += table(["run", "checked", "refreshed", "document reqs", "feed reqs", "upstream reqs / refreshed"],
                 rows)
    without, with_ = section["without"]["requests_per_refreshed"], section["with"]["requests_per_refreshed"]
    out.append(f"upstream requests per refreshed package, without / with the feed: {ratio(without, with_)}")
    return out
