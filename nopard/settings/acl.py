"""Access rules per package name, from the optional TOML file NOPARD_CONFIG names.

The file::

    admins = ["alice"]              # may do everything the rules govern

    [groups]
    team = ["bob", "carol"]

    [[packages]]                    # rules in order: the first whose pattern matches wins
    pattern = "@acme/*"
    access = ["team"]               # who may read (document, versions, tarballs, tags, search)
    publish = ["team"]              # who may publish, tag, deprecate, change owners
    unpublish = ["alice"]           # who may remove versions or the package (default: publish's list)
    proxy = []                      # [] never fetched from the upstream; ["$all"] fetched
    min_release_age = "7d"          # quarantine for these names ("off": none); default NOPARD_MIN_RELEASE_AGE

    [[packages]]
    pattern = "**"
    access = ["$all"]
    publish = ["$authenticated"]
    proxy = ["$all"]

Entries of the lists: user names, group names, ``$all``, ``$authenticated``,
``$anonymous``. ``*`` matches within one path segment (``@acme/*``,
``internal-*``), ``**`` across them, ``?`` one character. A name no rule
matches may not be read, published, unpublished or fetched upstream.

Without a file, every rule allows (``ALLOW_ALL``): the core's settings decide.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from nopard.settings.config import ConfigError
from nopard.settings.values import parse_age

ACTIONS = ("access", "publish", "unpublish")
SPECIAL = ("$all", "$authenticated", "$anonymous")
_RULE_KEYS = {"pattern", "access", "publish", "unpublish", "proxy", "min_release_age"}
_TOP_KEYS = {"admins", "groups", "packages"}


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` any run without ``/``, ``**`` any run at all, ``?`` one character but ``/``."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Rule:
    """One ``[[packages]]`` entry."""

    pattern: str
    access: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    unpublish: tuple[str, ...] = ()
    proxy: bool = False
    min_release_age: float | None = None  # None: NOPARD_MIN_RELEASE_AGE decides
    regex: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)

    def matches(self, name: str) -> bool:
        """Whether this rule governs ``name``."""
        return self.regex.fullmatch(name) is not None


@dataclass(frozen=True)
class Policy:
    """Admins, groups and the ordered rules of a configuration file."""

    rules: tuple[Rule, ...] = ()
    admins: frozenset[str] = frozenset()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    enabled: bool = True

    def rule_for(self, name: str) -> Rule | None:
        """The first rule whose pattern matches ``name``; None: no rule (deny)."""
        return next((rule for rule in self.rules if rule.matches(name)), None)

    def is_admin(self, user: str | None) -> bool:
        """The admins of NOPARD_CONFIG and NOPARD_ADMINS; nobody while neither names one.

        Admins change where packages come from (the upstream URL): a user must be
        named one, never be one by default (not even while no rules file is loaded).
        """
        return user is not None and user in self.admins

    def allows(self, action: str, name: str, user: str | None) -> bool:
        """May ``user`` (None: anonymous) do ``action`` (access, publish, unpublish) on ``name``?"""
        if not self.enabled:
            return True
        if self.is_admin(user):
            return True
        rule = self.rule_for(name)
        if rule is None:
            return False
        return any(self._covers(entry, user) for entry in getattr(rule, action))

    def min_release_age(self, name: str) -> float | None:
        """The quarantine the first rule matching ``name`` sets (0: none); None when it sets none."""
        rule = self.rule_for(name) if self.enabled else None
        return None if rule is None else rule.min_release_age

    def proxies(self, name: str) -> bool:
        """May ``name`` be fetched from an upstream at all?"""
        if not self.enabled:
            return True
        rule = self.rule_for(name)
        return rule is not None and rule.proxy

    def _covers(self, entry: str, user: str | None) -> bool:
        if entry == "$all":
            return True
        if entry == "$authenticated":
            return user is not None
        if entry == "$anonymous":
            return user is None
        if user is None:
            return False
        if entry in self.groups:
            return user in self.groups[entry]
        return entry == user


ALLOW_ALL = Policy(enabled=False)


def load_policy(path: str) -> Policy:
    """The policy of the file at ``path`` (empty path: ALLOW_ALL); ConfigError naming NOPARD_CONFIG."""
    if not path:
        return ALLOW_ALL
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"NOPARD_CONFIG: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"NOPARD_CONFIG: {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"NOPARD_CONFIG: {path} is not UTF-8 text") from None
    try:
        return parse_policy(data)
    except ValueError as error:
        raise ConfigError(f"NOPARD_CONFIG: {path}: {error}") from None


def parse_policy(data: dict[str, Any]) -> Policy:
    """A Policy from parsed TOML; ValueError describing the first problem."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: admins, groups, packages)")
    admins = _names(data.get("admins", []), "admins")
    raw_groups = data.get("groups", {})
    if not isinstance(raw_groups, dict):
        raise ValueError("groups must be a table of group = [users]")
    groups = {}
    for group, members in raw_groups.items():
        if group.startswith("$"):
            raise ValueError(f"group name {group!r} is reserved ($ names are built in)")
        groups[group] = frozenset(_names(members, f"groups.{group}"))
    packages = data.get("packages", [])
    if not isinstance(packages, list):
        raise ValueError("packages must be an array of tables ([[packages]])")
    rules = tuple(_rule(entry, index) for index, entry in enumerate(packages, 1))
    return Policy(rules=rules, admins=frozenset(admins), groups=groups)


def _rule(entry: Any, index: int) -> Rule:
    where = f"packages #{index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(entry) - _RULE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_RULE_KEYS))})")
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"{where}: pattern must be a non-empty string such as \"@acme/*\"")
    where = f"packages #{index} ({pattern})"
    access = _names(entry.get("access", []), f"{where}: access")
    publish = _names(entry.get("publish", []), f"{where}: publish")
    unpublish = _names(entry.get("unpublish", publish), f"{where}: unpublish")
    proxy = _names(entry.get("proxy", []), f"{where}: proxy")
    if proxy not in ([], ["$all"]):
        raise ValueError(f'{where}: proxy is a property of the name: use [] (never upstream) or ["$all"]')
    age = entry.get("min_release_age")
    if age is not None:
        if isinstance(age, bool) or not isinstance(age, (str, int)):
            raise ValueError(f'{where}: min_release_age is a duration such as "3d" or "36h", or "off"')
        age = parse_age(str(age))
    return Rule(pattern.strip(), tuple(access), tuple(publish), tuple(unpublish), bool(proxy), age,
                glob_to_regex(pattern.strip()))


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where} must be a list of names")
    names = [v.strip() for v in value]
    for name in names:
        if name.startswith("$") and name not in SPECIAL:
            raise ValueError(f"{where}: unknown {name!r} (use {', '.join(SPECIAL)})")
    return names


def ruled_upstreams(upstreams_type: type, policy: Policy) -> type:
    """A subclass of mirror.upstreams.Upstreams that never sends upstream a name whose rule has ``proxy = []``."""

    class RuledUpstreams(upstreams_type):
        def for_name(self, name: str) -> Any:
            if not policy.proxies(name):
                return None
            return super().for_name(name)

    return RuledUpstreams


# What a client is told of a name nopard lacks --------------------------------
# One wording for the mirror's own answers and for hidden names: a name a user
# may not read must get exactly what a name that does not exist would get.

def unreachable(what: str) -> str:
    """The answer for ``what`` (a name, or name/-/file) not stored here while its upstream is down."""
    return f"{what} is not cached here and the upstream is unreachable"


def not_forwarded(name: str) -> str:
    """The answer for a name not stored here while NOPARD_AUTO_FORWARD is off."""
    return f"package not found: {name} (NOPARD_AUTO_FORWARD is off)"


def missing_answer(name: str, tarball: str | None, upstream_down: bool | None, auto_forward: bool) -> str | None:
    """What a missing ``name`` (or its ``tarball``) is told; ``upstream_down`` None: private. None: plain."""
    if upstream_down is None:
        return None
    if upstream_down:
        return unreachable(f"{name}/-/{tarball}" if tarball else name)
    if not auto_forward and tarball is None:
        return not_forwarded(name)
    return None
