"""Signing keys and attestations: the upstreams' kept here, served with nopard's own, also offline.

``GET /-/npm/v1/keys`` lists nopard's keys (nopard.local.signing) and every
upstream's, each upstream's list fetched again once NOPARD_META_TTL passed and
kept in the store, so npm can check the signatures of mirrored versions with
the upstream down. A version's attestations are immutable: fetched once,
stored beside the mirrored document, served from there ever after. A version
whose mirrored manifest names none, or that was published here, is a 404
without asking; an upstream 404 is remembered for NOPARD_NOT_FOUND_TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import orjson
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.cluster.link import within
from nopard.domain import names
from nopard.domain.errors import NotFound, UpstreamUnavailable
from nopard.local.packages import Registry
from nopard.local.signing import SigningKeys
from nopard.mirror.documents import NOT_FOUND_MEMORY, MirroredDocuments
from nopard.mirror.upstreams import Upstreams
from nopard.ops.singleflight import SingleFlight
from nopard.settings.acl import unreachable
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys
from nopard.upstream.client import Upstream

KEYS_PATH = "/-/npm/v1/keys"
ATTESTATIONS_PATH = "/-/npm/v1/attestations/"
# Bounds on what an upstream's answer may hold (keys lists are a handful of entries).
MAX_UPSTREAM_KEYS = 64


def _key_entries(body: bytes) -> list[dict[str, Any]] | None:
    """The ``keys`` of an upstream's answer, each an object with a string ``keyid`` and ``key``; None if malformed."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    entries = answer.get("keys") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        return None
    kept = [e for e in entries if isinstance(e, dict) and isinstance(e.get("keyid"), str)
            and isinstance(e.get("key"), str)]
    return kept[:MAX_UPSTREAM_KEYS]


class Provenance:
    """The keys list and the attestations clients verify mirrored and local versions with."""

    def __init__(
        self, settings: LiveSettings, storage: Storage, registry: Registry, upstreams: Upstreams,
        documents: MirroredDocuments, signing: SigningKeys, clock: IReactorTime, log: Logger,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._registry = registry
        self._upstreams = upstreams
        self._documents = documents
        self._signing = signing
        self._clock = clock
        self._log = log
        self._not_found: OrderedDict[str, float] = OrderedDict()
        self._flights: SingleFlight[Any] = SingleFlight()

    async def keys(self) -> dict[str, Any]:
        """``{keys: [...]}``: nopard's own keys, then each upstream's (deduplicated by keyid)."""
        listed = await self._signing.public_keys()
        upstream_lists = await gatherResults(
            [Deferred.fromCoroutine(self._upstream_keys(u)) for u in self._upstreams.all()]
        )
        seen = {entry["keyid"] for entry in listed}
        for entries in upstream_lists:
            for entry in entries:
                if entry["keyid"] not in seen:
                    seen.add(entry["keyid"])
                    listed.append(entry)
        return {"keys": listed}

    async def _upstream_keys(self, upstream: Upstream) -> list[dict[str, Any]]:
        """The upstream's keys: the stored list while fresh, else fetched (within the stale deadline), else stored."""
        key = keys.upstream_keys_key(upstream.base_url)
        raw = await self._storage.read(key)
        stored = orjson.loads(raw) if raw is not None else None
        if stored is not None and self._clock.seconds() - stored["fetched_at"] < self._settings.current.meta_ttl:
            return list(stored["keys"])
        try:
            entries = await self._flights.run(("keys", key), lambda: self._fetch_keys(upstream, key))
        except (UpstreamUnavailable, TimeoutError) as error:
            self._log.info("upstream keys of {url} not fetched: {reason}", url=upstream.shown_url,
                           reason=getattr(error, "message", "no answer in time"), event="keys-stale")
            entries = None
        if entries is None:
            return list(stored["keys"]) if stored is not None else []
        return entries

    async def _fetch_keys(self, upstream: Upstream, key: str) -> list[dict[str, Any]] | None:
        status, body, _type = await self._ask(upstream, KEYS_PATH)
        if status == 404:  # a registry that signs nothing: nothing to list
            entries: list[dict[str, Any]] | None = []
        else:
            entries = _key_entries(body) if status == 200 else None
        if entries is None:
            return None
        record = {"fetched_at": self._clock.seconds(), "keys": entries}
        await self._storage.write(key, orjson.dumps(record))
        return entries

    async def _ask(self, upstream: Upstream, path: str) -> tuple[int, bytes, str]:
        """GET ``path`` of the upstream, waiting at most NOPARD_STALE_DEADLINE (it goes on in the background)."""
        asked = Deferred.fromCoroutine(upstream.forward("GET", path, b"", {"Accept": "application/json"}))
        answer: tuple[int, bytes, str] = await within(asked, self._settings.current.stale_deadline, self._clock)
        return answer

    async def attestations(self, name: str, version: str) -> bytes:
        """The attestations document of ``name@version`` (as the upstream sent it); NotFound when there is none."""
        names.validate_name(name)
        names.validate_version(version)
        key = keys.upstream_attestations_key(name, version)
        stored = await self._storage.read(key)
        if stored is not None:
            return stored
        missing = f"no attestations for {name}@{version}"
        upstream = self._upstreams.for_name(name)
        local = await self._registry.document(name)
        if upstream is None or (local is not None and version in local.get("versions", {})):
            raise NotFound(missing)
        mirrored = await self._documents.mirrored_document(name)
        manifest = (mirrored or {}).get("versions", {}).get(version)
        if isinstance(manifest, dict) and not (manifest.get("dist") or {}).get("attestations"):
            raise NotFound(missing)  # the upstream's own manifest names none: nothing to ask for
        flight = f"{name}@{version}"
        expires = self._not_found.get(flight)
        if expires is not None:
            if self._clock.seconds() < expires:
                raise NotFound(missing)
            del self._not_found[flight]
        try:
            found: bytes | None = await self._flights.run(flight, lambda: self._fetch_attestations(
                upstream, name, version, key))
        except (UpstreamUnavailable, TimeoutError):
            raise NotFound(unreachable(f"the attestations of {name}@{version}")) from None
        if found is None:
            raise NotFound(missing)
        return found

    async def _fetch_attestations(self, upstream: Upstream, name: str, version: str, key: str) -> bytes | None:
        path = ATTESTATIONS_PATH + quote(f"{name}@{version}", safe="@")
        status, body, _type = await self._ask(upstream, path)
        if status == 200 and _is_attestations(body):
            await self._storage.write(key, body)
            return body
        if status in (404, 410):
            self._remember_not_found(f"{name}@{version}")
            return None
        raise UpstreamUnavailable(f"the upstream answered {status} for the attestations of {name}@{version}")

    def _remember_not_found(self, flight: str) -> None:
        self._not_found[flight] = self._clock.seconds() + self._settings.current.not_found_ttl
        self._not_found.move_to_end(flight)
        while len(self._not_found) > NOT_FOUND_MEMORY:
            self._not_found.popitem(last=False)


def _is_attestations(body: bytes) -> bool:
    """Whether ``body`` is an attestations answer (``{attestations: [...]}``), the only thing stored."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(answer, dict) and isinstance(answer.get("attestations"), list)
