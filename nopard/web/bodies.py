"""What a request body may cost: its size limit by route, what parsing it as JSON may take,
and how many body bytes may be in flight at once, per client address and in all.

The first two are pure functions of what the request says, decided before the body is read
(``body_limit``, from the method and path as the headers arrive) or parsed
(``check_parse_cost``, from a count of the body's structural characters). The third is a
count (``BodyBudget``) the site keeps as bytes arrive and requests end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from nopard.domain import names
from nopard.domain.errors import NopardError, PayloadTooLarge

# Logins, tokens, user profiles, web logins, settings, dist-tags, sync triggers and the
# browser's forms: what npm sends for these is under 1 KB (the largest, `npm token create`
# with package, scope and CIDR lists, a few KB). 16 KB leaves room for those lists, and
# is so little that no body of this size is expensive to parse, whatever its shape.
SMALL_BODY_LIMIT = 16 * 1024
# npm audit bodies (forwarded to the upstream as bytes, parsed only when the stored advisories answer; npm gzips them,
# and its bulk request lists each installed name once) and nopard-admin prefetch's list
# of every name and version some lockfiles pin (a few hundred KB for big monorepos).
LIST_BODY_LIMIT = 16 * 1024 * 1024
AUDIT_PREFIX = b"/-/npm/v1/security/"
PREFETCH_PATH = b"/-/nopard/prefetch"


@dataclass(frozen=True)
class BodyLimit:
    """How many bytes a route's body may hold, and the words a refusal names the limit with.

    ``forms``: whether a form body (urlencoded or multipart) is parsed into the request's
    arguments, as Twisted does for POSTs. Only small bodies are: the browser's forms are
    all small, and Twisted's form parsers cost many times a body's size.
    ``lists``: an audit or prefetch body, which also counts in LIST_ADDRESS_BUDGET_BODIES.
    """

    size: int
    name: str
    forms: bool = True
    lists: bool = False


def body_limit(method: bytes, path: bytes, max_body_size: int) -> BodyLimit:
    """The body limit of a request, from its method and raw path (the query is ignored).

    Only a PUT of a package document (publish; and the whole document npm sends back to
    deprecate, unpublish one version, star or change owners) gets NOPARD_MAX_BODY_SIZE;
    audits and prefetch lists get LIST_BODY_LIMIT; everything else, bodies or not, the
    small limit. No limit is above NOPARD_MAX_BODY_SIZE.
    """
    if method not in (b"PUT", b"POST"):  # most requests: the path does not matter
        return _small_limit(method, max_body_size)
    path = path.split(b"?", 1)[0]
    decoded = unquote_to_bytes(path)
    if method == b"PUT" and not decoded.startswith(b"/-/") and _is_package_document(path):
        return BodyLimit(max_body_size, "NOPARD_MAX_BODY_SIZE, for package documents", forms=False)
    if method == b"POST" and (decoded.startswith(AUDIT_PREFIX) or decoded == PREFETCH_PATH):
        return _within(LIST_BODY_LIMIT, max_body_size, "the limit of audit and prefetch bodies", forms=False,
                       lists=True)
    return _small_limit(method, max_body_size)


@lru_cache(maxsize=64)  # every GET asks; bounded, as a client may send any token as its method
def _small_limit(method: bytes, max_body_size: int) -> BodyLimit:
    return _within(SMALL_BODY_LIMIT, max_body_size, f"the limit of {method.decode('latin-1')} bodies on this path")


def _within(size: int, max_body_size: int, name: str, forms: bool = True, lists: bool = False) -> BodyLimit:
    if max_body_size <= size:
        return BodyLimit(max_body_size, "NOPARD_MAX_BODY_SIZE", forms, lists)
    return BodyLimit(size, name, forms, lists)


def _is_package_document(path: bytes) -> bool:
    try:
        return names.parse_package_path(path).kind in ("document", "revision")
    except NopardError:
        return False


# What orjson's parse of a body costs at its peak, per structural character, in bytes (its
# own document of 16 bytes a value, then the Python objects): measured with VmHWM on
# bodies of millions of `0,`, `0.5,`, `{},`, `[],`, `[[[[]]]],`, `{"a":0},`, `"ab",` and
# `{"<n>":0,...}`, each of which this estimate meets or exceeds.
_COST_OF = {b"{": 160, b"[": 96, b",": 64, b":": 48, b'"': 16}
# Plus this much per byte of the body: the copy orjson keeps, and the strings' characters.
_COST_PER_BYTE = 2
# Package documents estimate at 4 to 10.4 times their size (every recorded packument,
# a 315-version one, npm's own package.json files) and publish bodies at 2 (mostly a base64
# tarball); `[0,0,...]` at 34, `[{},{},...]` at 77. Past 16 times, a body is refused.
PARSE_COST_MULTIPLE = 16
# Any body this cheap is parsed whatever its shape (`{}` alone estimates at 80 times its size).
PARSE_COST_ALLOWANCE = 1024 * 1024


# Past this many quotes, strings are not told apart from the rest (splitting the body at its
# quotes makes one piece a quote): the count of every character stands, and a body that has
# this many strings is hardly a package document dense with punctuation in its text.
SPLIT_QUOTES_MAX = 1 << 18


def parse_cost(raw: bytes) -> int:
    """An upper bound, in bytes, of the memory parsing ``raw`` as JSON takes at its peak.

    Counted at C speed (one ``bytes.count`` per character), without building anything:
    characters inside strings are counted too, which only overestimates. When that is over
    the limit, the count is taken again outside the strings (a readme of `![` is no array),
    if there are at most SPLIT_QUOTES_MAX quotes.
    """
    cost = _cost(len(raw), raw)
    if cost > parse_cost_limit(len(raw)) and raw.count(b'"') <= SPLIT_QUOTES_MAX:
        cost = parse_cost_outside_strings(raw)
    return cost


def parse_cost_outside_strings(raw: bytes) -> int:
    """``parse_cost`` with the structural characters inside strings left out (quotes still count)."""
    # Escaped backslashes, then escaped quotes, go first, so the quotes left delimit strings.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    pieces = unescaped.split(b'"')
    del unescaped
    quotes = len(pieces) - 1
    outside = b"".join(pieces[0::2])
    del pieces
    return _cost(len(raw), outside) + _COST_OF[b'"'] * quotes


def _cost(size: int, counted: bytes) -> int:
    """What ``size`` bytes cost, with the structural characters of ``counted``."""
    return _COST_PER_BYTE * size + sum(cost * counted.count(char) for char, cost in _COST_OF.items())


def parse_cost_limit(size: int) -> int:
    """The most parsing a body of ``size`` bytes may cost."""
    return PARSE_COST_MULTIPLE * size + PARSE_COST_ALLOWANCE


def check_parse_cost(raw: bytes) -> None:
    """Refuse (PayloadTooLarge, 413) a body whose parse would cost more than its share."""
    cost, limit = parse_cost(raw), parse_cost_limit(len(raw))
    if cost > limit:
        raise PayloadTooLarge(
            f"the request body holds too many JSON values for its {len(raw)} bytes: parsing it would take "
            f"about {cost // 1024 ** 2} MB, more than {PARSE_COST_MULTIPLE} times its size plus "
            f"{PARSE_COST_ALLOWANCE // 1024 ** 2} MB"
        )


# Body bytes in flight: received, and held (in a temporary file, then read whole by the
# route: an audit keeps its body in memory while the upstream answers, a publish while it
# is parsed) until the request is answered or its connection lost. Without a bound, one
# anonymous client opening connections that each send a 16 MB audit held 16 MB of memory
# (and as much temporary disk) per connection while the upstream was slow.
# Per client address (``auth.limits.address_group``): three bodies of the largest size.
# npm publishes one package at a time and a CI machine a few in parallel, of a few MB each
# at most; npm's audits are a few hundred KB gzipped, so hundreds of them at once from one
# address (many CI jobs behind one NAT, or every client behind a reverse proxy) still fit.
ADDRESS_BUDGET_BODIES = 3
# Within it, audits and prefetch lists: four of the largest (64 MB). An audit needs no login
# and keeps its whole body in memory until the upstream answers (up to NOPARD_UPSTREAM_TIMEOUT),
# so this, not the address's whole budget, is the memory one anonymous address can hold;
# at a few hundred KB an audit, it is still a hundred audits at once from one address.
LIST_ADDRESS_BUDGET_BODIES = 4
# In all: ten bodies of the largest size (1 GB with the default NOPARD_MAX_BODY_SIZE).
# Both scale with NOPARD_MAX_BODY_SIZE, so an operator allowing larger bodies allows them
# to be sent in parallel too.
TOTAL_BUDGET_BODIES = 10
# Bodies in flight end within seconds (the upstream's answer to an audit, a publish's
# parse), so a refused client may try again soon.
BUDGET_RETRY_AFTER = 5


@dataclass(frozen=True)
class BudgetRefusal:
    """Why a body's next bytes do not fit: the status to answer, its words, when to come back."""

    status: int
    message: str
    retry_after: int = BUDGET_RETRY_AFTER


@dataclass
class BodyBudget:
    """The body bytes in flight per client address group and in all, within
    ADDRESS_BUDGET_BODIES and TOTAL_BUDGET_BODIES bodies of NOPARD_MAX_BODY_SIZE."""

    total: int = 0
    _held: dict[str, int] = field(default_factory=dict)
    _lists: dict[str, int] = field(default_factory=dict)  # of which audit and prefetch bodies

    def held(self, group: str) -> int:
        """The bytes in flight from ``group``."""
        return self._held.get(group, 0)

    def take(self, group: str, size: int, max_body_size: int, lists: bool = False) -> BudgetRefusal | None:
        """Count ``size`` more bytes from ``group`` (of an audit or prefetch body: ``lists``),
        or say why they do not fit (nothing counted)."""
        per_address, in_all = ADDRESS_BUDGET_BODIES * max_body_size, TOTAL_BUDGET_BODIES * max_body_size
        of_lists = LIST_ADDRESS_BUDGET_BODIES * min(LIST_BODY_LIMIT, max_body_size)
        if lists and self._lists.get(group, 0) + size > of_lists:
            return BudgetRefusal(429, (
                f"too many audit or prefetch bodies in flight from your address: at most {of_lists} bytes at once "
                f"({LIST_ADDRESS_BUDGET_BODIES} of the largest); retry once your other audits are answered"
            ))
        if self.held(group) + size > per_address:
            return BudgetRefusal(429, (
                f"too many request bodies in flight from your address: at most {per_address} bytes at once "
                f"({ADDRESS_BUDGET_BODIES} times NOPARD_MAX_BODY_SIZE); retry once your other requests are answered"
            ))
        if self.total + size > in_all:
            return BudgetRefusal(503, (
                f"the registry is receiving too many request bodies at once: at most {in_all} bytes "
                f"({TOTAL_BUDGET_BODIES} times NOPARD_MAX_BODY_SIZE); retry in a few seconds"
            ))
        _add(self._held, group, size)
        if lists:
            _add(self._lists, group, size)
        self.total += size
        return None

    def release(self, group: str, size: int, lists: bool = False) -> None:
        """``group``'s request ended: its ``size`` bytes (of an audit or prefetch body: ``lists``) no longer count."""
        if size <= 0:
            return
        _add(self._held, group, -size)
        if lists:
            _add(self._lists, group, -size)
        self.total -= size


def _add(counts: dict[str, int], key: str, size: int) -> None:
    """Add ``size`` to ``counts[key]``, dropping the key at zero (no entry per address ever seen)."""
    left = counts.get(key, 0) + size
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
