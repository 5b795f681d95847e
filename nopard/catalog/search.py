"""``GET /-/v1/search``: an in-memory index of the stored documents, local and mirrored.

The index keeps one small entry per package. It is brought up to date before
a search when a write here marked it changed, or when it is older than
``max_age`` seconds; bringing it up to date lists the store and re-reads only
the documents that changed (a mirrored one when its ETag moved, a local one
when a write here touched it or it is new). Concurrent searches share one
update.

Ranking, per query term (every term must match): exact name > name prefix >
name contains > keyword > description. Qualifiers npm users know work too:
``keywords:x``, ``maintainer:x``, ``author:x``, ``scope:x``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from nopard.cluster.coordination import InProcessCoordination
from nopard.domain.packument import version_key
from nopard.domain.times import iso_time
from nopard.ops.singleflight import SingleFlight

DEFAULT_SIZE = 20
MAX_SIZE = 250
MAX_FROM = 100_000
MAX_TEXT = 1000
MAX_TERMS = 20

EXACT, PREFIX, CONTAINS, KEYWORD, DESCRIPTION = 100.0, 40.0, 20.0, 10.0, 4.0


@dataclass(frozen=True)
class Entry:
    """What search knows of one package."""

    name: str
    version: str
    description: str
    keywords: tuple[str, ...]
    date: str
    links: dict[str, str]
    publisher: dict[str, str]
    maintainers: tuple[dict[str, str], ...]
    stamp: Any = None

    def summary(self, base_url: str) -> dict[str, Any]:
        """The ``package`` object of a search answer."""
        links = {"npm": f"{base_url.rstrip('/')}/{self.name}", **self.links}
        return {
            "name": self.name, "scope": self.name[1:].split("/", 1)[0] if self.name.startswith("@") else "unscoped",
            "version": self.version, "description": self.description, "keywords": list(self.keywords),
            "date": self.date, "links": links, "publisher": dict(self.publisher),
            "maintainers": [dict(m) for m in self.maintainers],
        }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _url(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else ""


def _person(value: Any) -> dict[str, str] | None:
    """npm's ``{name, email}`` or ``"Name <email>"`` as search's ``{username, email}``."""
    if isinstance(value, dict):
        name = _text(value.get("name")) or _text(value.get("username"))
        return {"username": name, "email": _text(value.get("email"))} if name else None
    if isinstance(value, str) and value.strip():
        name, _, rest = value.partition("<")
        return {"username": name.strip(), "email": rest.split(">", 1)[0].strip()}
    return None


def entry_of(document: dict[str, Any], stamp: Any = None) -> Entry | None:
    """The search entry of a stored document; None when it has no usable name or versions."""
    name = document.get("name")
    versions = document.get("versions")
    if not isinstance(name, str) or not name or not isinstance(versions, dict) or not versions:
        return None
    tags = document.get("dist-tags")
    tags = tags if isinstance(tags, dict) else {}
    version = tags.get("latest") if tags.get("latest") in versions else None
    if version is None:
        try:
            version = max(versions, key=version_key)
        except (ValueError, TypeError, IndexError, AttributeError):
            version = next(iter(versions))
    manifest = versions.get(version)
    manifest = manifest if isinstance(manifest, dict) else {}
    keywords = manifest.get("keywords", document.get("keywords"))
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",")]
    keywords = tuple(k for k in keywords if isinstance(k, str) and k) if isinstance(keywords, list) else ()
    times = document.get("time")
    times = times if isinstance(times, dict) else {}
    date = _text(times.get(version)) or _text(times.get("modified"))
    links = {}
    for key, value in (("homepage", manifest.get("homepage", document.get("homepage"))),
                       ("repository", manifest.get("repository", document.get("repository"))),
                       ("bugs", manifest.get("bugs", document.get("bugs")))):
        if _url(value):
            links[key] = _url(value)
    raw_maintainers = document.get("maintainers")
    maintainers = tuple(p for p in map(_person, raw_maintainers if isinstance(raw_maintainers, list) else [])
                        if p is not None)
    publisher = _person(manifest.get("_npmUser")) or (dict(maintainers[0]) if maintainers else None)
    return Entry(
        name=name, version=str(version),
        description=_text(document.get("description")) or _text(manifest.get("description")),
        keywords=keywords, date=date, links=links,
        publisher=publisher or {"username": "", "email": ""}, maintainers=maintainers, stamp=stamp,
    )


# Queries --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A parsed search request."""

    terms: tuple[str, ...]
    qualifiers: tuple[tuple[str, str], ...]
    size: int
    offset: int
    text: str = ""  # as the client sent it (at most MAX_TEXT characters), for the upstream


def _number(values: list[bytes] | None, default: int, low: int, high: int) -> int:
    """The first value as an int within [low, high]; ``default`` when absent or not a number."""
    if not values:
        return default
    try:
        number = int(float(values[0].decode("ascii", "replace").strip()))
    except (ValueError, OverflowError):
        return default
    return max(low, min(high, number))


def parse_query(args: dict[bytes, list[bytes]]) -> Query:
    """text/size/from of the query string, never failing: odd values fall back to defaults."""
    raw = (args.get(b"text") or [b""])[0].decode("utf-8", "replace")[:MAX_TEXT]
    terms: list[str] = []
    qualifiers: list[tuple[str, str]] = []
    for word in raw.lower().replace("\x00", " ").split():
        key, colon, value = word.partition(":")
        if colon and key in ("keywords", "keyword", "maintainer", "author", "scope") and value:
            qualifiers.append(("keywords" if key == "keyword" else key, value))
        else:
            terms.append(word)
    return Query(
        terms=tuple(terms[:MAX_TERMS]), qualifiers=tuple(qualifiers[:MAX_TERMS]),
        size=_number(args.get(b"size"), DEFAULT_SIZE, 0, MAX_SIZE),
        offset=_number(args.get(b"from"), 0, 0, MAX_FROM),
        text=raw.strip(),
    )


def _term_score(entry: Entry, term: str) -> float:
    name = entry.name.lower()
    bare = name.rsplit("/", 1)[-1]
    if term in (name, bare):
        return EXACT
    if name.startswith(term) or bare.startswith(term):
        return PREFIX
    if term in name:
        return CONTAINS
    if any(term == k.lower() for k in entry.keywords):
        return KEYWORD
    if any(term in k.lower() for k in entry.keywords):
        return KEYWORD / 2
    if term in entry.description.lower():
        return DESCRIPTION
    return 0.0


def _qualified(entry: Entry, key: str, value: str) -> bool:
    if key == "keywords":
        wanted = {v for v in value.split(",") if v}
        return bool(wanted & {k.lower() for k in entry.keywords})
    if key == "scope":
        scope = value.lstrip("@")
        return entry.name.lower().startswith(f"@{scope}/")
    if key == "author":
        return entry.publisher.get("username", "").lower() == value
    return any(m.get("username", "").lower() == value for m in entry.maintainers)


def score(entry: Entry, query: Query) -> float:
    """How well ``entry`` answers ``query``; 0: not at all. An empty query matches everything (1)."""
    if not all(_qualified(entry, key, value) for key, value in query.qualifiers):
        return 0.0
    total = 0.0
    for term in query.terms:
        points = _term_score(entry, term)
        if not points:
            return 0.0
        total += points
    return total or 1.0


def matches(entries: Iterable[Entry], query: Query, visible: Callable[[str], bool]) -> list[tuple[float, Entry]]:
    """(score, entry) of every entry ``visible`` allows that answers ``query``, best first."""
    found = [(s, e) for e in entries if (s := score(e, query)) > 0 and visible(e.name)]
    found.sort(key=lambda pair: (-pair[0], pair[1].name))
    return found


def result_objects(page: list[tuple[float, Entry]], base_url: str, best: float) -> list[dict[str, Any]]:
    """The ``objects`` of a search answer for ``page`` (part of what ``matches`` found), scored against ``best``."""
    return [
        {
            "package": entry.summary(base_url),
            "score": {"final": round(points / best, 6),
                      "detail": {"quality": 1.0, "popularity": 1.0, "maintenance": 1.0}},
            "searchScore": points,
            "flags": {"insecure": 0},
        }
        for points, entry in page
    ]


def search(entries: Iterable[Entry], query: Query, visible: Callable[[str], bool], base_url: str,
           now: float) -> dict[str, Any]:
    """The answer npm expects, with only the packages ``visible`` allows (``time``: ISO 8601, as the registry's)."""
    found = matches(entries, query, visible)
    best = found[0][0] if found else 1.0
    objects = result_objects(found[query.offset : query.offset + query.size], base_url, best)
    return {"objects": objects, "total": len(found), "time": iso_time(now)}


# The index ------------------------------------------------------------------


class LocalDocuments(Protocol):
    """The documents of the packages published here (the Registry), as search reads them."""

    async def local_names(self) -> list[str]:
        """Every name published here."""

    async def document(self, name: str) -> dict[str, Any] | None:
        """``name``'s stored document, or None."""


class ChangeStamps(Protocol):
    """Stamps that move when any instance changes a local document (the coordination's)."""

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        """Each name's current stamp; None while they cannot be known (read every document)."""


class FetchedCopy(Protocol):
    """What the mirror knows of its stored copy of an upstream document."""

    @property
    def fetched_at(self) -> float:
        """When it was fetched."""

    @property
    def etag(self) -> str | None:
        """Upstream's ETag of it."""

    @property
    def last_modified(self) -> str | None:
        """Upstream's Last-Modified of it."""


class MirroredCopies(Protocol):
    """The mirror's stored upstream documents, as search reads them."""

    async def mirrored_names(self) -> list[str]:
        """Every name with a stored upstream document."""

    async def mirrored_meta(self, name: str) -> FetchedCopy | None:
        """What is known of ``name``'s stored copy, or None."""

    async def mirrored_document(self, name: str) -> dict[str, Any] | None:
        """``name``'s stored upstream document, or None."""


class SearchIndex:
    """Search entries of every stored document, kept up to date cheaply (see the module's doc)."""

    def __init__(self, registry: LocalDocuments, mirror: MirroredCopies, clock: IReactorTime,
                 max_age: float = 30.0, coordination: ChangeStamps | None = None, firewall: Any = None) -> None:
        self._registry = registry
        # nopard.firewall.verdicts.Firewall: entries show what is served (withheld versions out).
        self._firewall = firewall
        self._expires: dict[str, float] = {}  # when an entry's next withheld version is released
        if firewall is not None:  # a block added or removed here: that entry is read again
            firewall.blocks.listeners.append(lambda what, block: self.changed(block.name))
        # Stamps tell which local documents other instances changed since the last build.
        self._coordination: ChangeStamps = coordination or InProcessCoordination()
        self._mirror = mirror
        self._clock = clock
        self._max_age = max_age
        self._entries: dict[str, Entry] = {}
        self._origins: dict[str, str] = {}
        self._fetched: dict[str, float] = {}
        self._built_at: float | None = None
        self._dirty: set[str] = set()
        self._updates: SingleFlight[None] = SingleFlight()  # concurrent searches share one rebuild

    def changed(self, name: str) -> None:
        """A write here changed ``name``: the next search re-reads it."""
        self._dirty.add(name)

    async def entries(self) -> list[Entry]:
        """Every entry, brought up to date first when due."""
        now = self._clock.seconds()
        if self._built_at is None or self._dirty or now - self._built_at >= self._max_age:
            await self._update_shared()
        return list(self._entries.values())

    async def listing(self) -> list[tuple[Entry, str, float | None]]:
        """(entry, origin: local or upstream, when its upstream copy was fetched) of every package."""
        await self.entries()
        return [(entry, self._origins.get(name, "local"), self._fetched.get(name))
                for name, entry in self._entries.items()]

    async def _update_shared(self) -> None:
        await self._updates.run("index", self._update)

    async def _update(self) -> None:
        started = self._clock.seconds()
        dirty, self._dirty = self._dirty, set()
        entries: dict[str, Entry] = {}
        origins: dict[str, str] = {}
        fetched: dict[str, float] = {}
        try:
            local = await self._registry.local_names()
            stamps = await self._coordination.stamps(local) or {}  # {}: degraded, read them all
            for name in local:
                old = self._entries.get(name)
                stamp = stamps.get(name)
                unchanged = old is not None and stamp is not None and old.stamp == stamp
                if (old is not None and unchanged and self._origins.get(name) == "local" and name not in dirty
                        and not self._released(name, started)):
                    entries[name], origins[name] = old, "local"
                    continue
                entry = await self._read(self._registry.document, name, stamp, None)
                if entry is not None:
                    entries[name], origins[name] = entry, "local"
            for name in await self._mirror.mirrored_names():
                if name in entries:
                    continue
                meta = await self._mirror.mirrored_meta(name)
                if meta is None:
                    continue
                fetched[name] = meta.fetched_at
                copy = (meta.etag, meta.last_modified) if meta.etag else meta.fetched_at
                old = self._entries.get(name)
                if (old is not None and self._origins.get(name) == "upstream" and old.stamp == copy
                        and name not in dirty and not self._released(name, started)):
                    entries[name], origins[name] = old, "upstream"
                    continue
                entry = await self._read(self._mirror.mirrored_document, name, copy, ())
                if entry is not None:
                    entries[name], origins[name] = entry, "upstream"
        except Exception:
            self._dirty |= dirty
            raise
        self._entries, self._origins, self._fetched, self._built_at = entries, origins, fetched, started

    def _released(self, name: str, now: float) -> bool:
        """Whether a version withheld from ``name``'s entry has left quarantine since it was read."""
        expires = self._expires.get(name)
        return expires is not None and now >= expires

    async def _read(self, load: Callable[[str], Any], name: str, stamp: Any, local: tuple[()] | None) -> Entry | None:
        try:
            document = await load(name)
        except Exception:  # a damaged or unreadable document is left out of search, not fatal
            return None
        if not isinstance(document, dict):
            return None
        self._expires.pop(name, None)
        if self._firewall is not None:
            verdict = await self._firewall.judge(name, document, local)
            document = verdict.document
            if verdict.expires is not None:
                self._expires[name] = verdict.expires
        return entry_of(document, stamp)
