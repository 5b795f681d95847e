"""Access rules of NOPARD_CONFIG: glob patterns, rule order, lists, groups, admins, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from nopard.settings.acl import ALLOW_ALL, glob_to_regex, load_policy, parse_policy
from nopard.settings.config import ConfigError

POLICY = {
    "admins": ["root"],
    "groups": {"team": ["bob", "carol"]},
    "packages": [
        {"pattern": "@acme/*", "access": ["team"], "publish": ["team"], "unpublish": ["carol"], "proxy": []},
        {"pattern": "internal-*", "access": ["$authenticated"], "publish": ["bob"]},
        {"pattern": "open-?", "access": ["$anonymous"]},
        {"pattern": "**", "access": ["$all"], "publish": ["$authenticated"], "proxy": ["$all"]},
    ],
}


@pytest.mark.parametrize(
    "pattern, name, matches",
    [
        ("@acme/*", "@acme/lib", True),
        ("@acme/*", "@acme/deep/er", False),
        ("@acme/*", "@acmeish/lib", False),
        ("@acme/*", "lib", False),
        ("internal-*", "internal-tools", True),
        ("internal-*", "internal-", True),
        ("internal-*", "@x/internal-tools", False),
        ("internal-*", "my-internal-tools", False),
        ("**", "anything", True),
        ("**", "@scope/anything", True),
        ("@*/*", "@s/n", True),
        ("@*/*", "n", False),
        ("open-?", "open-a", True),
        ("open-?", "open-ab", False),
        ("a.b", "axb", False),
        ("a+b", "a+b", True),
        ("@ACME/*", "@acme/lib", True),
    ],
)
def test_glob_matching(pattern: str, name: str, matches: bool) -> None:
    """* stays in a segment, ** crosses them, ? is one character, the rest is literal."""
    assert (glob_to_regex(pattern).fullmatch(name) is not None) is matches


def test_first_matching_rule_wins() -> None:
    policy = parse_policy(POLICY)
    assert policy.rule_for("@acme/lib").pattern == "@acme/*"
    assert policy.rule_for("internal-x").pattern == "internal-*"
    assert policy.rule_for("left-pad").pattern == "**"


@pytest.mark.parametrize(
    "action, name, user, allowed",
    [
        ("access", "@acme/lib", "bob", True),
        ("access", "@acme/lib", "dave", False),
        ("access", "@acme/lib", None, False),
        ("access", "@acme/lib", "root", True),  # admin
        ("publish", "@acme/lib", "carol", True),
        ("unpublish", "@acme/lib", "bob", False),
        ("unpublish", "@acme/lib", "carol", True),
        ("access", "internal-x", "dave", True),
        ("access", "internal-x", None, False),
        ("publish", "internal-x", "bob", True),
        ("publish", "internal-x", "carol", False),
        ("unpublish", "internal-x", "bob", True),  # unpublish defaults to publish's list
        ("access", "open-a", None, True),
        ("access", "open-a", "bob", False),  # $anonymous is only anonymous
        ("access", "left-pad", None, True),
        ("publish", "left-pad", None, False),
        ("publish", "left-pad", "dave", True),
        ("unpublish", "left-pad", "dave", True),
    ],
)
def test_rule_evaluation(action: str, name: str, user: str | None, allowed: bool) -> None:
    assert parse_policy(POLICY).allows(action, name, user) is allowed


def test_no_matching_rule_denies_everything_but_admins() -> None:
    policy = parse_policy({"admins": ["root"], "packages": [{"pattern": "@acme/*", "access": ["$all"]}]})
    assert not policy.allows("access", "left-pad", "bob")
    assert not policy.allows("access", "left-pad", None)
    assert policy.allows("publish", "left-pad", "root")
    assert not policy.proxies("left-pad")


def test_proxy_is_a_property_of_the_name() -> None:
    policy = parse_policy(POLICY)
    assert not policy.proxies("@acme/lib")
    assert not policy.proxies("internal-x")  # no proxy list: never upstream
    assert policy.proxies("left-pad")


def test_without_a_file_everything_is_allowed() -> None:
    assert load_policy("") is ALLOW_ALL
    for action in ("access", "publish", "unpublish"):
        assert ALLOW_ALL.allows(action, "@acme/lib", None)
    assert ALLOW_ALL.proxies("@acme/lib")


def test_load_policy_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "nopard.toml"
    path.write_text(
        'admins = ["alice"]\n[groups]\nteam = ["bob"]\n'
        '[[packages]]\npattern = "@acme/*"\naccess = ["team"]\npublish = ["team"]\nproxy = []\n'
        '[[packages]]\npattern = "**"\naccess = ["$all"]\nproxy = ["$all"]\n'
    )
    policy = load_policy(str(path))
    assert policy.allows("access", "@acme/x", "bob") and not policy.allows("access", "@acme/x", "eve")
    assert policy.allows("unpublish", "@acme/x", "alice")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("admins = [", "is not valid TOML"),
        ("admin = []", "unknown key 'admin'"),
        ('[[packages]]\npattern = "x"\nread = []', "unknown key 'read'"),
        ("[[packages]]\naccess = []", "pattern must be"),
        ('[[packages]]\npattern = "x"\naccess = "bob"', "access must be a list"),
        ('[[packages]]\npattern = "x"\naccess = ["$everyone"]', "unknown '$everyone'"),
        ('[[packages]]\npattern = "x"\nproxy = ["bob"]', "proxy is a property of the name"),
        ('[groups]\n"$team" = ["bob"]', "reserved"),
        ("groups = 1", "groups must be a table"),
    ],
)
def test_bad_files_name_nopard_config_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(str(path))
    message = str(caught.value)
    assert message.startswith("NOPARD_CONFIG: ") and problem in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NOPARD_CONFIG: cannot read"):
        load_policy(str(tmp_path / "nope.toml"))
