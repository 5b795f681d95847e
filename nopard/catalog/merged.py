"""Search answers merged with the upstream's own ``/-/v1/search``: pure functions.

The local and cached results come first, then the upstream's, without the names
already listed and without any name nopard would not serve from the upstream to
this reader (hidden, published here, private, never proxied). ``from`` and
``size`` apply once, over that merged list; ``total`` counts both sides.

What is sent upstream is decided here too: a query naming a package published
here, a scope of such packages, or a scope the upstream does not serve (private,
or with its own upstream) is answered locally only, so no such name leaves nopard.
``total`` is exact for the upstream results fetched; of those it did not send, it
cannot know which are listed here already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nopard.catalog.search import DEFAULT_SIZE, MAX_SIZE, Entry, Query, result_objects
from nopard.domain.names import unscoped
from nopard.domain.times import iso_time


@dataclass(frozen=True)
class UpstreamAnswer:
    """The part of an upstream search answer nopard uses: its result objects and its total."""

    objects: list[dict[str, Any]]
    total: int
    offset: int  # the ``from`` it was asked with


def read_upstream_answer(answer: Any, offset: int) -> UpstreamAnswer | None:
    """The objects and total of a decoded upstream answer; None when it is not one npm would read."""
    if not isinstance(answer, dict) or not isinstance(answer.get("objects"), list):
        return None
    objects = [o for o in answer["objects"]
               if isinstance(o, dict) and isinstance(o.get("package"), dict)
               and isinstance(o["package"].get("name"), str)]
    total = answer.get("total")
    total = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else len(objects)
    return UpstreamAnswer(objects, max(total, len(objects)), offset)


def _scope(word: str) -> str | None:
    """The ``@scope`` a query word names (``@s``, ``@s/x``), or None."""
    return word.split("/", 1)[0] if word.startswith("@") and len(word) > 1 else None


def may_ask_upstream(query: Query, local_names: Iterable[str], forwarded: Callable[[str], bool]) -> bool:
    """Whether ``query`` may be sent upstream: it names no package published here, no scope of theirs,
    and no scope whose names ``forwarded`` says the upstream does not serve."""
    local = {n.lower() for n in local_names}
    words = local | {unscoped(n) for n in local}
    local_scopes = {s for s in map(_scope, local) if s is not None}
    scopes = [s for s in map(_scope, query.terms) if s is not None]
    scopes += ["@" + value.lstrip("@") for key, value in query.qualifiers if key == "scope"]
    if any(term in words for term in query.terms):
        return False
    return not any(scope in local_scopes or not forwarded(f"{scope}/x") for scope in scopes)


def upstream_window(query: Query, local_count: int) -> tuple[int, int]:
    """The ``from`` and ``size`` to ask the upstream for, so the merged page can be cut from its answer.

    From the top (exact) while the page ends within the upstream's MAX_SIZE, and at least
    DEFAULT_SIZE results, so ``total`` leaves out the names nopard drops among them; deeper
    pages ask from where the page starts past the local results (names listed on both
    sides there may shift it by as many places).
    """
    end = query.offset + query.size
    if end <= MAX_SIZE:
        return 0, min(MAX_SIZE, max(end, DEFAULT_SIZE))
    return max(0, query.offset - local_count), min(MAX_SIZE, query.size + local_count)


def merged_answer(found: list[tuple[float, Entry]], upstream: UpstreamAnswer | None, query: Query,
                  keep: Callable[[str], bool], base_url: str, now: float) -> dict[str, Any]:
    """The search answer: ``found`` (local and cached, from ``matches``) first, then the upstream's
    results ``keep`` allows that are not listed already; one page of the whole, and both totals."""
    start, end = query.offset, query.offset + query.size
    best = found[0][0] if found else 1.0
    objects = result_objects(found[start:end], base_url, best)
    total = len(found)
    if upstream is not None:
        listed = {entry.name for _, entry in found}
        extra, dropped = [], 0
        for item in upstream.objects:
            name = item["package"]["name"]
            if name in listed or not keep(name):
                dropped += 1
                continue
            listed.add(name)
            extra.append(item)
        total += max(0, upstream.total - dropped)
        # extra[0] stands at place len(found) + upstream.offset of the merged list.
        first = max(0, start - len(found)) - upstream.offset
        objects += extra[max(0, first) : max(0, first) + query.size - len(objects)]
    return {"objects": objects, "total": total, "time": iso_time(now)}
