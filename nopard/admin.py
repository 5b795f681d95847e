"""nopard-admin: operator commands, run on the registry's machine.

Commands talk to the running nopard over HTTP (it does the work with its own
upstream client, caches and locks):

  nopard-admin sync                 each sync job's last run and the next one
  nopard-admin sync --now [--job J] run refresh and backfill (or job J) now; print the summary
  nopard-admin prefetch FILE...     fetch what lockfiles name, so they install offline

Exit status: 0 all well, 1 something failed (listed), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Sequence


def default_registry(environ: dict[str, str] = os.environ) -> str:  # type: ignore[assignment]
    """The local nopard's URL, from the same NOPARD_HOSTNAME/NOPARD_PORT settings it reads."""
    host = environ.get("NOPARD_HOSTNAME", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{environ.get('NOPARD_PORT', '5984')}"


class AdminError(Exception):
    """A command could not talk to nopard; the message says why."""


def call(registry: str, method: str, path: str, body: Any = None, timeout: float = 3600) -> Any:
    """One JSON request to nopard."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(registry.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", error.reason)
        except ValueError:
            message = error.reason
        raise AdminError(f"nopard answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise AdminError(f"cannot reach nopard at {registry}: {getattr(error, 'reason', error)}") from None


def print_report(report: dict[str, Any]) -> bool:
    """Print one job report; True if it had no failures."""
    if report.get("skipped"):
        print(f"{report['job']}: skipped ({report['skipped']})")
        return True
    print(f"{report['job']}: checked {report['checked']}, changed {report['changed']}, "
          f"tarballs {report['tarballs']} ({report['bytes']} bytes), failures {report['failure_count']}")
    for failure in report["failures"]:
        print(f"  failed {failure['package']}: {failure['reason']}")
    if report["failure_count"] > len(report["failures"]):
        print(f"  ... and {report['failure_count'] - len(report['failures'])} more")
    return not report["failure_count"]


def sync(options: argparse.Namespace) -> int:
    """Show the sync jobs, or run them now."""
    if not options.now:
        status = call(options.registry, "GET", "/-/nopard/sync")
        print(f"interval {status['interval']} s, next run {status['next_run'] or 'not scheduled'}")
        for job, report in status["jobs"].items():
            if report is None:
                print(f"{job}: never ran")
            else:
                print(f"{job}: last run {report['started']} .. {report['ended'] or 'running'}")
                print_report(report)
        return 0
    reports = call(options.registry, "POST", "/-/nopard/sync", {"job": options.job})["reports"]
    return 0 if all([print_report(report) for report in reports]) else 1


def prefetch(options: argparse.Namespace) -> int:
    """Read lockfiles and have nopard fetch everything they name."""
    from nopard.lockfiles import LockfileError, read_lockfile

    packages = set()
    for path in options.files:
        try:
            locked = read_lockfile(path)
        except (LockfileError, OSError) as error:
            raise AdminError(str(error)) from None
        print(f"{path}: {len(locked)} packages")
        packages.update((entry.name, entry.version) for entry in locked)
    report = call(options.registry, "POST", "/-/nopard/prefetch", {"packages": sorted(map(list, packages))})
    return 0 if print_report(report) else 1


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="nopard-admin", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--registry", default=default_registry(),
                     help="the nopard to talk to (default: from NOPARD_HOSTNAME/NOPARD_PORT: %(default)s)")
    commands = top.add_subparsers(dest="command", required=True)
    sync_command = commands.add_parser("sync", help="show or run the sync jobs")
    sync_command.add_argument("--now", action="store_true", help="run now and print the summary")
    sync_command.add_argument("--job", choices=("refresh", "backfill"), help="only this job")
    sync_command.set_defaults(run=sync)
    prefetch_command = commands.add_parser("prefetch", help="fetch everything lockfiles name")
    prefetch_command.add_argument("files", nargs="+", metavar="FILE",
                                  help="package-lock.json, npm-shrinkwrap.json, yarn.lock or pnpm-lock.yaml")
    prefetch_command.set_defaults(run=prefetch)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of nopard-admin."""
    options = parser().parse_args(argv)
    try:
        return options.run(options)
    except AdminError as error:
        print(f"nopard-admin: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
