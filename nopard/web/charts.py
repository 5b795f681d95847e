"""The status page's charts of the last day: inline SVG built by pure functions, no script.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>``, followed by a text
summary saying what it shows; colours come from nopard.css classes (the pages' content
security policy allows no inline style). Names (upstream URLs) go in as strings, which
the flattener escapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.web.template import Tag, tags

from nopard.domain.charts import (
    Plot,
    Rect,
    hour_marks,
    line_path,
    nice_top,
    runs,
    scale_ticks,
    stacked_bars,
    timeline,
)
from nopard.domain.history import SERVED_AS, Day, upstream_field
from nopard.web.pages import SIZE_UNITS, human_size

VIEW_WIDTH = 720
PLOT = Plot(left=64, top=10, width=VIEW_WIDTH - 72, height=120)
VIEW_HEIGHT = 156
ROW_HEIGHT = 18  # an upstream's row in the timeline
ROW_GAP = 22  # room for its name above the row
SERVED_LABELS = {"HIT": "HIT (from the cache)", "REVALIDATED": "REVALIDATED (the upstream said unchanged)",
                 "STALE": "STALE (the upstream was down or slow)", "MISS": "MISS (fetched from the upstream)",
                 "LOCAL": "LOCAL (published here)"}


def svg(name: str, title: str, description: str, height: float, *content: Any) -> Tag:
    """An accessible chart: its title and description named by aria-labelledby (in a box that
    scrolls sideways on a narrow screen)."""
    return tags.div(class_="plot")(Tag("svg")(
        Tag("title")(title, id=f"{name}-title"), Tag("desc")(description, id=f"{name}-desc"), *content,
        viewBox=f"0 0 {VIEW_WIDTH} {height:g}", role="img", class_=f"chart {name}",
        **{"aria-labelledby": f"{name}-title {name}-desc", "data-chart": name},
    ))


def rect(shape: Rect, label: str) -> Tag:
    """One rectangle, its figures in its tooltip."""
    return Tag("rect")(Tag("title")(label), x=f"{shape.x:g}", y=f"{shape.y:g}", width=f"{shape.width:g}",
                       height=f"{shape.height:g}", class_=shape.kind)


def clock(moment: float) -> str:
    """HH:MM UTC."""
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%H:%M UTC")


def span_label(day: Day, first: int, last: int) -> str:
    """The time the slots ``first`` to ``last`` cover."""
    return f"{clock(day.start + first * day.width)} to {clock(day.start + (last + 1) * day.width)}"


def amount(value: float) -> str:
    """A count, grouped by thousands."""
    return f"{int(round(value)):,}"


def counted(value: float, thing: str, things: str | None = None) -> str:
    """``1 run``, ``3 runs``."""
    return f"{amount(value)} {thing if round(value) == 1 else things or thing + 's'}"


def duration(seconds: float) -> str:
    """``2 h 5 min``, ``12 min``, ``under a minute``."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def byte_unit(value: float) -> tuple[int, str]:
    """The unit of the size axis for sizes up to ``value``."""
    return next(((size, name) for size, name in SIZE_UNITS if value >= size), (1, "B"))


def axes(day: Day, top: float, label: Any) -> list[Tag]:
    """The y scale's lines and labels (``label(value)``; None: no line there), and the hour marks
    along the bottom."""
    drawn: list[Tag] = []
    for value in scale_ticks(top):
        if label(value) is None:
            continue
        y = f"{PLOT.y(value, top):.2f}"
        drawn.append(Tag("line")(x1=f"{PLOT.left:g}", x2=f"{PLOT.left + PLOT.width:g}", y1=y, y2=y, class_="grid"))
        drawn.append(Tag("text")(label(value), x=f"{PLOT.left - 6:g}", y=y, class_="tick y"))
    drawn.extend(time_marks(day, PLOT.bottom))
    return drawn


def count_label(value: float) -> str | None:
    """A count on the y axis; None for a fraction (half of a top of 1)."""
    return f"{value:g}" if value == int(value) else None


def time_marks(day: Day, bottom: float) -> list[Tag]:
    """The hour marks (every 6 h, UTC) below ``bottom``."""
    slots = len(day.buckets)
    marks = []
    for slot, text in hour_marks(day.start, day.width, slots):
        x = f"{PLOT.x(slot, slots):.2f}"
        marks.append(Tag("line")(x1=x, x2=x, y1=f"{PLOT.top:g}", y2=f"{bottom:g}", class_="grid hour"))
        marks.append(Tag("text")(text, x=x, y=f"{bottom + 16:g}", class_="tick x"))
    return marks


def legend(entries: Sequence[tuple[str, str]]) -> Tag:
    """Which colour is which: (class, text)."""
    return tags.ul(class_="legend")(*[tags.li(tags.span(class_=f"swatch {kind}"), text) for kind, text in entries])


# The charts ------------------------------------------------------------------------------


def requests_chart(day: Day) -> Tag:
    """Documents and tarballs served, by how, stacked per bucket."""
    stacks = [[(status, bucket.get(f"served:{status}", 0.0)) for status in SERVED_AS] for bucket in day.buckets]
    top = nice_top(max((sum(v for _, v in stack) for stack in stacks), default=0.0))
    bars = [rect(shape, f"{span_label(day, shape.first, shape.last)}: "
                        f"{amount(day.buckets[shape.first].get('served:' + shape.kind, 0))} {shape.kind}")
            for shape in stacked_bars(stacks, top, PLOT)]
    totals = {status: day.total(f"served:{status}") for status in SERVED_AS}
    total = sum(totals.values())
    if total:
        parts = ", ".join(f"{status} {amount(count)} ({count / total:.0%})"
                          for status, count in totals.items() if count)
        summary = f"{amount(total)} documents and tarballs served in the last 24 hours: {parts}."
    else:
        summary = "No document or tarball served in the last 24 hours."
    return tags.figure(class_="chart")(
        svg("requests", "Requests by how they were served, last 24 hours",
            f"Stacked bars, one per {day.width // 60} minutes: {summary}", VIEW_HEIGHT,
            *axes(day, top, count_label), Tag("g")(*bars, class_="bars")),
        legend([(status, SERVED_LABELS[status]) for status in SERVED_AS]),
        tags.figcaption(summary, class_="summary"),
    )


def upstream_states(day: Day, url: str) -> list[str | None]:
    """Each bucket's state of ``url``: down if it was seen down at all, up if seen only up, else None."""
    down, up = upstream_field("down", url), upstream_field("up", url)
    return ["down" if bucket.get(down, 0) > 0 else "up" if bucket.get(up, 0) > 0 else None
            for bucket in day.buckets]


def upstream_summary(day: Day, url: str, states: list[str | None]) -> str:
    """One sentence on ``url``'s day."""
    down = [(first, last) for first, last, state in runs(states) if state == "down"]
    seconds = day.total(upstream_field("down", url))
    seen = seconds + day.total(upstream_field("up", url))
    if not down:
        return f"{url}: up all the time it was watched ({duration(seen)})."
    periods = "once" if len(down) == 1 else f"{len(down)} times"
    spans = "; ".join(span_label(day, first, last) for first, last in down[-3:])
    # Whether it is down now is the Upstreams table's to say: a bucket only knows it was, at some point.
    return f"{url}: down {periods}, {duration(seconds)} in all ({spans})."


def upstream_chart(day: Day) -> Tag:
    """A timeline per upstream: up, down, or not watched (no instance running)."""
    urls = day.upstreams()
    if not urls:
        return tags.figure(class_="chart")(tags.figcaption(
            "No upstream was watched in the last 24 hours (a private registry, or nopard just started).",
            class_="summary"))
    height = PLOT.top + len(urls) * (ROW_GAP + ROW_HEIGHT) + 22
    rows, sentences = [], []
    for row, url in enumerate(urls):
        states = upstream_states(day, url)
        top = PLOT.top + row * (ROW_GAP + ROW_HEIGHT) + ROW_GAP
        band = Plot(PLOT.left, top, PLOT.width, ROW_HEIGHT)
        shapes = [rect(shape, f"{url} {shape.kind}: {span_label(day, shape.first, shape.last)}")
                  for shape in timeline(states, band)]
        rows.append(Tag("g")(Tag("text")(url, x="4", y=f"{top - 6:g}", class_="row-name"), *shapes,
                             class_="upstream-row", **{"data-url": url}))
        sentences.append(upstream_summary(day, url, states))
    summary = " ".join(sentences)
    return tags.figure(class_="chart")(
        svg("upstreams", "Upstreams up and down, last 24 hours", f"A timeline per upstream: {summary}", height,
            *rows, *time_marks(day, height - 22)),
        legend([("up", "up"), ("down", "down (served from nopard's copies)"), ("none", "not watched")]),
        tags.figcaption(summary, class_="summary"),
    )


def sizes_chart(day: Day) -> Tag:
    """The store's and the mirror's size, and the mirror's limit when there is one."""
    store = [bucket.get("store:bytes") for bucket in day.buckets]
    mirror = [bucket.get("mirror:bytes") for bucket in day.buckets]
    limits = [b["mirror:limit"] for b in day.buckets if "mirror:limit" in b]
    limit = limits[-1] if limits else None
    seen = [v for v in store + mirror if v is not None] + ([limit] if limit else [])
    if not seen:
        return tags.figure(class_="chart")(tags.figcaption("The store has not been measured yet.", class_="summary"))
    unit, unit_name = byte_unit(max(seen))
    top = nice_top(max(seen) / unit) * unit
    drawn: list[Tag] = [*axes(day, top, lambda v: f"{v / unit:g} {unit_name}" if v else "0")]
    for kind, values in (("store", store), ("mirror", mirror)):
        if any(v is not None for v in values):
            drawn.append(Tag("path")(d=line_path(values, top, PLOT), class_=f"line {kind}"))
            slot, value = next((i, v) for i, v in reversed(list(enumerate(values))) if v is not None)
            drawn.append(Tag("circle")(Tag("title")(f"{kind}: {human_size(value)}"), r="3",
                                       cx=f"{PLOT.x(slot + 0.5, len(values)):.2f}", cy=f"{PLOT.y(value, top):.2f}",
                                       class_=f"point {kind}"))
    parts = [f"store {human_size(_last(store))} now, at most {human_size(max(v for v in store if v is not None))}"
             if any(v is not None for v in store) else "store not measured"]
    if any(v is not None for v in mirror):
        parts.append(f"mirror {human_size(_last(mirror))}")
    if limit:
        y = f"{PLOT.y(limit, top):.2f}"
        drawn.append(Tag("line")(Tag("title")(f"mirror limit: {human_size(limit)}"), x1=f"{PLOT.left:g}",
                                 x2=f"{PLOT.left + PLOT.width:g}", y1=y, y2=y, class_="limit"))
        parts.append(f"limit {human_size(limit)} (NOPARD_MIRROR_MAX_SIZE)")
    else:
        parts.append("no limit set")
    summary = "Sizes: " + "; ".join(parts) + "."
    entries = [("store", "the whole store")]
    entries += [("mirror", "mirrored packages")] if any(v is not None for v in mirror) else []
    entries += [("limit", "the mirror's limit")] if limit else []
    return tags.figure(class_="chart")(
        svg("sizes", "Store and mirror size, last 24 hours", f"Lines, one point per {day.width // 60} minutes: "
            f"{summary}", VIEW_HEIGHT, *drawn),
        legend(entries), tags.figcaption(summary, class_="summary"),
    )


def _last(values: list[float | None]) -> float:
    return next(v for v in reversed(values) if v is not None)


def sync_chart(day: Day) -> Tag:
    """Sync runs, and the documents they changed and the tarballs they fetched, per bucket."""
    stacks = [[("changed", b.get("sync:changed", 0.0)), ("tarballs", b.get("sync:tarballs", 0.0))]
              for b in day.buckets]
    top = nice_top(max((sum(v for _, v in stack) for stack in stacks), default=0.0))
    bars = [rect(shape, f"{span_label(day, shape.first, shape.last)}: "
                        f"{amount(day.buckets[shape.first].get('sync:' + shape.kind, 0))} {shape.kind}")
            for shape in stacked_bars(stacks, top, PLOT)]
    slots = len(day.buckets)
    marks = [Tag("circle")(Tag("title")(f"{span_label(day, slot, slot)}: {amount(b['sync:runs'])} run(s), "
                                        f"{amount(b.get('sync:checked', 0))} checked, "
                                        f"{amount(b.get('sync:changed', 0))} changed, "
                                        f"{amount(b.get('sync:tarballs', 0))} tarballs, "
                                        f"{amount(b.get('sync:failed', 0))} failed"),
                           cx=f"{PLOT.x(slot + 0.5, slots):.2f}", cy=f"{PLOT.bottom + 5:g}", r="3",
                           class_="run failed" if b.get("sync:failed") else "run")
             for slot, b in enumerate(day.buckets) if b.get("sync:runs")]
    count = day.total("sync:runs")
    if count:
        last = max(slot for slot, b in enumerate(day.buckets) if b.get("sync:runs"))
        summary = (f"{counted(count, 'sync run')} in the last 24 hours: "
                   f"{counted(day.total('sync:checked'), 'package')} checked, "
                   f"{counted(day.total('sync:changed'), 'document')} changed, "
                   f"{counted(day.total('sync:tarballs'), 'tarball')} fetched, "
                   f"{counted(day.total('sync:failed'), 'failure')}; the last ended between "
                   f"{span_label(day, last, last).replace(' UTC to ', ' and ')}.")
    else:
        summary = "No sync run in the last 24 hours."
    return tags.figure(class_="chart")(
        svg("sync", "Sync runs and what they changed, last 24 hours", f"Bars of changes, dots for runs: {summary}",
            VIEW_HEIGHT + 6, *axes(day, top, count_label), Tag("g")(*bars, class_="bars"),
            Tag("g")(*marks, class_="runs")),
        legend([("changed", "documents changed"), ("tarballs", "tarballs fetched"), ("run", "a run")]),
        tags.figcaption(summary, class_="summary"),
    )


def day_section(day: Day) -> Tag:
    """The status page's section of the four charts."""
    return tags.section(class_="day", **{"aria-labelledby": "day-h"})(
        tags.h2("The last 24 hours", id="day-h"),
        tags.h3("Requests"), requests_chart(day),
        tags.h3("Upstreams"), upstream_chart(day),
        tags.h3("Size"), sizes_chart(day),
        tags.h3("Sync runs"), sync_chart(day),
    )
