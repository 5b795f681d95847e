"""scripts/bench's pure parts: the side-by-side ratios and goals it prints, and the configs it writes.

No time is asserted: the figures below are made up, and only what the summary says of them is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench import goals
from bench.nginx import DIRECT, ONE_HOP, STATIC, bench_conf
from bench.peer import verdaccio_config
from bench.servers import cpu_seconds, get, tree_cpu_seconds
from tests.nginx_server import CONF, NginxServer
from tests.support import free_port


def wrk_figures(rps: float) -> dict:
    """A wrk run's dict as bench/wrk.py makes it."""
    return {"requests": int(rps * 10), "requests_per_sec": rps, "transfer_per_sec": rps * 1000,
            "latency_ms": {"50": 1.0, "99": 4.0}, "non_2xx_3xx": 0, "socket_errors": 0}


def npm_run(key: str, seconds: float, requests: int = 0) -> dict:
    """One npm run as bench/npm.py records it."""
    return {"key": key, "seconds": seconds, "upstream_requests": requests, "upstream_connections": requests}


RESULTS = {
    "side": {"file": "big-package-1.0.0.tgz", "bytes": 58 * 1024, "ping": wrk_figures(4000),
             "nopard": wrk_figures(3000), "doc": wrk_figures(2000), "doc_quarantine": wrk_figures(1900),
             "nginx_direct": wrk_figures(30000),
             "nginx_proxy": wrk_figures(2500), "accel_0": wrk_figures(12000), "accel_10": wrk_figures(25000),
             "peer": {"name": "verdaccio", "version": "6.10.4", "ping": wrk_figures(3000),
                      "doc": wrk_figures(100), "tarball": wrk_figures(1000)}},
    "npm": {"runs": [npm_run("ci_warm", 12.0), npm_run("ci_cache", 11.5), npm_run("ci_direct", 10.0),
                     npm_run("ci_cold", 13.0), npm_run("ci_offline", 12.5, requests=2),
                     npm_run("install_offline", 15.0, requests=7),
                     npm_run("peer_ci_warm", 14.0), npm_run("ci_static", 12.65)]},
}


def verdicts(results: dict) -> dict[str, str]:
    return {goal.label: goal.verdict() for goal in goals.goals(results)}


def test_each_goal_is_judged_from_the_runs_ratio():
    assert verdicts(RESULTS) == {
        "nopard tarball / nopard /-/ping": "met",  # 0.75 >= 0.60
        "nginx + accel (cache 0 s) / nginx direct": "MISSED",  # 0.40 < 0.50
        "nginx + accel (cache 10 s) / nginx direct": "met",  # 0.83
        "abbreviated doc, NOPARD_MIN_RELEASE_AGE=3d / without": "met",  # 0.95 >= 0.90
        "nopard tarball / peer tarball": "met",  # 3.0 >= 2.5
        "nopard tarball, NOPARD_WORKERS=auto / peer tarball": "not measured",  # no workers runs here
        "warm npm ci / faster of (npm cache, direct)": "MISSED",  # 12 / 10 = 1.2
        "cold npm ci (nopard empty) / direct npm ci": "MISSED",  # 1.3
        "upstream requests, offline install (blackholed)": "MISSED",  # npm install's 7 > 5
        "npm ci from static nginx / npm's cache": "information",  # 1.10x, judged against nothing
    }


def test_static_nginx_is_an_informational_row_beside_the_goals():
    text = "\n".join(goals.sections(RESULTS))
    row = next(line for line in text.splitlines() if line.startswith("npm ci from static nginx / npm's cache"))
    assert row.split()[-3:] == ["1.10x", "-", "information"]  # 12.65 / 11.5; no target, no verdict
    assert "npm ci from static nginx (same files) / npm ci --offline" in text
    assert "warm npm ci / npm ci from static nginx" in text and "0.95x" in text  # 12 / 12.65
    without = {"npm": {"runs": [run for run in RESULTS["npm"]["runs"] if run["key"] != "ci_static"]}}
    assert verdicts(without)["npm ci from static nginx / npm's cache"] == "not measured"


def test_a_part_that_did_not_run_is_not_measured_rather_than_missed():
    only_npm = {"npm": RESULTS["npm"]}
    judged = verdicts(only_npm)
    assert judged["nopard tarball / nopard /-/ping"] == "not measured"
    assert judged["nopard tarball / peer tarball"] == "not measured"
    assert judged["warm npm ci / faster of (npm cache, direct)"] == "MISSED"
    assert "side by side" not in "\n".join(goals.sections(only_npm))


def test_the_summary_prints_every_ratio_against_nginx_and_the_peer():
    text = "\n".join(goals.sections(RESULTS))
    direct_row = next(line for line in text.splitlines() if line.startswith("nginx -> nopard, accel redirect, "
                                                                           "decision cache 0 s"))
    assert direct_row.split()[-2:] == ["0.40x", "4.00x"]  # / nginx direct, / nopard alone
    assert "verdaccio 6.10.4" in text
    tarball_vs_peer = next(line for line in text.splitlines() if line.startswith("tarball  "))
    assert tarball_vs_peer.split()[-1] == "3.00x"
    assert "warm npm ci / npm ci --offline (npm's cache)" in text and "1.04x" in text
    assert "warm npm ci: nopard / peer" in text and "0.86x" in text


def test_workers_section_shows_the_ratio_of_n_to_one():
    workers = {"count": 2, "one": {"ping": wrk_figures(4000), "doc": wrk_figures(2000), "tarball": wrk_figures(3000)},
               "many": {"ping": wrk_figures(7000), "doc": wrk_figures(3800), "tarball": wrk_figures(5400)},
               "rss_one": 100 * 2 ** 20, "rss_many": 300 * 2 ** 20}
    lines = goals.workers_section(workers)
    assert lines[1].endswith("(2 on this machine): req/s")
    assert next(line for line in lines if line.startswith("tarball")).split()[-1] == "1.80x"
    assert next(line for line in lines if line.startswith("peak RSS")).split()[-1] == "3.00x"


def test_the_bench_nginx_conf_adds_one_public_location_for_the_store(tmp_path):
    conf = bench_conf(CONF.read_text(), tmp_path / "store")
    assert conf.startswith(CONF.read_text().rstrip()[:-1])  # the shipped conf, unchanged, plus the location
    assert f'location ~ "^{DIRECT}(.+)$"' in conf and f"alias {tmp_path / 'store'}/$1;" in conf
    assert f"location ^~ {ONE_HOP}/ {{" in conf and "proxy_pass http://nopard;" in conf
    assert f"location ^~ {STATIC} {{" in conf
    assert f"alias {tmp_path / 'store'}/packages/$1/upstream/tarballs/$2;" in conf
    assert conf.rstrip().endswith("}")


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_static_location_sends_a_mirrored_tarball_under_nopards_tarball_path(tmp_path):
    store = tmp_path / "store"
    for name in ("@scope/pkg", "pkg"):
        stored = store / "packages" / name / "upstream" / "tarballs" / "pkg-1.0.0.tgz"
        stored.parent.mkdir(parents=True)
        stored.write_bytes(f"{name} bytes".encode())
    conf = tmp_path / "bench.conf"
    conf.write_text(bench_conf(CONF.read_text(), store))
    # No nopard behind it: an answer that asked nopard first (the shipped tarball location) fails.
    server = NginxServer([free_port()], conf_path=conf, store=store).start()
    try:
        found = [get(server.url, f"{STATIC}{name}/-/pkg-1.0.0.tgz").body for name in ("@scope/pkg", "pkg")]
        get(server.url, f"{STATIC}pkg/-/pkg-2.0.0.tgz", status=404)
    finally:
        server.stop()
    assert found == [b"@scope/pkg bytes", b"pkg bytes"]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_bench_conf(tmp_path):
    conf = tmp_path / "bench.conf"
    conf.write_text(bench_conf(CONF.read_text(), tmp_path / "store"))
    server = NginxServer([5984], conf_path=conf, store=tmp_path / "store")
    try:
        checked = server.test_config()
    finally:
        server.stop()
    assert checked.returncode == 0, checked.stderr


def test_verdaccio_proxies_only_the_given_upstream(tmp_path: Path):
    config = verdaccio_config(tmp_path / "storage", "http://127.0.0.1:4000", 4873)
    assert config["uplinks"] == {"upstream": {"url": "http://127.0.0.1:4000/", "maxage": "60m", "timeout": "30s",
                                              "cache": True}}
    assert {rule["proxy"] for rule in config["packages"].values()} == {"upstream"}
    assert config["listen"] == "127.0.0.1:4873" and config["web"] == {"enable": False}
    # Written as JSON, which Verdaccio's YAML parser reads as is; no host but loopback in it.
    text = json.dumps(config)
    hosts = {word.split("//", 1)[1].split("/")[0].split(":")[0] for word in text.split('"') if "//" in word}
    assert hosts == {"127.0.0.1"}


def test_nginx_bench_conf_is_refused_when_the_conf_does_not_end_with_a_block():
    with pytest.raises(ValueError):
        bench_conf("server { listen 80; }\n# trailing comment\n", Path("/store"))


def bench_script():
    """scripts/bench loaded as a module (it has no .py suffix; run from .venv, it does not re-exec)."""
    import importlib.machinery
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench"
    loader = importlib.machinery.SourceFileLoader("nopard_bench_script", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_quick_runs_use_short_defaults_unless_told_otherwise():
    script = bench_script()
    full, quick = script.parse_args([]), script.parse_args(["--quick", "--repeat", "2"])
    assert (full.duration, full.repeat, full.rounds, full.sync_packages) == (10, 3, 3, 3000)
    assert (quick.duration, quick.repeat, quick.rounds, quick.sync_packages) == (3, 2, 1, 300)


def test_only_nginx_or_workers_keeps_the_http_runs_they_are_made_in():
    # They are measured inside the http part: skipping it left `--only workers` measuring nothing.
    script = bench_script()
    ran = {part: [p for p in script.PARTS if not getattr(script.parse_args(["--only", part]), f"skip_{p}")]
           for part in ("workers", "nginx", "npm")}
    assert ran == {"workers": ["http", "workers"], "nginx": ["http", "nginx"], "npm": ["npm"]}


def test_a_registrys_cpu_counts_its_children_as_nginx_answers_from_its_workers():
    import subprocess
    import sys

    # A child that has used some CPU (0.1 s of its own), then waits to be measured.
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 0.1: pass\n"
                              "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        own, tree, childs = cpu_seconds(os.getpid()), tree_cpu_seconds(os.getpid()), cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()
    assert own is not None and tree is not None and childs is not None
    assert childs > 0 and tree >= own + childs
