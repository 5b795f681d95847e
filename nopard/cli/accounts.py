"""nopard-admin's user and token commands: the users (the store's users/htpasswd, or NOPARD_HTPASSWD's
file) and the store's profiles and tokens, with nopard running or not, on any backend (every write is
atomic; a change of the users is a compare-and-swap, announced with NOPARD_REDIS_URL so running instances
read it again at once, else at their next check)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from typing import Any

import orjson

from nopard.cli.announce import tell_instances
from nopard.cli.registry import AdminError, store_settings

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def open_users(settings: Any, storage: Any = None) -> tuple[Any, Any]:
    """(the users, the store) NOPARD_STORAGE (or ``storage``) and NOPARD_HTPASSWD name, for ``run_now``.

    An older version's local htpasswd file is moved into the store first, as nopard does at start.
    The users' changes are noted (cli/announce.UsersNews) for ``tell_instances`` to announce.
    """
    from nopard.auth.stored_users import StoredUsers, local_file_to_adopt, user_table
    from nopard.cli.announce import UsersNews
    from nopard.cli.maintenance import call_directly, open_store, run_now

    storage = open_store(settings) if storage is None else storage
    users = user_table(settings, storage, time.time, call_directly)
    if isinstance(users, StoredUsers):
        users.announce = UsersNews()
    path = local_file_to_adopt(settings)
    if isinstance(users, StoredUsers) and path is not None:
        adoption = run_now(users.adopt_local_file(path))
        if adoption is not None:
            print(adoption.line())
    return users, storage


def read_password(options: argparse.Namespace) -> str:
    """The new password: one line of stdin with --password-stdin, else asked twice on the terminal."""
    from nopard.auth import MAX_PASSWORD_LENGTH

    if options.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise AdminError("no terminal to ask for the password on: use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise AdminError("the two passwords differ")
    if not password:
        raise AdminError("the password is empty")
    if len(password.encode()) > MAX_PASSWORD_LENGTH:
        raise AdminError(f"passwords are at most {MAX_PASSWORD_LENGTH} bytes")
    return password


def known_user(users: Any, name: str) -> str:
    """``name`` if ``users`` has them, else AdminError."""
    from nopard.auth.htpasswd import validate_user_name
    from nopard.cli.maintenance import run_now

    validate_user_name(name)
    if name not in run_now(users.fresh()):
        raise AdminError(f"no user {name} in {users.where()} (nopard-admin user list shows them)")
    return name


def user_add(options: argparse.Namespace) -> int:
    """Add a user, with a profile like registration writes."""
    from nopard.auth.htpasswd import hash_password, validate_user_name
    from nopard.cli.maintenance import run_now
    from nopard.domain.errors import Conflict
    from nopard.domain.times import iso_time
    from nopard.storage import keys

    settings = store_settings(options)
    name = validate_user_name(options.name)
    if options.email is not None and not _EMAIL.fullmatch(options.email):
        raise AdminError(f"invalid email address: {options.email!r}")
    users, storage = open_users(settings)
    exists = AdminError(f"user {name} already exists (nopard-admin user passwd {name} sets a new password)")
    if name in run_now(users.fresh()):
        raise exists
    try:
        run_now(users.add_hashed(name, hash_password(read_password(options))))
    except Conflict:
        raise exists from None  # added meanwhile, through a running nopard
    profile = {"name": name, "email": options.email or "", "created": iso_time(time.time())}
    run_now(storage.write(keys.user_key(name), orjson.dumps(profile)))
    print(f"added user {name}")
    tell_instances(settings, set(), users)
    return 0


def user_passwd(options: argparse.Namespace) -> int:
    """Set a user's password."""
    from nopard.auth.htpasswd import hash_password
    from nopard.cli.maintenance import run_now

    settings = store_settings(options)
    users, _storage = open_users(settings)
    name = known_user(users, options.name)
    run_now(users.set_hash(name, hash_password(read_password(options))))
    print(f"changed the password of {name}")
    tell_instances(settings, set(), users)  # or an instance accepts the old one until its next read
    return 0


def user_reset_2fa(options: argparse.Namespace) -> int:
    """Turn off a user's two-factor authentication (a lost authenticator and no recovery code left)."""
    from nopard.auth.twofactor import TwoFactor
    from nopard.cli.maintenance import run_now

    users, storage = open_users(store_settings(options))
    name = known_user(users, options.name)
    twofactor = TwoFactor(storage, time.time)
    if "tfa" not in run_now(twofactor.profile(name)):
        print(f"{name} has no two-factor authentication")
        return 0
    run_now(twofactor.disable(name))
    print(f"turned off two-factor authentication of {name} (npm profile enable-2fa turns it on again)")
    return 0


def user_remove(options: argparse.Namespace) -> int:
    """Remove a user, their profile and every token of theirs."""
    from nopard.auth.tokens import TokenStore
    from nopard.cli.maintenance import run_now
    from nopard.storage import keys

    settings = store_settings(options)
    users, storage = open_users(settings)
    name = known_user(users, options.name)
    run_now(users.set_hash(name, None))
    revoked = run_now(TokenStore(storage).revoke_user(name))
    run_now(storage.delete(keys.user_key(name)))
    print(f"removed user {name} ({revoked} tokens revoked)")
    tell_instances(settings, set(), users)
    return 0


def user_list(options: argparse.Namespace) -> int:
    """Every user, with email, creation time and number of tokens."""
    from nopard.auth.tokens import TokenStore
    from nopard.cli.maintenance import run_now
    from nopard.storage import keys

    table, storage = open_users(store_settings(options))
    users = sorted(run_now(table.fresh()))
    if not users:
        print(f"no users in {table.where()}")
        return 0
    tokens: dict[str, int] = {}
    for record in run_now(TokenStore(storage).records()):
        tokens[record.user] = tokens.get(record.user, 0) + 1
    width = max(len(user) for user in users)
    for user in users:
        raw = run_now(storage.read(keys.user_key(user)))
        try:
            profile = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            profile = {}
        print(f"{user:<{width}}  {profile.get('email') or '-'}  created {profile.get('created') or '-'}  "
              f"{tokens.get(user, 0)} tokens")
    return 0


def token_list(options: argparse.Namespace) -> int:
    """Every token's record: key, user, created, read-only (never the token itself)."""
    from nopard.auth.tokens import TokenStore
    from nopard.cli.maintenance import open_store, run_now

    settings = store_settings(options)
    records = run_now(TokenStore(open_store(settings)).records(options.user))
    if not records:
        print("no tokens" + (f" of {options.user}" if options.user else ""))
        return 0
    width = max(len(record.user) for record in records)
    for record in records:
        access = "read-only" if record.readonly else "read-write"
        print(f"{record.key}  {record.user:<{width}}  {record.created}  {access}")
    return 0


def token_revoke(options: argparse.Namespace) -> int:
    """Revoke the token whose record has KEY."""
    from nopard.auth.tokens import TokenStore
    from nopard.cli.maintenance import open_store, run_now

    settings = store_settings(options)
    record = run_now(TokenStore(open_store(settings)).revoke_key(options.key))
    if record is None:
        raise AdminError(f"no token has key {options.key} (nopard-admin token list shows them)")
    print(f"revoked token {record.key} of {record.user}")
    return 0
