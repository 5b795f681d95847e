"""The last day in fixed buckets: what the status page's charts are drawn from.

Time is cut into buckets of ``width`` seconds (5 minutes), numbered from the epoch, and a
day is ``count`` of them (288). A bucket holds a few named figures:

- ``served:<HOW>``: documents and tarballs served, by how (SERVED_AS), summed;
- ``sync:<what>``: sync runs and what they did (SYNC_FIGURES), summed;
- ``store:bytes``, ``mirror:bytes``, ``mirror:limit``: sizes seen in the bucket, the largest;
- ``up:<url>``, ``down:<url>``: seconds an upstream was seen up or down in it, the most any
  instance saw (at most MAX_UPSTREAMS upstreams a bucket).

Counters add up across instances (each counts its own requests); sizes and upstream time
take the largest (every instance sees the same store and the same upstream). ``combine``
is that rule; everything here is pure and takes the time as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

BUCKET_SECONDS = 300
BUCKETS = 288  # a day of 5-minute buckets
SERVED_AS = ("HIT", "REVALIDATED", "STALE", "MISS", "LOCAL")
SYNC_FIGURES = ("runs", "checked", "changed", "tarballs", "failed")
SIZES = ("store:bytes", "mirror:bytes", "mirror:limit")
MAX_UPSTREAMS = 8
MAX_URL = 200  # characters of an upstream's URL kept in a field name
SUMMED = ("served:", "sync:")

Bucket = dict[str, float]


def bucket_index(at: float, width: int = BUCKET_SECONDS) -> int:
    """The number of the bucket holding the moment ``at`` (seconds since the epoch)."""
    return int(at // width)


def window(now: float, width: int = BUCKET_SECONDS, count: int = BUCKETS) -> range:
    """The numbers of the ``count`` buckets ending with the one holding ``now``, oldest first."""
    last = bucket_index(now, width)
    return range(last - count + 1, last + 1)


def spread(start: float, end: float, width: int = BUCKET_SECONDS) -> list[tuple[int, float]]:
    """The span [start, end) cut at bucket boundaries: (bucket, seconds in it), oldest first."""
    pieces: list[tuple[int, float]] = []
    at = start
    while at < end:
        index = bucket_index(at, width)
        boundary = (index + 1) * width
        piece_end = min(end, boundary)
        pieces.append((index, piece_end - at))
        at = piece_end
    return pieces


def breaker_spans(open_at_start: bool, transitions: Iterable[tuple[float, str]], start: float,
                  end: float) -> list[tuple[float, float, bool]]:
    """The span [start, end) cut by a breaker's transitions: (from, to, down), in order.

    ``open_at_start``: whether it was open at ``start``; ``transitions``: (when, "open" or
    "closed"), those outside the span are ignored.
    """
    spans: list[tuple[float, float, bool]] = []
    at, down = start, open_at_start
    for when, state in sorted(transitions):
        if when <= start or when >= end:
            continue
        if (state == "open") != down:
            spans.append((at, when, down))
            at, down = when, state == "open"
    if at < end:
        spans.append((at, end, down))
    return spans


def upstream_field(kind: str, url: str) -> str:
    """``up:<url>`` or ``down:<url>``, the URL cut to MAX_URL characters."""
    return f"{kind}:{url[:MAX_URL]}"


def combine(field: str, old: float, new: float) -> float:
    """Two values of one field, of two records or two instances, as one."""
    if field.startswith(SUMMED):
        return old + new
    return max(old, new)


def admissible(bucket: Mapping[str, float], field: str) -> bool:
    """Whether ``field`` may be added to ``bucket`` (a known figure, or a new upstream within bound)."""
    if field in bucket:
        return True
    kind, _, rest = field.partition(":")
    if kind == "served":
        return rest in SERVED_AS
    if kind == "sync":
        return rest in SYNC_FIGURES
    if field in SIZES:
        return True
    if kind in ("up", "down") and rest:
        urls = {f.partition(":")[2] for f in bucket if f.startswith(("up:", "down:"))}
        return rest in urls or len(urls) < MAX_UPSTREAMS
    return False


def merge(buckets: Iterable[Mapping[str, float]]) -> Bucket:
    """Several records of one bucket (instances', or batches') as one."""
    merged: Bucket = {}
    for bucket in buckets:
        for field, value in bucket.items():
            if field in merged:
                merged[field] = combine(field, merged[field], value)
            elif admissible(merged, field):
                merged[field] = value
    return merged


class BucketRing:
    """The last ``count`` buckets in fixed memory: a slot per bucket, reused a day later."""

    def __init__(self, width: int = BUCKET_SECONDS, count: int = BUCKETS) -> None:
        self.width = width
        self.count = count
        self._slots: list[tuple[int, Bucket] | None] = [None] * count

    def add(self, at: float, field: str, value: float) -> None:
        """Record ``value`` of ``field`` at the moment ``at`` (combined with what the bucket holds)."""
        self.add_to(bucket_index(at, self.width), {field: value})

    def add_to(self, index: int, figures: Mapping[str, float]) -> None:
        """Combine ``figures`` into bucket number ``index`` (a bucket a day old or more starts afresh)."""
        slot = index % self.count
        held = self._slots[slot]
        if held is None or held[0] != index:
            if held is not None and held[0] > index:
                return  # older than what the slot holds now: outside the day
            held = (index, {})
            self._slots[slot] = held
        bucket = held[1]
        for field, value in figures.items():
            if field in bucket:
                bucket[field] = combine(field, bucket[field], value)
            elif admissible(bucket, field):
                bucket[field] = value

    def bucket(self, index: int) -> Bucket:
        """What bucket number ``index`` holds (empty: nothing, or no longer kept)."""
        held = self._slots[index % self.count]
        return dict(held[1]) if held is not None and held[0] == index else {}

    def day(self, now: float) -> list[tuple[int, Bucket]]:
        """The buckets of the day ending at ``now``, oldest first, empty ones included."""
        return [(index, self.bucket(index)) for index in window(now, self.width, self.count)]

    def fields(self) -> Iterator[str]:
        """Every field held in any slot (for tests of the bound)."""
        for held in self._slots:
            if held is not None:
                yield from held[1]


@dataclass(frozen=True)
class Day:
    """The buckets of a day, as the charts read them."""

    start: float  # when the first bucket begins
    width: int
    buckets: list[Bucket]

    @staticmethod
    def of(buckets: list[tuple[int, Bucket]], width: int = BUCKET_SECONDS) -> Day:
        """From (bucket number, figures), oldest first, as BucketRing.day gives them."""
        first = buckets[0][0] if buckets else 0
        return Day(first * width, width, [figures for _, figures in buckets])

    def upstreams(self) -> list[str]:
        """The upstreams seen in the day, in order of first appearance."""
        seen: dict[str, None] = {}
        for bucket in self.buckets:
            for field in bucket:
                kind, _, url = field.partition(":")
                if kind in ("up", "down"):
                    seen.setdefault(url, None)
        return list(seen)

    def total(self, field: str) -> float:
        """``field`` summed over the day."""
        return sum(bucket.get(field, 0.0) for bucket in self.buckets)
