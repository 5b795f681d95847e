"""The geometry of the status page's charts: scales, bars, lines and timelines, as numbers.

Pure functions of the figures (nopard.domain.history); nopard.web.charts turns what they
return into SVG elements. Coordinates are SVG user units, y growing downwards.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Plot:
    """The drawing area of a chart inside its viewBox."""

    left: float
    top: float
    width: float
    height: float

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def x(self, slot: float, slots: int) -> float:
        """The left edge of slot number ``slot`` of ``slots`` across the width."""
        return self.left + self.width * slot / slots

    def y(self, value: float, top: float) -> float:
        """Where ``value`` is on a scale from 0 (the bottom) to ``top``."""
        share = 0.0 if top <= 0 else min(max(value / top, 0.0), 1.0)
        return self.bottom - self.height * share


@dataclass(frozen=True)
class Rect:
    """One rectangle: a bar's piece, or a run of a timeline; ``kind`` names its class."""

    x: float
    y: float
    width: float
    height: float
    kind: str
    first: int  # the first slot it covers
    last: int  # the last slot it covers


def nice_top(value: float) -> float:
    """The top of a scale for values up to ``value``: the least 1, 2 or 5 times a power of ten at
    or above it (1 for nothing to show)."""
    # Below the smallest normal float, 10 ** floor(log10(value)) underflows to 0: such a value
    # is nothing to show, like 0.
    if not value >= sys.float_info.min or math.isinf(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover  (10 * power >= value always)


def scale_ticks(top: float) -> list[float]:
    """The values labelled on the y axis: 0, half the top, the top."""
    return [0.0, top / 2, top]


def stacked_bars(stacks: Sequence[Sequence[tuple[str, float]]], top: float, plot: Plot,
                 gap: float = 0.15) -> list[Rect]:
    """A bar per slot, each (kind, value) piece stacked on the ones before it; nothing for 0."""
    rects: list[Rect] = []
    slots = len(stacks)
    if not slots:
        return rects
    slot_width = plot.width / slots
    width = max(slot_width * (1 - gap), 0.5)
    for slot, pieces in enumerate(stacks):
        below = 0.0
        for kind, value in pieces:
            if value <= 0:
                continue
            y_top, y_bottom = plot.y(below + value, top), plot.y(below, top)
            below += value
            if y_bottom - y_top <= 0:
                continue
            rects.append(Rect(round(plot.x(slot, slots), 2), round(y_top, 2), round(width, 2),
                              round(y_bottom - y_top, 2), kind, slot, slot))
    return rects


def line_path(values: Sequence[float | None], top: float, plot: Plot) -> str:
    """An SVG path through the middle of each slot's value; a slot without one breaks the line."""
    slots, parts, drawing = len(values), [], False
    for slot, value in enumerate(values):
        if value is None:
            drawing = False
            continue
        x, y = plot.x(slot + 0.5, slots), plot.y(value, top)
        parts.append(f"{'L' if drawing else 'M'}{x:.2f} {y:.2f}")
        drawing = True
    return " ".join(parts)


def runs(states: Sequence[str | None]) -> list[tuple[int, int, str]]:
    """Consecutive slots in the same state, as (first, last, state); slots without one left out."""
    found: list[tuple[int, int, str]] = []
    for slot, state in enumerate(states):
        if state is None:
            continue
        if found and found[-1][2] == state and found[-1][1] == slot - 1:
            found[-1] = (found[-1][0], slot, state)
        else:
            found.append((slot, slot, state))
    return found


def timeline(states: Sequence[str | None], plot: Plot) -> list[Rect]:
    """A rectangle per run of one state, across the width, the plot's height high."""
    slots = len(states)
    return [Rect(round(plot.x(first, slots), 2), plot.top, round(plot.x(last + 1, slots) - plot.x(first, slots), 2),
                 plot.height, state, first, last)
            for first, last, state in runs(states)]


def hour_marks(start: float, width: int, slots: int, every_hours: int = 6) -> list[tuple[int, str]]:
    """The slots where a whole ``every_hours`` hour (UTC) begins, with its HH:MM label."""
    step = every_hours * 3600
    first = math.ceil(start / step) * step
    marks = []
    moment = first
    while moment < start + width * slots:
        marks.append((int((moment - start) // width), datetime.fromtimestamp(moment, tz=UTC).strftime("%H:%M")))
        moment += step
    return marks
