"""Web login (npm 11's default `npm login` / `npm adduser`).

``POST /-/v1/login`` opens a session; npm prints its login URL (a page nopard
serves) and polls its done URL. Whoever submits the page's form with a right
password (or registers, while registration is open) gives the session a
token, which the next poll hands out once. Sessions live in memory (in Redis
when NOPARD_REDIS_URL is set, for every instance to see), are named by random
URL-safe ids and expire after SESSION_TTL seconds.

Anyone may open sessions, so what they hold is bounded: at most
MAX_PER_ADDRESS sessions waiting for their form per client address (an IPv6
client: per /64) and MAX_SESSIONS in all. Opening one more evicts the oldest
waiting session of that address, then the oldest of all: a new session always
opens, and a flood from one address only pushes out its own. A session whose
form was sent is no longer evictable, and is kept CLAIMED_TTL seconds at most
for npm's next poll (it polls every POLL_SECONDS).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from nopard.auth import Accounts
from nopard.auth.limits import address_group
from nopard.cluster.sessions import MemorySessions, RedisSessions
from nopard.domain.errors import NotFound, TooManyAttempts

SESSION_TTL = 300.0
MAX_SESSIONS = 1000
MAX_PER_ADDRESS = 10
CLAIMED_TTL = 60.0
POLL_SECONDS = 1
POOL = "login"
GONE = "no such login session (it expired, was used, or was pushed out by newer ones); run npm login again"


@dataclass
class Session:
    """One login in progress."""

    created: float
    create: bool  # npm adduser: the page offers an email field
    token: str | None = None


class WebLogins:
    """The sessions of web logins in progress, kept in ``sessions`` (shared between instances
    through Redis when it is configured, so npm may poll any of them); ``clock`` has ``seconds()``.
    """

    def __init__(self, accounts: Accounts, clock: IReactorTime, sessions: MemorySessions | RedisSessions | None = None,
                 ttl: float = SESSION_TTL, max_sessions: int = MAX_SESSIONS,
                 max_per_address: int = MAX_PER_ADDRESS) -> None:
        self._accounts = accounts
        self._clock = clock
        self._ttl = ttl
        self._max_sessions = max_sessions
        self._max_per_address = max_per_address
        self._sessions: MemorySessions | RedisSessions = (
            sessions if sessions is not None else MemorySessions(clock))

    async def start(self, create: bool = False, address: str | None = None) -> str:
        """A new session's id (``address``: the client's, whose older waiting sessions may make room)."""
        session_id = secrets.token_urlsafe(32)
        record = {"created": self._clock.seconds(), "create": bool(create), "token": None}
        if not await self._sessions.admit(POOL, _key(session_id), record, self._ttl, address_group(address),
                                          self._max_per_address, self._max_sessions):
            raise TooManyAttempts("too many web logins in progress; try again later", retry_after=int(self._ttl))
        return session_id

    async def session(self, session_id: str) -> Session:
        """The live session ``session_id``; NotFound when unknown, expired or done."""
        record = await self._sessions.get(_key(session_id)) if _id_ok(session_id) else None
        if record is None:
            raise NotFound(GONE)
        return Session(record["created"], record["create"], record.get("token"))

    async def submit(self, session_id: str, form: dict[str, str], address: str | None) -> str:
        """Log in (or register) with the form's fields; the session gets the token. Returns the user."""
        session = await self.session(session_id)
        if session.token is not None:
            return ""
        name = form.get("username", "").strip()
        email = form.get("email", "").strip() or None
        token = await self._accounts.login(name, form.get("password", ""), email if session.create else None, address,
                                           otp=form.get("otp", "").strip() or None, session=True)
        left = await self._sessions.ttl(_key(session_id))
        record = {"created": session.created, "create": session.create, "token": token}
        if not await self._sessions.settle(POOL, _key(session_id), record, min(max(left, 1.0), CLAIMED_TTL)):
            # Evicted or expired while the password was checked: npm will never get this token.
            await self._accounts.logout(token)
            raise NotFound(GONE)
        return name

    async def poll(self, session_id: str) -> str | None:
        """The session's token, once (the session is then gone); None while waiting."""
        session = await self.session(session_id)
        if session.token is None:
            return None
        taken = await self._sessions.take(_key(session_id), POOL)
        if taken is None or not taken.get("token"):
            raise NotFound(GONE)
        return taken["token"]


def _key(session_id: str) -> str:
    """The store's key of a login session (apart from the browser's ``web:`` sessions)."""
    return "login:" + session_id


def _id_ok(session_id: str) -> bool:
    """Whether ``session_id`` has the shape of the ids ``start`` hands out (else: not looked up)."""
    return 20 <= len(session_id) <= 100 and all(c.isalnum() or c in "-_" for c in session_id)
