"""News of changed packages between processes, so each one's tarball index forgets at once.

The tarball fast path (storage/index.py) answers "is this tarball stored, where, how big"
from memory. A publish or unpublish through another worker or instance changes the
answer, and waiting for the facts to expire (FACTS_TTL) would serve a just-published
tarball as missing, or an unpublished one from memory. So every write nopard makes to a
key the index knows about is announced on a Redis pub/sub channel (``announce``, awaited
before the write's request is answered), and every process subscribed to it forgets that
package's facts as the message comes (``on_change``).

The subscription is its own connection (a subscribed Redis connection runs no other
command), reconnected with the link's short delay. News sent while a process was not
subscribed is lost to it, so each (re)subscription forgets everything first
(``on_reset``), and while not subscribed (``live`` False) the index trusts its facts for
coordination.DEGRADED_FRESHNESS seconds only. Redis (or the supervisor's keyspace,
cluster/resp.py) delivers a message to every subscriber before it answers the PUBLISH,
so the news is in the other processes' sockets before the client hears of the change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from nopard.cluster.link import RedisLink, key
from nopard.settings.values import redis_arguments

CHANNEL = key("changed")


class ChangeFeed:
    """Announces changed packages and tells this process of the others' (Redis pub/sub)."""

    def __init__(self, url: str, link: RedisLink, reactor: Any, log: Logger, on_change: Callable[[str], None],
                 on_reset: Callable[[], None]) -> None:
        self._arguments = redis_arguments(url)
        self._link = link
        self._reactor = reactor
        self._log = log
        self.on_change = on_change
        self.on_reset = on_reset
        self.live = False  # subscribed: news from the other processes arrives
        self.subscriptions = 0  # how many times it subscribed (status, tests)
        self._factory: Any = None

    async def announce(self, name: str) -> None:
        """Tell every process that ``name``'s stored objects changed; never fails the change itself.

        Degraded (Redis lost after it was up), nothing is sent: a write must not wait on an
        unreachable Redis, and processes that lost it too trust their facts briefly anyway. Before
        the link first came up (a worker starting) it is tried: the connection is on its way.
        """
        if not self._link.up and self._link.was_up:
            return
        try:
            await self._link.attempt("publish", CHANNEL, name.encode("utf-8"), critical=False)
        except Exception as error:  # noqa: BLE001  # the others then trust their facts a short while only
            self._log.debug("could not announce a change of {name}: {error}", name=name, error=str(error),
                            event="feed-announce-failed")

    def start(self) -> None:
        """Subscribe (in the background), again whenever the connection is lost."""
        import txredisapi

        feed = self

        class Subscriber(txredisapi.SubscriberProtocol):
            def connectionMade(self) -> Any:
                ready = super().connectionMade()  # AUTH and SELECT first
                ready.addCallback(lambda _: self.subscribe([CHANNEL]))
                ready.addCallbacks(lambda _: feed._subscribed(), lambda failure: feed._failed(self, failure))
                return ready

            def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
                if channel == CHANNEL:
                    feed.on_change(message.decode("utf-8", "replace"))

            def connectionLost(self, why: Any) -> None:
                feed.live = False
                super().connectionLost(why)

        arguments = self._arguments
        host, port = arguments["host"], arguments["port"]
        factory = txredisapi.RedisFactory(
            f"{host}:{port}", arguments["dbid"], 1, isLazy=True, charset=None, password=arguments["password"],
            replyTimeout=5, convertNumbers=False, username=arguments["username"])
        factory.protocol = Subscriber
        factory.maxDelay = 2
        factory.startConnecting(HostnameEndpoint(self._reactor, host, port, timeout=2))
        self._factory = factory

    async def stop(self) -> None:
        """Unsubscribe and stop reconnecting."""
        factory, self._factory = self._factory, None
        self.live = False
        if factory is not None:
            await factory.disconnect()

    def _subscribed(self) -> None:
        # News sent before now never reached this process: forget everything first.
        self.on_reset()
        self.live = True
        self.subscriptions += 1

    def _failed(self, protocol: Any, failure: Any) -> None:
        self._log.debug("the change feed could not subscribe: {error}", error=str(failure.value),
                        event="feed-subscribe-failed")
        protocol.transport.loseConnection()  # connected again after the factory's delay
