"""Brute-force protection: failed password checks per account and per client address.

Each key (``user:<name>@<address>``, ``addr:<address>``) keeps the times of its
recent failures. Once a key has NOPARD_LOGIN_ATTEMPTS failures within the last
NOPARD_LOGIN_WINDOW seconds, further password checks for it are refused with
TooManyAttempts before the password is even looked at; the refusal says when
the oldest counted failure leaves the window. A successful check clears the
account's failures from that address. Nothing is ever locked for longer than the window.

An account is counted per client address, never as a whole: a count of the account's
failures from anywhere would let anyone lock its owner out by failing on purpose
(an anonymous lock-out). Each address is limited over all accounts, so one client
cannot guess at many accounts either.
Kept in memory (a restart forgets every count), and with NOPARD_REDIS_URL in Redis
too, so attempts spread over several instances add up (SharedLoginLimiter).
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections import OrderedDict, deque
from functools import lru_cache

from twisted.internet.interfaces import IReactorTime

from nopard.cluster.link import RedisLink
from nopard.domain.errors import TooManyAttempts
from nopard.settings.config import LiveSettings

MAX_KEYS = 100_000  # memory bound: the least recently failed keys are forgotten first
IPV6_CLIENT_PREFIX = 64  # one IPv6 client usually holds a whole /64


@lru_cache(maxsize=4096)  # asked for every request; parsing the address cost more than the rest of its limits
def address_group(address: str | None) -> str:
    """The client an address counts as, for every per-address limit: an IPv4 address itself, an
    IPv6 one its /64 (a single host may use any address of its /64), "" when unknown (a UNIX socket).

    The address is the connection's peer: nopard never trusts X-Forwarded-For, so behind a reverse
    proxy every client counts as the proxy (the limits then bound the proxy as a whole).
    """
    if not address:
        return ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed)


class LoginLimiter:
    """Counts failed password checks in a sliding window; ``clock`` has ``seconds()``."""

    def __init__(self, settings: LiveSettings, clock: IReactorTime, max_keys: int = MAX_KEYS) -> None:
        self._settings = settings
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def keys(account: str | None, address: str | None) -> list[str]:
        """The keys a check by ``account`` from ``address`` counts against."""
        group = address_group(address)
        keys = []
        if account:
            keys.append(f"user:{account}@{group}")
        if group:
            keys.append(f"addr:{group}")
        return keys

    def _recent(self, key: str, now: float) -> deque[float] | None:
        """The failures of ``key`` still in the window (dropping older ones)."""
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = now - self._settings.current.login_window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, account: str | None, address: str | None) -> int:
        """Seconds until a check by ``account`` from ``address`` is allowed again; 0: now."""
        now = self._clock.seconds()
        current = self._settings.current
        wait = 0.0
        for key in self.keys(account, address):
            times = self._recent(key, now)
            if times is not None and len(times) >= current.login_attempts:
                # The check is allowed once enough failures left the window.
                freeing = times[len(times) - current.login_attempts]
                wait = max(wait, freeing + current.login_window - now)
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def check(self, account: str | None, address: str | None) -> None:
        """Raise TooManyAttempts if ``account`` or ``address`` failed too often lately."""
        wait = self.retry_after(account, address)
        if wait:
            raise TooManyAttempts(
                f"too many failed logins; try again in {wait} seconds", retry_after=wait
            )

    def failed(self, account: str | None, address: str | None) -> None:
        """Count one failed password check."""
        now = self._clock.seconds()
        for key in self.keys(account, address):
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque()
            times.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, account: str | None, address: str | None = None) -> None:
        """The account proved its password from ``address``: forget its failures there
        (the address keeps its own count)."""
        if account:
            self._failures.pop(self.keys(account, address)[0], None)


# Across instances --------------------------------------------------------------

# KEYS: the counted keys; ARGV: now (ms), window (ms), attempts. The wait (ms) until a check is
# allowed, 0: now. Failures older than the window are dropped on the way.
RETRY_AFTER_SCRIPT = """
local wait = 0
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1] - ARGV[2])
  local count = redis.call('ZCARD', key)
  local attempts = tonumber(ARGV[3])
  if count >= attempts then
    local freeing = redis.call('ZRANGE', key, count - attempts, count - attempts, 'WITHSCORES')[2]
    wait = math.max(wait, freeing + ARGV[2] - ARGV[1])
  end
end
return wait
"""
# KEYS: the counted keys; ARGV: now (ms), window (ms), a unique member.
FAILED_SCRIPT = """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[1], ARGV[3])
  redis.call('PEXPIRE', key, ARGV[2])
end
return 1
"""


class SharedLoginLimiter:
    """LoginLimiter's counts kept in Redis, so attempts spread over instances add up.

    Every failure is also counted in this process's LoginLimiter, which
    decides alone while Redis is unreachable.
    """

    def __init__(self, link: RedisLink, local: LoginLimiter, settings: LiveSettings, clock: IReactorTime) -> None:
        self._link = link
        self._local = local
        self._settings = settings
        self._clock = clock

    def _keys(self, account: str | None, address: str | None) -> list[bytes]:
        return [f"nopard:login:{key}".encode() for key in LoginLimiter.keys(account, address)]

    async def check(self, account: str | None, address: str | None) -> None:
        """Raise TooManyAttempts if ``account`` or ``address`` failed too often lately, on any instance."""
        from nopard.cluster.link import RedisDown

        current = self._settings.current
        keys = self._keys(account, address)
        try:
            wait_ms = await self._link.call("eval", RETRY_AFTER_SCRIPT, keys, [
                str(int(self._clock.seconds() * 1000)), str(int(current.login_window * 1000)),
                str(current.login_attempts)]) if keys else 0
        except RedisDown:
            return self._local.check(account, address)
        wait = math.ceil(int(wait_ms) / 1000)
        if wait > 0:
            raise TooManyAttempts(f"too many failed logins; try again in {wait} seconds", retry_after=wait)

    async def failed(self, account: str | None, address: str | None) -> None:
        """Count one failed password check, here and in Redis."""
        from nopard.cluster.link import RedisDown

        self._local.failed(account, address)
        keys = self._keys(account, address)
        now_ms = int(self._clock.seconds() * 1000)
        try:
            await self._link.call("eval", FAILED_SCRIPT, keys, [
                str(now_ms), str(int(self._settings.current.login_window * 1000)), f"{now_ms}-{uuid.uuid4().hex}"])
        except RedisDown:
            pass

    async def succeeded(self, account: str | None, address: str | None = None) -> None:
        """The account proved its password from ``address``: forget its failures there, everywhere."""
        from nopard.cluster.link import RedisDown

        self._local.succeeded(account, address)
        if account:
            try:
                await self._link.call("delete", self._keys(account, address)[:1])
            except RedisDown:
                pass
