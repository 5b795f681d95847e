"""The link to Redis: a pool of connections, and whether Redis is usable (up) or not (degraded).

Commands are not even tried while Redis is down: a probe pings every
``probe_interval`` seconds and, once Redis answers, runs the recovery hooks
(stamps.py starts a new epoch) before commands go to Redis again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nopard.settings.values import redis_arguments

#: Every key nopard keeps in Redis starts with this.
PREFIX = "nopard:"
# Seconds a Redis command may take: the request then goes on without Redis. A busy
# reactor delays replies too, so a slow reply alone does not make nopard degraded: a
# lost connection, a liveness PING unanswered for LIVENESS_TIMEOUT, or a slow stamp
# bump (others must learn of that change) does.
COMMAND_TIMEOUT = 1.0
LIVENESS_TIMEOUT = 3.0
POOL_SIZE = 4


def key(text: str) -> bytes:
    """The Redis key of ``text`` (PREFIX + text, as bytes)."""
    return (PREFIX + text).encode("utf-8")


class RedisDown(Exception):
    """Redis did not answer (or nopard knows it is gone): go on without it."""


async def within(deferred: Deferred, seconds: float, clock: IReactorTime) -> Any:
    """Await ``deferred`` for at most ``seconds`` without cancelling it (TimeoutError after).

    Whatever it ends with later is consumed, so a late failure is not reported as unhandled.
    """
    waiter: Deferred = Deferred()

    def expire() -> None:
        if not waiter.called:
            waiter.errback(TimeoutError())

    timer = clock.callLater(seconds, expire)

    def settle(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not waiter.called:
            waiter.callback(result) if not isinstance(result, Failure) else waiter.errback(result)

    deferred.addBoth(settle)
    return await waiter


class RedisPool:
    """txredisapi's connection pool, built through its public factory API.

    ``lazyConnectionPool`` hides its factory, and nopard needs two things of it:
    a short reconnect delay and word when the last connection is gone. So the
    factory is made here, as txredisapi's own ``makeConnection`` makes it
    (``RedisFactory`` + ``startConnecting``), and ``waitForEmptyPool`` tells of
    the loss. tests/unit/test_coordination.py fails if that API changes.
    """

    def __init__(self, arguments: dict[str, Any], reactor: IReactorTime) -> None:
        # A whole reactor in practice: HostnameEndpoint also connects with it (Twisted types it Any).
        import txredisapi

        host, port = arguments["host"], arguments["port"]
        self.factory = txredisapi.RedisFactory(
            f"{host}:{port}", arguments["dbid"], POOL_SIZE, isLazy=True, charset=None,
            password=arguments["password"], replyTimeout=5, convertNumbers=False,
            username=arguments["username"],
        )
        self.factory.maxDelay = 2  # reconnect within seconds of Redis coming back
        self.factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=2))
        #: Runs commands: ``client.get(key)`` and the like.
        self.client = self.factory.handler

    @property
    def connected(self) -> int:
        """How many connections are open."""
        return int(self.factory.size)

    def when_empty(self) -> Deferred:
        """Fires once no connection is left (at once when none is open)."""
        return self.factory.waitForEmptyPool()

    def close(self) -> Deferred:
        """Stop reconnecting and close every connection."""
        return self.factory.disconnect()


class RedisLink:
    """The pool of Redis connections and whether Redis is usable (``up``) or not (degraded).

    ``reactor``: the clock, and what the connections are made with.
    """

    def __init__(self, url: str, reactor: IReactorTime, log: Logger, probe_interval: float = 1.0,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self._arguments = redis_arguments(url)
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._log = log
        self._timeout = timeout
        self._probe = LoopingCall(self._check)
        self._probe.clock = reactor
        self._probe_interval = probe_interval
        self._pool: RedisPool | None = None
        self._watch: Deferred | None = None  # fires when the last connection is gone
        self.up = False
        self.since: float = reactor.seconds()
        self.failures = 0
        self._stopping = False
        self.was_up = False
        self.recovery_hooks: list[Callable[[bool], Any]] = []
        self.where = f"{self._arguments['host']}:{self._arguments['port']}/{self._arguments['dbid']}"

    @property
    def state(self) -> str:
        """``up`` or ``down``."""
        return "up" if self.up else "down"

    def start(self) -> None:
        """Connect (in the background) and start probing."""
        self._pool = RedisPool(self._arguments, self._reactor)
        self._probe.start(self._probe_interval, now=True)

    async def stop(self) -> None:
        """Stop probing and close the connections (not an outage: nothing is logged)."""
        self._stopping = True
        if self._probe.running:
            self._probe.stop()
        if self._pool is not None:
            await self._pool.close()

    async def call(self, command: str, *args: Any, critical: bool = False) -> Any:
        """Run one command; RedisDown when Redis is down or does not answer in time.

        ``critical``: a command whose loss others must learn of (a stamp's bump):
        if it times out, nopard goes degraded, so its recovery starts a new epoch.
        """
        if not self.up:
            raise RedisDown(f"redis at {self.where} is down")
        return await self.attempt(command, *args, critical=critical)

    async def attempt(self, command: str, *args: Any, critical: bool = True, timeout: float | None = None) -> Any:
        """Run one command even while degraded: for the probe and the recovery hooks.

        Any failure but Redis's own error reply makes nopard degraded (a
        timeout only when ``critical``) and raises RedisDown.
        """
        import txredisapi

        timeout = timeout or self._timeout
        if self._pool is None:
            raise RedisDown(f"redis at {self.where} is not connected")
        try:
            return await within(getattr(self._pool.client, command)(*args), timeout, self._clock)
        except txredisapi.ResponseError:
            raise
        except CancelledError:
            raise  # the client went away: says nothing about Redis
        except TimeoutError:
            if critical:
                self.mark_down(f"{command}: no answer within {timeout:g} s")
            raise RedisDown(f"{command}: no answer within {timeout:g} s") from None
        except Exception as error:
            self.mark_down(f"{command}: {error.__class__.__name__}: {error}")
            raise RedisDown(str(error)) from None

    def mark_down(self, reason: str) -> None:
        """Go degraded (once): the probe will bring nopard back."""
        if not self.up or self._stopping:
            return
        self.up, self.since = False, self._clock.seconds()
        self.failures += 1
        self._log.warn("redis at {where} is unreachable, serving from storage alone (degraded): {reason}",
                       where=self.where, reason=reason, event="redis-down")

    async def _check(self) -> None:
        """Every probe interval: while up, is Redis still answering? While down, is it back?"""
        if self._pool is None or self._stopping:
            return
        if self.up:
            try:
                await self.attempt("ping", critical=True, timeout=LIVENESS_TIMEOUT)
            except Exception:
                pass  # marked down by attempt
            return
        if self._pool.connected == 0:
            return
        try:
            await self.attempt("ping")
            for hook in self.recovery_hooks:
                await hook(self.was_up)
        except Exception as error:  # still down: try again at the next probe
            self._log.debug("redis probe failed: {error}", error=str(error), event="redis-probe")
            return
        self.up, self.since, self.was_up = True, self._clock.seconds(), True
        # Losing every connection makes nopard degraded at once, not at the next command.
        if self._watch is None or self._watch.called:
            self._watch = self._pool.when_empty()
            self._watch.addCallback(lambda _: self.mark_down("connection lost"))
        self._log.info("redis at {where} is up: instances share documents, locks and sessions",
                       where=self.where, event="redis-up")
