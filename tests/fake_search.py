"""The fake upstream's ``GET /-/v1/search``: its packages whose name or description holds every word.

Ranked by name (exact first), paged by ``from``/``size`` (at most 250, as the public registry),
``total`` counting every match, ``time`` in ISO 8601. A search without ``text`` is a 400, as the
registry answers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime


def _number(args: dict[bytes, list[bytes]], key: bytes, default: int, high: int) -> int:
    try:
        return max(0, min(high, int((args.get(key) or [b""])[0])))
    except ValueError:
        return default


def search_answer(names: Iterable[str], packument: Callable[[str], dict | None],
                  args: dict[bytes, list[bytes]]) -> dict | None:
    """The answer to a search with query ``args`` over ``names``; None when ``text`` is missing."""
    text = (args.get(b"text") or [b""])[0].decode("utf-8", "replace").lower()
    words = text.split()
    if not words:
        return None
    found = []
    for name in names:
        doc = packument(name)
        if doc is None:
            continue
        haystack = f"{name} {doc.get('description') or ''}".lower()
        if all(word in haystack for word in words):
            found.append((name != text, name, doc))
    found.sort()
    offset, size = _number(args, b"from", 0, 10_000), _number(args, b"size", 20, 250)
    objects = []
    for _, name, doc in found[offset:offset + size]:
        latest = doc.get("dist-tags", {}).get("latest", "")
        objects.append({"package": {"name": name, "version": latest, "description": doc.get("description", ""),
                                    "date": doc.get("time", {}).get("modified", ""), "links": {},
                                    "publisher": {"username": "fake", "email": "fake@localhost"},
                                    "maintainers": [{"username": "fake", "email": "fake@localhost"}]},
                        "score": {"final": 0.5, "detail": {"quality": 0.5, "popularity": 0.5, "maintenance": 0.5}},
                        "searchScore": 1.0, "flags": {"insecure": 0}})
    now = datetime.now(tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"objects": objects, "total": len(found), "time": now}
