"""nopard-admin's user and token commands: the htpasswd file and the store's profiles and tokens,
with nopard running or not (every write is atomic)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from typing import Any

import orjson

from nopard.cli.registry import AdminError, registry_settings

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def htpasswd_entries(path: str) -> dict[str, str]:
    """User -> hash, as the htpasswd file says now."""
    from nopard.auth.htpasswd import parse_htpasswd

    try:
        with open(path, encoding="utf-8") as file:
            return parse_htpasswd(file.read())
    except FileNotFoundError:
        return {}


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


def known_user(settings: Any, name: str) -> str:
    """``name`` if the htpasswd file has them, else AdminError."""
    from nopard.auth.htpasswd import validate_user_name

    validate_user_name(name)
    if name not in htpasswd_entries(settings.htpasswd_path):
        raise AdminError(f"no user {name} in {settings.htpasswd_path} (nopard-admin user list shows them)")
    return name


def user_add(options: argparse.Namespace) -> int:
    """Add a user to the htpasswd file, with a profile like registration writes."""
    from nopard.auth.htpasswd import hash_password, replace_entry, validate_user_name
    from nopard.cli.maintenance import open_storage, run_now
    from nopard.domain.times import iso_time
    from nopard.storage import keys

    settings = registry_settings(options)
    name = validate_user_name(options.name)
    if options.email is not None and not _EMAIL.fullmatch(options.email):
        raise AdminError(f"invalid email address: {options.email!r}")
    if name in htpasswd_entries(settings.htpasswd_path):
        raise AdminError(f"user {name} already exists (nopard-admin user passwd {name} sets a new password)")
    replace_entry(settings.htpasswd_path, name, hash_password(read_password(options)))
    profile = {"name": name, "email": options.email or "", "created": iso_time(time.time())}
    run_now(open_storage(settings.registry_path).write(keys.user_key(name), orjson.dumps(profile)))
    print(f"added user {name}")
    return 0


def user_passwd(options: argparse.Namespace) -> int:
    """Set a user's password."""
    from nopard.auth.htpasswd import hash_password, replace_entry

    settings = registry_settings(options)
    name = known_user(settings, options.name)
    replace_entry(settings.htpasswd_path, name, hash_password(read_password(options)))
    print(f"changed the password of {name}")
    return 0


def user_reset_2fa(options: argparse.Namespace) -> int:
    """Turn off a user's two-factor authentication (a lost authenticator and no recovery code left)."""
    from nopard.auth.twofactor import TwoFactor
    from nopard.cli.maintenance import open_storage, run_now

    settings = registry_settings(options)
    name = known_user(settings, options.name)
    twofactor = TwoFactor(open_storage(settings.registry_path), time.time)
    if "tfa" not in run_now(twofactor.profile(name)):
        print(f"{name} has no two-factor authentication")
        return 0
    run_now(twofactor.disable(name))
    print(f"turned off two-factor authentication of {name} (npm profile enable-2fa turns it on again)")
    return 0


def user_remove(options: argparse.Namespace) -> int:
    """Remove a user, their profile and every token of theirs."""
    from nopard.auth.htpasswd import replace_entry
    from nopard.auth.tokens import TokenStore
    from nopard.cli.maintenance import open_storage, run_now
    from nopard.storage import keys

    settings = registry_settings(options)
    name = known_user(settings, options.name)
    storage = open_storage(settings.registry_path)
    replace_entry(settings.htpasswd_path, name, None)
    revoked = run_now(TokenStore(storage).revoke_user(name))
    run_now(storage.delete(keys.user_key(name)))
    print(f"removed user {name} ({revoked} tokens revoked)")
    return 0


def user_list(options: argparse.Namespace) -> int:
    """Every user, with email, creation time and number of tokens."""
    from nopard.auth.tokens import TokenStore
    from nopard.cli.maintenance import open_storage, run_now
    from nopard.storage import keys

    settings = registry_settings(options)
    storage = open_storage(settings.registry_path)
    users = sorted(htpasswd_entries(settings.htpasswd_path))
    if not users:
        print(f"no users in {settings.htpasswd_path}")
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
    from nopard.cli.maintenance import open_storage, run_now

    settings = registry_settings(options)
    records = run_now(TokenStore(open_storage(settings.registry_path)).records(options.user))
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
    from nopard.cli.maintenance import open_storage, run_now

    settings = registry_settings(options)
    record = run_now(TokenStore(open_storage(settings.registry_path)).revoke_key(options.key))
    if record is None:
        raise AdminError(f"no token has key {options.key} (nopard-admin token list shows them)")
    print(f"revoked token {record.key} of {record.user}")
    return 0
