"""What several nopard instances share, and how one instance does without it.

``InProcessCoordination`` is one process on its own. ``RedisCoordination``
shares through Redis (NOPARD_REDIS_URL), and is made of:

- **stamps** (stamps.py): a counter per package name, bumped by every
  change to its documents, and the prepared documents one instance made,
  offered to the others under the stamp they were made at;
- **locks** (locks.py): one instance at a time updates a package document
  or fetches a tarball; the others wait and then find it done;
- the **link** (link.py): the connections, and whether Redis is up.

Web login sessions (sessions.py) are shared through the same link, so npm
may poll any instance.

Correctness never rests on Redis: documents are written with the store's
compare-and-swap and tarballs with create-if-absent, so nothing is lost or
half-written while Redis is down. Then nopard is *degraded*: it keeps a
document read from the store in memory for DEGRADED_FRESHNESS seconds only,
locks only within itself, logs it and shows it in health and metrics; a probe
brings it back. A lost connection, a few slow replies in a row, or one slow
stamp bump make it degraded; one slow reply (a busy reactor) only makes that
request go on without Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.cluster.link import RedisLink
from nopard.cluster.locks import LOCK_TTL, KeyedLocks, RedisLocks
from nopard.cluster.stamps import RedisStamps
from nopard.domain.prepared import CachedDocument

# Seconds a prepared document loaded while degraded is served from memory: changes made
# through other instances show within this long (they cannot be announced without Redis).
DEGRADED_FRESHNESS = 2.0


class InProcessCoordination:
    """The in-process stand-in for one nopard on its own: every stamp is the same, locks are in-process."""

    state = "off"
    since: float | None = None

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    async def stamp(self, name: str) -> str | None:
        """Memory holds no document another process could have changed."""
        return ""

    async def bump(self, name: str) -> str | None:
        """Nothing to tell anyone."""
        return ""

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        """Every name's stamp: all the same here."""
        return dict.fromkeys(names, "")

    async def shared_document(self, name: str, base_url: str, stamp: str) -> CachedDocument | None:
        """No other instance prepares documents."""
        return None

    def share_document(self, name: str, base_url: str, entry: CachedDocument) -> None:
        """No other instance to share with."""

    @asynccontextmanager
    async def lock(self, key: str, wait: float = 60.0) -> AsyncIterator[None]:
        """Hold ``key`` against the rest of this process."""
        async with self._locks.hold(key):
            yield


class RedisCoordination:
    """Stamps, prepared documents and locks shared through Redis."""

    def __init__(self, link: RedisLink, clock: IReactorTime, log: Logger, forget_memory: Callable[[], None],
                 lock_ttl: float = LOCK_TTL) -> None:
        self.link = link
        #: The stamps, kept in memory while the change feed brings their news (service.open_coordination).
        self.stamp_keeper = RedisStamps(link, forget_memory)
        self._stamps = self.stamp_keeper
        self._locks = RedisLocks(link, clock, log, lock_ttl)

    @property
    def state(self) -> str:
        """``up`` or ``down`` (degraded)."""
        return self.link.state

    @property
    def since(self) -> float:
        """When the state last changed."""
        return self.link.since

    async def stamp(self, name: str) -> str | None:
        """The current stamp of ``name``'s documents; None while degraded (trust no cache)."""
        return await self._stamps.stamp(name)

    async def stamps(self, names: list[str]) -> dict[str, str] | None:
        """The current stamps of many names; None while degraded."""
        return await self._stamps.stamps(names)

    async def bump(self, name: str) -> str | None:
        """Tell every instance that ``name``'s documents changed; the new stamp (None: degraded)."""
        return await self._stamps.bump(name)

    async def shared_document(self, name: str, base_url: str, stamp: str) -> CachedDocument | None:
        """Another instance's prepared copy, if it carries ``stamp``."""
        return await self._stamps.shared_document(name, base_url, stamp)

    def share_document(self, name: str, base_url: str, entry: CachedDocument) -> None:
        """Offer a prepared document to the other instances (in the background)."""
        self._stamps.share_document(name, base_url, entry)

    def lock(self, key: str, wait: float = 60.0) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` against every instance, waiting for it at most ``wait`` seconds.

        Degraded, or after ``wait``, the body runs under this process's lock
        alone: the store's conditional writes still keep the data whole.
        """
        return self._locks.hold(key, wait)
