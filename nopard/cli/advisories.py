"""nopard-admin advisories import PATH: OSV records into the registry's store (the registry
directory, or with NOPARD_STORAGE=s3 the bucket, as the daemon opens it)."""

from __future__ import annotations

import argparse
import sys
import time

from nopard.cli.registry import AdminError, settings_and_store


def advisories_import(options: argparse.Namespace) -> int:
    """Import the OSV records of a file, a directory or a zip; print each problem, then the summary."""
    from nopard.advisories.malware import block_malware
    from nopard.advisories.sources import SourceError, read_source
    from nopard.advisories.store import AdvisoryStore, ImportReport, parse_items
    from nopard.cli.announce import ChangedPackages, tell_instances
    from nopard.cli.maintenance import run_now
    from nopard.firewall.blocks import BlockList

    settings, opened = settings_and_store(options)
    storage = ChangedPackages(opened)  # malware blocks change packages: the instances are told
    report = ImportReport()
    store = AdvisoryStore(storage)
    try:
        records = parse_items(read_source(options.path), report, run_now(store.known()))
    except SourceError as error:
        raise AdminError(str(error)) from None
    run_now(store.import_records(records, report))
    changed = run_now(block_malware(report, BlockList(storage, time.time), settings.block_malware))
    tell_instances(settings, storage.names)
    for origin, why in report.problems:
        print(f"skipped {origin}: {why}", file=sys.stderr)
    if report.problem_count > len(report.problems):
        print(f"  ... and {report.problem_count - len(report.problems)} more", file=sys.stderr)
    print(report.summary())
    if report.malware:
        print(f"malware blocks: {changed} {'package' if changed == 1 else 'packages'} changed")
    return 1 if report.problem_count else 0
