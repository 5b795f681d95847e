"""Telling running instances what nopard-admin changed in their store (``import``, ``gc``, the users).

The instances sharing Redis (NOPARD_REDIS_URL) learn of each other's writes twice: the
package's stamp is bumped, so no instance serves a document prepared before (cluster/stamps.py),
and its name goes out on the change feed, so every process's tarball index forgets what it
knew of the package (cluster/feed.py). A command writing the store behind their back does
the same for every package it changed, and for the users when it changed them (so no instance
accepts a password it set or a user it removed a moment longer), once it is done, with the same script and channel,
over one short blocking connection (a command line has no reactor). Without Redis there is
no one to tell but the one instance on a directory, whose facts expire within
storage/index.py's FACTS_TTL; an announcement that fails is reported, never fatal: the
writes are made.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from nopard.cluster.feed import CHANNEL
from nopard.cluster.stamps import bump_arguments
from nopard.settings.values import redis_arguments
from nopard.storage import keys


def package_of(key: str) -> str | None:
    """The package a key belongs to (its documents, tarballs or blocks), or None."""
    parsed = keys.parse_package_key(key)
    return parsed.name if parsed is not None else keys.blocked_name_of(key)


class ChangedPackages:
    """A store whose writes and deletes note the packages they touch (``names``); the rest passes through."""

    _WRITES = frozenset({"write", "create", "replace", "create_from_file", "delete", "delete_versioned",
                         "set_aside"})

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.names: set[str] = set()

    def __getattr__(self, attribute: str) -> Any:
        method = getattr(self._storage, attribute)
        if attribute not in self._WRITES:
            return method

        async def noting(key: str, *args: Any) -> Any:
            result = await method(key, *args)
            if result is not False and (name := package_of(key)) is not None:
                self.names.add(name)
            return result
        return noting


def _command(*args: bytes | str | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _reply(file: Any) -> Any:
    line = file.readline()
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"-":
        raise OSError(f"Redis answered: {rest.decode('utf-8', 'replace')}")
    if kind in (b"+", b":"):
        return rest
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else file.read(size + 2)[:-2]
    if kind == b"*":
        return [_reply(file) for _ in range(max(int(rest), 0))]
    raise OSError("Redis answered something that is no reply")


class UsersNews:
    """A StoredUsers' ``announce`` for a command: notes that the users changed, so the command
    announces it once at its end (``news``) rather than once per user an import adds."""

    def __init__(self) -> None:
        self.news: set[str] = set()

    async def __call__(self, news: str) -> None:
        self.news.add(news)


def announce(url: str, names: set[str], timeout: float = 5.0, news: frozenset[str] | set[str] = frozenset()) -> None:
    """Bump the stamp of every package in ``names`` and announce it on the change feed, and announce
    ``news`` (messages that are no package, StoredUsers' NEWS); OSError if Redis fails."""
    if not names and not news:
        return
    arguments = redis_arguments(url)
    with socket.create_connection((arguments["host"], arguments["port"]), timeout=timeout) as sock:
        file = sock.makefile("rb")
        commands = []
        if arguments["password"] is not None:
            user = [arguments["username"]] if arguments["username"] else []
            commands.append(_command("AUTH", *user, arguments["password"]))
        commands.append(_command("SELECT", arguments["dbid"]))
        for name in sorted(names):
            script, stamp_keys = bump_arguments(name)
            commands.append(_command("EVAL", script, len(stamp_keys), *stamp_keys))
            commands.append(_command("PUBLISH", CHANNEL, name))
        commands.extend(_command("PUBLISH", CHANNEL, message) for message in sorted(news))
        sock.sendall(b"".join(commands))
        for _ in commands:
            _reply(file)


def tell_instances(settings: Any, names: set[str], users: Any = None) -> None:
    """Announce the packages a command changed, and the users if ``users`` (open_users') changed,
    to the instances sharing NOPARD_REDIS_URL (if any)."""
    news = users.announce.news if users is not None and isinstance(users.announce, UsersNews) else set()
    if not settings.redis_url or not (names or news):
        return
    try:
        announce(settings.redis_url, names, news=news)
    except OSError as error:
        print(f"nopard-admin: could not tell the running instances through NOPARD_REDIS_URL ({error}); "
              "they serve the changes once their cached forms expire or they restart", file=sys.stderr)
        return
    print("told the running instances: " + ", ".join(
        ([f"{len(names)} packages changed"] if names else []) + (["the users changed"] if news else [])))
