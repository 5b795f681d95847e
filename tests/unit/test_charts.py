"""The charts' geometry (nopard.domain.charts) and their SVG (nopard.web.charts)."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.web.template import flattenString

from nopard.domain.charts import Plot, hour_marks, line_path, nice_top, runs, stacked_bars, timeline
from nopard.domain.history import BUCKET_SECONDS, BUCKETS, Day
from nopard.web.charts import day_section

PLOT = Plot(10, 5, 200, 100)


@given(st.floats(min_value=1e-9, max_value=1e15, allow_nan=False))
def test_the_scale_top_is_a_round_number_at_most_two_and_a_half_times_the_largest_value(value: float) -> None:
    top = nice_top(value)
    assert value <= top * (1 + 1e-9) and top <= 2.5 * value * (1 + 1e-9)
    mantissa = top / 10 ** round(__import__("math").floor(__import__("math").log10(top)))
    assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5, 10))


def test_nothing_to_show_scales_to_one() -> None:
    assert nice_top(0) == nice_top(-3) == 1.0


def test_a_value_too_small_for_a_power_of_ten_scales_to_one() -> None:
    # 10 ** floor(log10(5e-324)) underflows to 0.0: the scale's top was 0 and the bars divided by it.
    assert nice_top(5e-324) == 1.0
    assert stacked_bars([[("a", 5e-324)]], nice_top(5e-324), PLOT) == []  # too small to draw, not an error


@given(st.lists(st.lists(st.tuples(st.sampled_from("ab"), st.floats(min_value=0, max_value=1e6)), max_size=3),
                min_size=1, max_size=50))
def test_stacked_bars_stay_in_the_plot_and_are_as_tall_as_their_value(stacks: list[list[tuple[str, float]]]) -> None:
    top = nice_top(max(sum(v for _, v in s) for s in stacks))
    rects = stacked_bars(stacks, top, PLOT)
    for shape in rects:
        assert PLOT.left <= shape.x and shape.x + shape.width <= PLOT.left + PLOT.width + 0.01
        assert PLOT.top - 0.01 <= shape.y and shape.y + shape.height <= PLOT.bottom + 0.01
    for slot, stack in enumerate(stacks):
        height = sum(r.height for r in rects if r.first == slot)
        assert abs(height - PLOT.height * sum(v for _, v in stack) / top) < 0.05 * len(stack) + 0.01


def test_a_line_breaks_where_a_value_is_missing() -> None:
    path = line_path([1.0, 2.0, None, 2.0], 2.0, PLOT)
    assert path.count("M") == 2 and path.count("L") == 1
    assert line_path([None, None], 1.0, PLOT) == ""


def test_a_timeline_has_a_rectangle_per_run_of_one_state() -> None:
    states = ["up", "up", "down", None, "down", "down", "up"]
    assert runs(states) == [(0, 1, "up"), (2, 2, "down"), (4, 5, "down"), (6, 6, "up")]
    shapes = timeline(states, PLOT)
    assert [s.kind for s in shapes] == ["up", "down", "down", "up"]
    assert abs(sum(s.width for s in shapes) - PLOT.width * 6 / 7) < 0.1


def test_hour_marks_fall_on_whole_six_hours() -> None:
    start = 1_800_000_000.0 - 1_800_000_000.0 % BUCKET_SECONDS
    marks = hour_marks(start, BUCKET_SECONDS, BUCKETS)
    assert len(marks) == 4 and all(text.endswith(":00") and int(text[:2]) % 6 == 0 for _, text in marks)


def flat(day: Day) -> str:
    return asyncio.run(_flatten(day))


async def _flatten(day: Day) -> str:
    return (await flattenString(None, day_section(day))).decode()  # type: ignore[no-any-return]


def a_day(**fields: dict[int, float]) -> Day:
    buckets: list[dict[str, float]] = [{} for _ in range(BUCKETS)]
    for field, values in fields.items():
        for slot, value in values.items():
            buckets[slot][field.replace("__", ":")] = value
    return Day(1_800_000_000.0 - 1_800_000_000.0 % BUCKET_SECONDS, BUCKET_SECONDS, buckets)


def test_names_in_labels_are_escaped_and_each_chart_is_labelled() -> None:
    hostile = 'http://x.test/<script>alert("x")</script>&"'
    day = a_day(**{f"down:{hostile}".replace(":", "__", 1): {5: 60}, f"up:{hostile}".replace(":", "__", 1): {4: 300},
                   "served__HIT": {1: 5, 2: 7}, "served__MISS": {2: 1}, "store__bytes": {3: 2048, 9: 4096},
                   "mirror__bytes": {9: 1024}, "mirror__limit": {9: 8192}, "sync__runs": {7: 1},
                   "sync__changed": {7: 4}, "sync__tarballs": {7: 2}})
    page = flat(day)
    assert "<script>" not in page and "&lt;script&gt;" in page
    for name in ("requests", "upstreams", "sizes", "sync"):
        svg = re.search(rf'<svg [^>]*data-chart="{name}".*?</svg>', page, re.S)
        assert svg and f'aria-labelledby="{name}-title {name}-desc"' in svg.group(0)
        assert f'<title id="{name}-title">' in svg.group(0) and f'<desc id="{name}-desc">' in svg.group(0)
    assert page.count('class="HIT"') == 2 and page.count('class="MISS"') == 1
    assert "13 documents and tarballs served in the last 24 hours: HIT 12 (92%), MISS 1 (8%)" in page
    assert page.count('class="down"') == 1 and page.count('class="up"') == 1
    assert 'class="limit"' in page and "limit 8.0 KiB (NOPARD_MIRROR_MAX_SIZE)" in page
    assert "1 sync run in the last 24 hours: 0 packages checked, 4 documents changed, 2 tarballs fetched" in page
    assert ' style=' not in page and "<style" not in page  # the CSP allows no inline style


def test_an_empty_day_says_so() -> None:
    page = flat(a_day())
    assert "No document or tarball served in the last 24 hours." in page
    assert "No upstream was watched" in page and "not been measured yet" in page
    assert "No sync run in the last 24 hours." in page
