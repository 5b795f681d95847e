"""The status page's charts of the last day in a real headless Chromium against a real `twistd -n nopard`:
after requests served four ways, a sync run and an upstream outage, what an operator sees."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser import Browser
from tests.e2e.test_workers import pinned, workers  # noqa: F401  (workers: the fixture)
from tests.polling import poll_until
from tests.support import NopardServer, publish_body, until_upstream_down
from tests.upstream import FakeUpstream

WIDTH, HEIGHT = 1280, 3000  # tall enough to show the whole status page at once


def png_size(path: Path) -> tuple[int, int]:
    """The width and height a PNG file says it has (it must be one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def figures(browser: Browser, chart: str, kind: str) -> list[int]:
    """The count in the tooltip of each bar of ``kind`` in ``chart`` ("12:05 UTC to 12:10 UTC: 3 HIT")."""
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), r => r.querySelector('title').textContent)",
        f'svg[data-chart="{chart}"] rect.{kind}')
    return [int(re.search(rf": ([\d,]+) {kind}$", title).group(1).replace(",", "")) for title in titles]


def test_the_last_day_after_traffic_a_sync_run_and_an_outage(start_nopard: Callable[..., NopardServer],
                                                              fake: FakeUpstream, tmp_path: Path) -> None:
    server = start_nopard({"NOPARD_FORWARDER_URL": fake.url, "NOPARD_SYNC_INTERVAL": "3600",
                           "NOPARD_META_TTL": "1", "NOPARD_PROBE_INTERVAL": "1", "NOPARD_STALE_DEADLINE": "1",
                           "NOPARD_UPSTREAM_TIMEOUT": "30", "NOPARD_MIRROR_MAX_SIZE": "1mb"})
    token = server.token("alice", "pw-alice")
    assert server.request("PUT", "/chart-local", publish_body("chart-local", "1.0.0"), token=token).status == 201
    for _ in range(2):
        assert server.request("GET", "/chart-local").status == 200  # LOCAL
    assert server.request("GET", "/debug").status == 200  # MISS
    answer = server.request("POST", "/-/nopard/sync", {"job": "refresh"}, headers=server.operator_headers())
    assert answer.status == 200, answer.body
    # The evict job measures the mirror (well under its limit: nothing evicted).
    answer = server.request("POST", "/-/nopard/sync", {"job": "evict"}, headers=server.operator_headers())
    assert answer.status == 200, answer.body

    fake.fault("500")
    until_upstream_down(server, "/ms")
    # Fresh for NOPARD_META_TTL (1 s) after the sync run refreshed it, then served stale.
    poll_until(lambda: server.request("GET", "/debug").headers.get("x-nopard-cache") == "STALE", "a STALE answer")
    fake.fault("none")
    poll_until(lambda: server.request("GET", "/debug").status == 200 and server.request(
        "GET", "/-/nopard/status").json()["upstreams"][0]["state"] == "closed", "the upstream back up")

    with Browser(tmp_path / "screenshots", width=WIDTH, height=HEIGHT) as browser:
        browser.open(server.url + "-/web/status")
        shot = browser.screenshot("status-charts")
        viewport = tuple(browser.execute_script("return [window.innerWidth, window.innerHeight]"))
        assert browser.execute_script("return document.documentElement.scrollHeight") <= viewport[1]  # all of it
        charts = browser.find_all("svg.chart[role=img]")
        assert [c.get_attribute("data-chart") for c in charts] == ["requests", "upstreams", "sizes", "sync"]
        for chart in charts:
            name = chart.get_attribute("data-chart")
            assert chart.find_element("css selector", f"title#{name}-title").get_attribute("textContent")
            assert chart.find_element("css selector", f"desc#{name}-desc").get_attribute("textContent")
            assert chart.size["width"] > 600 and chart.size["height"] > 40  # drawn, at the page's width
        text = browser.text()

        assert sum(figures(browser, "requests", "LOCAL")) == 2
        assert sum(figures(browser, "requests", "MISS")) >= 1 and sum(figures(browser, "requests", "STALE")) >= 1
        served = re.search(r"([\d,]+) documents and tarballs served in the last 24 hours: (.*)\.", text)
        assert served and "LOCAL 2 (" in served.group(2)
        bars = {kind: sum(figures(browser, "requests", kind)) for kind in ("HIT", "REVALIDATED", "STALE", "MISS",
                                                                           "LOCAL")}
        assert sum(bars.values()) == int(served.group(1).replace(",", ""))

        downs = browser.find_all('svg[data-chart="upstreams"] rect.down')
        assert len(downs) == 1 and downs[0].size["width"] > 0
        assert re.search(rf"{re.escape(fake.url.rstrip('/'))}: down once, ", text), text

        runs = browser.find_all('svg[data-chart="sync"] circle.run')
        assert 1 <= len(runs) <= 2  # refresh and evict, in one bucket (two, at a boundary)
        assert re.search(r"2 sync runs in the last 24 hours: \d+ packages? checked", text), text
        assert browser.find_all('svg[data-chart="sizes"] path.line.store')
        assert re.search(r"Sizes: store [\d.]+ (B|KiB) now, .*; mirror [\d.]+ (B|KiB); "
                         r"limit 1\.0 MiB \(NOPARD_MIRROR_MAX_SIZE\)\.", text), text
        assert browser.find_all('svg[data-chart="sizes"] line.limit')
        assert browser.find_all('svg[data-chart="sizes"] circle.point.mirror')

        assert browser.console_errors() == []  # no CSP violation, nothing failed to load
        assert all(url.startswith(server.url) for url in browser.requested_urls())
        browser.no_dialog()
    with Browser(tmp_path / "screenshots", mobile=True) as phone:
        phone.open(server.url + "-/web/status")
        phone.execute_script("document.querySelector('svg[data-chart=upstreams]').scrollIntoView()")
        small = phone.screenshot("status-charts-mobile")
        # The page does not scroll sideways: a chart does, within its figure, at a readable size.
        wide = phone.execute_script("""const w = document.documentElement.clientWidth; const out = [];
            for (const el of document.querySelectorAll('main > *, main > * > *'))
                if (el.getBoundingClientRect().right > w + 1) out.push(el.outerHTML.slice(0, 80));
            return out;""")
        assert wide == []
        assert phone.find('svg[data-chart="upstreams"]').size["width"] >= 500
        # ...scrolled to its right end at first: the outage, minutes ago, is in sight.
        assert phone.execute_script("const r = document.querySelector('svg[data-chart=upstreams] rect.down')"
                                    ".getBoundingClientRect(); return r.left >= 0 && r.right <= window.innerWidth")
        assert "down once" in phone.text() and phone.console_errors() == []
    assert png_size(small)[0] == 390
    assert shot.parent == tmp_path / "screenshots" and shot.stat().st_size > 10_000
    assert png_size(shot) == viewport  # the page as the window showed it


def test_the_page_of_any_worker_counts_every_workers_requests(workers) -> None:  # noqa: F811
    """NOPARD_WORKERS=2 without Redis: the workers share the day through their supervisor's keyspace."""
    server = workers()
    first, second = pinned(server).values()
    token = server.token("alice", "pw-alice")
    assert first.request("PUT", "/worker-local", publish_body("worker-local", "1.0.0"), token=token).status == 201
    for worker, times in ((first, 2), (second, 3)):
        for _ in range(times):
            assert worker.request("GET", "/worker-local").status == 200

    def counted(worker: Any) -> bool:
        page = worker.request("GET", "/-/web/status").body.decode()
        return "5 documents and tarballs served in the last 24 hours: LOCAL 5 (100%)" in page

    for worker in (first, second):
        poll_until(lambda w=worker: counted(w), f"worker {worker.worker} showing both workers' requests", 30)
