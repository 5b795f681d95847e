"""Changes feeds in CouchDB's ``_changes`` format: the rules of the one nopard serves and of the ones it follows.

A page is ``{"results": [{"seq": S, "id": NAME, "changes": [{"rev": R}], "deleted"?: true}, ...],
"last_seq": S}``, asked for with ``?since=S&limit=N``; every result's seq is greater than ``since``
and than the one before it. nopard's own feed numbers its changes 1, 2, 3, ... (0: before the
first); a feed nopard follows may use opaque sequences (CouchDB 2 and later: ``"12-g1AAAA..."``),
compared by the number they begin with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from nopard.domain import names
from nopard.domain.errors import InvalidInput

# What a change of a package did (the ``kind`` of a result, beside CouchDB's fields).
PUBLISH, UNPUBLISH, DIST_TAG, DEPRECATE, CHANGE, REFRESH, BLOCK = (
    "publish", "unpublish", "dist-tag", "deprecate", "change", "refresh", "block")
MAX_LIMIT = 1000  # results one page of nopard's feed may hold
DEFAULT_LIMIT = 100
_NUMBERED = re.compile(r"([0-9]{1,18})(-.*)?", re.DOTALL)
MAX_SEQ_LENGTH = 512  # an opaque sequence longer than this is no sequence


def kind_of(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """What changed from ``before`` to ``after`` (a package's stored documents), the most telling first."""
    old = (before or {}).get("versions") or {}
    new = after.get("versions") or {}
    if set(new) - set(old):
        return PUBLISH
    if set(old) - set(new):
        return UNPUBLISH
    if (before or {}).get("dist-tags") != after.get("dist-tags"):
        return DIST_TAG
    if any(_deprecation(old.get(v)) != _deprecation(manifest) for v, manifest in new.items()):
        return DEPRECATE
    return CHANGE


def _deprecation(manifest: Any) -> Any:
    return manifest.get("deprecated") if isinstance(manifest, dict) else None


def parse_since(text: str | None) -> int | None:
    """``since`` of a request to nopard's feed: a sequence (0 when absent), or None for ``now``."""
    if text is None or text == "":
        return 0
    if text == "now":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"since must be a change's sequence number (0, 1, ...) or 'now', not {text[:40]!r}")
    return int(text)


def parse_limit(text: str | None) -> int:
    """``limit`` of a request to nopard's feed: 1 to MAX_LIMIT (DEFAULT_LIMIT when absent)."""
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {text[:40]!r}")
    return int(text)


def result(seq: int, entry: dict[str, Any]) -> dict[str, Any]:
    """One result of nopard's feed from a stored entry (``id``, ``kind``, ``rev``?, ``deleted``?, ``time``)."""
    answer: dict[str, Any] = {"seq": seq, "id": entry["id"], "changes": [{"rev": entry.get("rev") or ""}],
                              "kind": entry.get("kind", CHANGE), "time": entry.get("time")}
    if entry.get("deleted"):
        answer["deleted"] = True
    return answer


def seq_number(seq: Any) -> int | None:
    """The number a followed feed's sequence stands for (an int, or a string beginning with one); None: no sequence."""
    if isinstance(seq, bool):
        return None
    if isinstance(seq, int):
        return seq if seq >= 0 else None
    if isinstance(seq, str) and len(seq) <= MAX_SEQ_LENGTH:
        match = _NUMBERED.fullmatch(seq)
        return int(match.group(1)) if match else None
    return None


@dataclass
class Page:
    """What one page of a followed feed said: the names changed (in order, once each) and where to go on from.

    ``problem``: why the page cannot be trusted (the follower then sweeps instead); ``dropped``:
    results past the limit asked for, left for the next page.
    """

    names: list[str] = field(default_factory=list)
    last_seq: Any = None
    results: int = 0
    problem: str | None = None
    dropped: int = 0


def read_page(body: bytes | None, since: Any, limit: int) -> Page:
    """Check one page of a followed feed (``body`` None: it was bigger than allowed).

    At most ``limit`` results are taken; more means the feed ignored the limit, and the
    position is then the last result taken. A sequence that does not grow (against
    ``since`` and along the page), an unreadable page or result makes the whole page a problem.
    Results naming no valid package are skipped (a feed also lists design documents).
    """
    if body is None:
        return Page(problem="the page was larger than allowed")
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Page(problem="the page is not JSON")
    if not isinstance(page, dict) or not isinstance(page.get("results"), list):
        return Page(problem="the page has no results list")
    results: list[Any] = page["results"]
    taken, dropped = results[:limit], max(len(results) - limit, 0)
    floor = seq_number(since) if since is not None else -1
    if floor is None:
        floor = -1
    answer = Page(results=len(taken), dropped=dropped)
    seen: dict[str, None] = {}
    last: Any = since
    for item in taken:
        number = seq_number(item.get("seq")) if isinstance(item, dict) else None
        if number is None:
            return Page(problem="a result has no sequence")
        if number <= floor:
            return Page(problem=f"sequence {number} does not follow {floor}")
        floor, last = number, item["seq"]
        name = item.get("id")
        if isinstance(name, str) and _valid(name):
            seen.pop(name, None)
            seen[name] = None
    if dropped == 0:
        end = page.get("last_seq", last)
        number = seq_number(end)
        if number is None or number < floor:
            return Page(problem=f"last_seq {str(end)[:40]!r} does not follow the results")
        last = end
    answer.names, answer.last_seq = list(seen), last
    return answer


def _valid(name: str) -> bool:
    try:
        names.validate_name(name)
    except InvalidInput:
        return False
    return True
