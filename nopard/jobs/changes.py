"""Following the upstream's changes feed (NOPARD_CHANGES_URL) instead of revalidating every mirrored document.

Each refresh run (under the refresh job's lock in the store: one follower at a time across
instances) asks the feed for the changes after the position it reached last, page by page
(``?since=SEQ&limit=PAGE_LIMIT``, at most MAX_PAGES a run), refreshes the mirrored packages
named there (names nopard does not hold are ignored) and then stores the new position, so
a restart or another instance goes on from there. The run's sweep then skips every package
the feed covers (those of the forwarder).

The first run with no position (or after the feed could not be trusted) takes the feed's
current position (``since=now``) and sweeps once: what changed before is unknown. A feed
that fails (unreachable, an error status) makes the run sweep as before, logged once until
it works again; a page that cannot be trusted (larger than allowed, not JSON, sequences
that do not grow) is logged and the position dropped, so the next run starts over. Every
page costs at most PAGE_LIMIT results and max_page_bytes of memory, and each feed request
waits for its slot in the sync jobs' NOPARD_SYNC_RATE budget (``budget``) like a document's.

What the follower last did (``state``: the position followed, the last page's time, the last
error, whether the last refresh run followed the feed or swept) is shown by GET
/-/nopard/sync and the status page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.domain import changes
from nopard.domain.errors import UpstreamUnavailable
from nopard.domain.times import iso_time
from nopard.mirror.upstreams import Upstreams
from nopard.settings.config import LiveSettings
from nopard.storage import Storage, keys

PAGE_LIMIT = 500  # changes asked for per page
MAX_PAGES = 40  # pages per run: a follower far behind catches up over several runs
BYTES_PER_RESULT = 2048  # a page may be this big per result asked for (plus PAGE_SLACK)
PAGE_SLACK = 64 * 1024


class FeedFailed(Exception):
    """The feed could not be read this time (the run sweeps instead)."""


@dataclass
class FollowerState:
    """What the follower last did, for GET /-/nopard/sync and the status page (times: ISO 8601, UTC)."""

    url: str | None = None  # the feed followed (NOPARD_CHANGES_URL when the run began)
    since: Any = None  # the position reached (the feed's last_seq), None: none stored yet
    last_page: str | None = None  # when the last page was read whole
    last_error: str | None = None  # why the feed could not be followed last, None: it was
    last_error_at: str | None = None
    last_run: str | None = None  # "feed": the last refresh run followed it; "sweep": it swept every copy
    failing: bool = False  # the feed is not followed now (since last_error), runs sweep

    def to_json(self) -> dict[str, Any]:
        """The fields, as JSON."""
        return asdict(self)


class ChangesFollower:
    """Follows NOPARD_CHANGES_URL for the refresh job."""

    def __init__(self, settings: LiveSettings, upstreams: Upstreams, storage: Storage, clock: IReactorTime,
                 log: Logger, page_limit: int = PAGE_LIMIT, max_pages: int = MAX_PAGES) -> None:
        self._settings = settings
        self._upstreams = upstreams
        self._storage = storage
        self._clock = clock
        self._log = log
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.failing: str | None = None  # why the feed is not followed now (logged once), None: it is
        self.pages = 0  # pages read so far (tests, the benchmark)
        # Waited on before each feed request: the sync jobs' upstream request budget (SyncJobs sets it).
        self.budget: Callable[[], Awaitable[None]] | None = None
        self.state = FollowerState()

    @property
    def max_page_bytes(self) -> int:
        """The largest page read; a bigger one is not read on."""
        return self.page_limit * BYTES_PER_RESULT + PAGE_SLACK

    def state_of(self, url: str) -> dict[str, Any]:
        """What the follower last did with the feed ``url`` (nothing yet, when that is another feed's)."""
        return (self.state if self.state.url == url else FollowerState(url=url)).to_json()

    async def follow(self, refresh: Callable[[list[str]], Awaitable[None]]) -> bool:
        """Refresh (``refresh``) the mirrored packages the feed names since the stored position.

        True: the feed was followed, the forwarder's packages need no sweep this run; False:
        there is no feed, or it failed or could not be trusted, or this is the first run.
        """
        url = self._settings.current.changes_url
        if not url or self._upstreams.default is None:
            return False
        if url != self.state.url:
            self.state = FollowerState(url=url)
        followed = await self._follow(url, refresh)
        self.state.last_run = "feed" if followed else "sweep"
        self.state.failing = self.failing is not None
        return followed

    async def _follow(self, url: str, refresh: Callable[[list[str]], Awaitable[None]]) -> bool:
        try:
            position = self.state.since = await self._position(url)
            if position is None:
                await self._save(url, await self._current(url))
                self._log.info("following the changes feed {url} from now on; this run sweeps once", url=url,
                               event="changes-start")
                return False
            for _page in range(self.max_pages):
                page = await self._page(url, position)
                if page.problem is not None:
                    await self._storage.delete(keys.CHANGES_FOLLOWED)  # the next run starts over
                    self.state.since = None
                    raise FeedFailed(f"{page.problem}; starting over from the feed's current position")
                if page.dropped:
                    self._log.warn("the changes feed {url} sent {count} results more than the {limit} asked "
                                   "for: left for the next page", url=url, count=page.dropped,
                                   limit=self.page_limit, event="changes-oversized")
                self.state.last_page = iso_time(self._clock.seconds())
                await refresh([name for name in page.names if await self._mirrored(name)])
                await self._save(url, page.last_seq)
                position = page.last_seq
                if page.results < self.page_limit:
                    break
        except (FeedFailed, UpstreamUnavailable) as error:
            reason = getattr(error, "message", None) or str(error)
            if self.failing is None:
                self._log.warn("the changes feed {url} cannot be followed ({reason}): sweeping every mirrored "
                               "package instead until it can", url=url, reason=reason, event="changes-failed")
            self.failing = self.state.last_error = reason
            self.state.last_error_at = iso_time(self._clock.seconds())
            return False
        if self.failing is not None:
            self._log.info("following the changes feed {url} again", url=url, event="changes-recovered")
            self.failing = None
        return True

    async def _mirrored(self, name: str) -> bool:
        return await self._storage.exists(keys.upstream_meta_key(name))

    async def _position(self, url: str) -> Any:
        raw = await self._storage.read(keys.CHANGES_FOLLOWED)
        try:
            stored = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(stored, dict) or stored.get("url") != url:
            return None  # another feed's position (NOPARD_CHANGES_URL changed): start over
        return stored.get("since")

    async def _save(self, url: str, since: Any) -> None:
        await self._storage.write(keys.CHANGES_FOLLOWED, orjson.dumps({"url": url, "since": since}))
        self.state.since = since

    async def _current(self, url: str) -> Any:
        """The feed's position now (``since=now``)."""
        body = await self._get(url, "now", 1)
        try:
            last = orjson.loads(body)["last_seq"] if body is not None else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            last = None
        if changes.seq_number(last) is None:
            raise FeedFailed("its answer to since=now gives no last_seq")
        return last

    async def _page(self, url: str, since: Any) -> changes.Page:
        return changes.read_page(await self._get(url, since, self.page_limit), since, self.page_limit)

    async def _get(self, url: str, since: Any, limit: int) -> bytes | None:
        upstream = self._upstreams.default
        if upstream is None:
            raise FeedFailed("no upstream")
        joined = f"{url}{'&' if '?' in url else '?'}since={quote(str(since), safe='')}&limit={limit}"
        if self.budget is not None:
            await self.budget()
        self.pages += 1
        status, body = await upstream.get_bounded("changes", joined, self._settings.current.upstream_timeout,
                                                  self.max_page_bytes)
        if status == 410:  # nopard's feed no longer holds that position
            await self._storage.delete(keys.CHANGES_FOLLOWED)
            self.state.since = None
        if status != 200:
            raise FeedFailed(f"it answered {status}")
        return body
