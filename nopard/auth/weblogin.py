"""Web login (npm 11's default `npm login` / `npm adduser`).

``POST /-/v1/login`` opens a session; npm prints its login URL (a page nopard
serves) and polls its done URL. Whoever submits the page's form with a right
password (or registers, while registration is open) gives the session a
token, which the next poll hands out once. Sessions live in memory (in Redis
when NOPARD_REDIS_URL is set, for every instance to see), are named by random
URL-safe ids and expire after SESSION_TTL seconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from nopard.auth import Accounts
from nopard.cluster.sessions import MemorySessions, RedisSessions
from nopard.domain.errors import NotFound, TooManyAttempts

SESSION_TTL = 300.0
MAX_SESSIONS = 1000
POLL_SECONDS = 1


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
                 ttl: float = SESSION_TTL, max_sessions: int = MAX_SESSIONS) -> None:
        self._accounts = accounts
        self._clock = clock
        self._ttl = ttl
        self._sessions: MemorySessions | RedisSessions = (
            sessions if sessions is not None else MemorySessions(clock, max_sessions))

    async def start(self, create: bool = False) -> str:
        """A new session's id."""
        session_id = secrets.token_urlsafe(32)
        record = {"created": self._clock.seconds(), "create": bool(create), "token": None}
        if not await self._sessions.put(session_id, record, self._ttl):
            raise TooManyAttempts("too many web logins in progress; try again later", retry_after=int(self._ttl))
        return session_id

    async def session(self, session_id: str) -> Session:
        """The live session ``session_id``; NotFound when unknown, expired or done."""
        record = await self._sessions.get(session_id)
        if record is None:
            raise NotFound("no such login session (it expired or was used); run npm login again")
        return Session(record["created"], record["create"], record.get("token"))

    async def submit(self, session_id: str, form: dict[str, str], address: str | None) -> str:
        """Log in (or register) with the form's fields; the session gets the token. Returns the user."""
        session = await self.session(session_id)
        if session.token is not None:
            return ""
        name = form.get("username", "").strip()
        email = form.get("email", "").strip() or None
        token = await self._accounts.login(name, form.get("password", ""), email if session.create else None, address)
        left = await self._sessions.ttl(session_id)
        record = {"created": session.created, "create": session.create, "token": token}
        await self._sessions.put(session_id, record, max(left, 1.0))
        return name

    async def poll(self, session_id: str) -> str | None:
        """The session's token, once (the session is then gone); None while waiting."""
        session = await self.session(session_id)
        if session.token is None:
            return None
        taken = await self._sessions.take(session_id)
        if taken is None or not taken.get("token"):
            raise NotFound("no such login session (it expired or was used); run npm login again")
        return taken["token"]
