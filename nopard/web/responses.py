"""Reading request bodies and writing responses: JSON, prepared documents, errors."""

from __future__ import annotations

import re
import zlib
from typing import Any

import orjson
from twisted.web.iweb import IRequest

from nopard.domain.errors import InvalidInput, PayloadTooLarge
from nopard.domain.prepared import PreparedBody, PreparedDocument
from nopard.settings.config import LiveSettings
from nopard.web.bodies import body_limit, check_parse_cost
from nopard.web.services import RunInThread

ABBREVIATED_TYPE = "application/vnd.npm.install-v1+json"
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


def header(request: IRequest, name: str) -> str | None:
    """A request header as text (latin-1), or None."""
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def client_address(request: IRequest) -> str | None:
    """The address the request came from (the peer's: X-Forwarded-For can be forged)."""
    return getattr(request.getClientAddress(), "host", None)


# Statuses Twisted has no reason phrase for (it would say "Unknown Status").
PHRASES = {451: b"Unavailable For Legal Reasons"}


def json_response(request: IRequest, status: int, value: Any) -> bytes:
    """Set status and JSON headers; return the body for Klein to write."""
    body = orjson.dumps(value)
    request.setResponseCode(status, PHRASES.get(status))
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def read_json_body(content: Any, encoding: str | None, max_size: int) -> Any:
    """Parse a request body as JSON (gunzipping it first when it says so).

    ``max_size`` is the route's body limit, which the inflated body must keep too.
    A body whose parse would cost more than its share (``bodies.check_parse_cost``)
    is refused before it is parsed. Runs in a thread: it may read and parse up to
    NOPARD_MAX_BODY_SIZE bytes.
    """
    content.seek(0)
    raw = content.read()
    if encoding and encoding.strip().lower() == "gzip":
        raw = gunzip(raw, max_size)
    elif encoding and encoding.strip().lower() != "identity":
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}")
    if not raw:
        raise InvalidInput("the request body is empty; JSON was expected")
    check_parse_cost(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the request body is not valid JSON: {error}") from None


# Concatenated gzip members are one body (RFC 1952); each starts a new inflater and copies
# what follows it, so their number is bounded (no client needs more than a few).
MAX_GZIP_MEMBERS = 64


def gunzip(raw: bytes, max_size: int) -> bytes:
    """A gzip body inflated, strictly: every member whole (its trailer checked), nothing after.

    Never inflates more than ``max_size`` + 1 bytes: each member is decompressed with a
    bound on its output, the room left. Raises InvalidInput for a corrupt or truncated
    body, PayloadTooLarge past ``max_size``.
    """
    parts: list[bytes] = []
    size = 0
    rest = raw
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, max_size - size + 1)
        except zlib.error as error:
            raise InvalidInput(f"the request body is not valid gzip: {error}") from None
        size += len(part)
        if size > max_size:
            raise PayloadTooLarge(f"the decompressed body is larger than {max_size} bytes, this route's body limit")
        if not inflater.eof:
            # Room was left, so the inflater stopped because its input ran out.
            raise InvalidInput("the request body is not valid gzip: it is truncated")
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
    raise InvalidInput(f"the gzip request body has more than {MAX_GZIP_MEMBERS} members")


def wants_abbreviated(accept: str | None) -> bool:
    """Whether the Accept header asks for the abbreviated document."""
    return accept is not None and ABBREVIATED_TYPE in accept.lower()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether the client takes gzip: named with q>0, or covered by a '*' with q>0."""
    qualities: dict[str, bool] = {}
    for part in (accept_encoding or "").lower().split(","):
        coding, _, params = part.strip().partition(";")
        refused = params.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
        qualities.setdefault(coding.strip(), not refused)
    return qualities.get("gzip", qualities.get("*", False))


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison of an If-None-Match header against our ETag."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def send_prepared(request: IRequest, prepared: PreparedDocument, cache_control: str) -> bytes:
    """Answer with the form and encoding the request asks for, or 304 when unchanged."""
    abbreviated = wants_abbreviated(header(request, "accept"))
    body: PreparedBody = prepared.abbreviated if abbreviated else prepared.full
    request.setHeader(b"Content-Type", ABBREVIATED_TYPE if abbreviated else "application/json")
    request.setHeader(b"Vary", b"Accept, Accept-Encoding")
    request.setHeader(b"Cache-Control", cache_control)
    request.setHeader(b"ETag", body.etag)
    if etag_matches(header(request, "if-none-match"), body.etag):
        request.setResponseCode(304)
        return b""
    data = body.identity
    if accepts_gzip(header(request, "accept-encoding")):
        data = body.gzipped
        request.setHeader(b"Content-Encoding", b"gzip")
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


def public_base_url(
    configured: str,
    always_https: bool,
    secure: bool,
    host: str | None,
    forwarded_proto: str | None,
    forwarded_host: str | None,
    fallback_host: str,
) -> str:
    """The URL clients reach this registry at, for tarball URLs.

    NOPARD_BASE_URL wins; else the scheme comes from X-Forwarded-Proto (or the
    connection) and the host from X-Forwarded-Host, then Host. NOPARD_ALWAYS_HTTPS
    forces https either way.
    """
    if configured:
        base = configured
    else:
        scheme = "https" if secure else "http"
        proto = (forwarded_proto or "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        chosen = fallback_host
        for candidate in ((forwarded_host or "").split(",")[0].strip(), (host or "").strip()):
            if candidate and _HOST.fullmatch(candidate):
                chosen = candidate
                break
        base = f"{scheme}://{chosen}"
    if always_https and base.startswith("http://"):
        base = "https://" + base[len("http://") :]
    return base


class Requests:
    """Reading a request: the URL it reached the registry at, and its JSON body."""

    def __init__(self, settings: LiveSettings, run_cpu: RunInThread) -> None:
        self._settings = settings
        self._run_cpu = run_cpu

    def base_url(self, request: IRequest) -> str:
        """The URL this request reached the registry at."""
        current = self._settings.current
        return public_base_url(
            configured=current.base_url,
            always_https=current.always_https,
            secure=request.isSecure(),
            host=header(request, "host"),
            forwarded_proto=header(request, "x-forwarded-proto"),
            forwarded_host=header(request, "x-forwarded-host"),
            fallback_host=f"{current.hostname}:{current.port}",
        )

    async def json_body(self, request: IRequest) -> Any:
        """The request body parsed as JSON, in a thread (it can be large), within its route's limit."""
        limit = body_limit(request.method, request.uri, self._settings.current.max_body_size)
        return await self._run_cpu(read_json_body, request.content, header(request, "content-encoding"), limit.size)

    async def optional_json_body(self, request: IRequest) -> Any:
        """The JSON body, or ``{}`` when the request has none."""
        has_body = request.content.seek(0, 2) > 0
        return await self.json_body(request) if has_body else {}
