"""The changes section of scripts/bench: upstream requests per refreshed package, with and without a changes feed.

Two nopards mirror the same fake upstream serving ``--changes-packages`` synthetic packages
(tests/fake_synthetic.py), every document requested once through each: one sweeping as
always, one following the fake upstream's feed (NOPARD_CHANGES_URL=<upstream>/_changes,
tests/fake_changes.py), whose first run (taking the feed's position, and sweeping once) is
made before anything changes. Then ``--changes-changed`` packages get a new version upstream,
every document is stale (NOPARD_META_TTL=1), and each nopard runs one refresh
(``POST /-/nopard/sync`` with job refresh) while the fake upstream counts what it is asked.
The figure is upstream requests (documents and feed pages) per package the run refreshed;
the ratio is without / with. Counts only: no time is compared.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from pathlib import Path

from bench import say
from bench.sync import SYNC_TIMEOUT, populate
from tests.fake_synthetic import Synthetic
from tests.support import NopardServer
from tests.upstream import FakeUpstream

META_TTL = "1"  # every document stale when the measured runs start


def settings(args) -> dict[str, str]:
    """Both nopards' settings: no schedule (the bench runs the refresh), not throttled, stale at once."""
    return {"NOPARD_SYNC_INTERVAL": "0", "NOPARD_SYNC_RATE": str(args.sync_rate), "NOPARD_META_TTL": META_TTL}


def describe(args) -> str:
    """The section's settings, for the summary's header."""
    env = " ".join(f"{key}={value}" for key, value in settings(args).items())
    return (f"fake upstream --synthetic {args.changes_packages}, {args.changes_changed} of them changed; "
            f"two nopards with {env}, one with NOPARD_CHANGES_URL=<fake upstream>/_changes")


def refresh(server: NopardServer) -> dict:
    """One refresh run through ``POST /-/nopard/sync``; its report."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SYNC_TIMEOUT)
    try:
        connection.request("POST", "/-/nopard/sync", body=json.dumps({"job": "refresh"}),
                           headers={"Content-Type": "application/json", **server.operator_headers()})
        answer = connection.getresponse()
        body = answer.read()
    finally:
        connection.close()
    if answer.status != 200:
        raise RuntimeError(f"POST /-/nopard/sync: {answer.status} {body[:300]!r}")
    [job] = [job for job in json.loads(body)["reports"] if job["job"] == "refresh"]
    return job


def measured(server: NopardServer, upstream: FakeUpstream, label: str) -> dict:
    """One counted refresh run of ``server``."""
    upstream.reset()
    started = time.monotonic()
    job = refresh(server)
    requests = upstream.stats()["requests"]
    feed = sum(1 for _, path in requests if path == "/_changes")
    documents = sum(1 for _, path in requests if path != "/_changes" and "/-/" not in path)
    per = (documents + feed) / job["changed"] if job["changed"] else None
    run = {"label": label, "checked": job["checked"], "changed": job["changed"], "failures": job["failure_count"],
           "document_requests": documents, "feed_requests": feed, "requests_per_refreshed": per,
           "seconds": round(time.monotonic() - started, 2)}
    say(f"  {label}: checked {job['checked']}, changed {job['changed']}, upstream requests: {documents} "
        f"documents + {feed} feed pages = {per if per is None else round(per, 2)} per refreshed package")
    return run


def changes_phase(args, work: Path, results: dict, start) -> None:
    """The whole section; its numbers go to results["changes"]."""
    count, changed = args.changes_packages, args.changes_changed
    names = Synthetic(count).names()
    section = results["changes"] = {"packages": count, "changed": changed}
    say(f"changes: a fake upstream with {count} synthetic packages, two fresh nopards")
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(FakeUpstream(extra_args=("--synthetic", str(count))))
        polling = start(stack, work / "changes-polling", upstream, **settings(args))
        following = start(stack, work / "changes-following", upstream, **settings(args),
                          NOPARD_CHANGES_URL=upstream.url + "_changes")
        for server, label in ((polling, "polling"), (following, "following")):
            say(f"changes: populating the {label} nopard with {count} documents")
            populate(server.port, names)
        say("changes: the following nopard's first run (takes the feed's position, sweeps once)")
        refresh(following)
        step = max(count // changed, 1)
        for name in names[::step][:changed]:
            upstream.change(name)
        time.sleep(float(META_TTL) + 0.5)  # every copy stale: the sweep revalidates all of them
        section["without"] = measured(polling, upstream, "without the feed (sweep)")
        section["with"] = measured(following, upstream, "with the feed")
        for name in names[::step][:changed]:
            upstream.restore(name)

