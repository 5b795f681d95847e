"""Settings: defaults, environment and twistd options, their parsers and errors."""

from __future__ import annotations

import os

import pytest

from nopard.service import Options
from nopard.settings.config import SETTINGS, ConfigError, LiveSettings, Settings, load_settings

CWD = "/srv/nopard"


def load(options: dict[str, str | None] | None = None, **environ: str) -> Settings:
    """Settings from options and NOPARD_* variables, relative to CWD."""
    return load_settings(options or {}, environ, cwd=CWD)


def test_defaults() -> None:
    """With nothing given, every setting has its documented default."""
    settings = load()
    assert (settings.hostname, settings.port, settings.base_url) == ("127.0.0.1", 5984, "")
    assert settings.registry_path == "/srv/nopard/registry"
    assert (settings.loglevel, settings.logfile, settings.htpasswd) == ("info", "", "")
    assert (settings.max_users, settings.auth_read, settings.auth_write) == (1, False, True)
    assert settings.always_https is False
    assert settings.max_body_size == 100 * 1024**2
    assert settings.memory_cache_size == 128 * 1024**2


def test_environment_beats_default() -> None:
    """A NOPARD_* variable replaces the default."""
    assert load(NOPARD_PORT="8080").port == 8080


def test_option_beats_environment() -> None:
    """A twistd option replaces the NOPARD_* variable."""
    assert load({"port": "9000"}, NOPARD_PORT="8080").port == 9000


def test_option_not_given_falls_back_to_environment() -> None:
    """An option given as None (not on the command line) leaves the variable in force."""
    assert load({"port": None}, NOPARD_PORT="8080").port == 8080


def test_unrelated_environment_is_ignored() -> None:
    """Variables without the NOPARD_ prefix do not set anything."""
    assert load(PORT="1").port == 5984


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("auth_read", "yes", True), ("auth_read", "ON", True), ("auth_read", " true ", True),
        ("auth_read", "1", True), ("auth_write", "no", False), ("auth_write", "off", False),
        ("auth_write", "False", False), ("auth_write", "0", False),
        ("port", "1", 1), ("port", "65535", 65535), ("port", " 80 ", 80),
        ("max_users", "0", 0), ("max_users", "25", 25),
        ("max_body_size", "1048576", 1048576), ("max_body_size", "512kb", 512 * 1024),
        ("max_body_size", "100MB", 100 * 1024**2), ("max_body_size", "1gb", 1024**3),
        ("max_body_size", " 10 b ", 10), ("max_body_size", "100k", 100 * 1024),
        ("memory_cache_size", "64m", 64 * 1024**2),
        ("loglevel", "DEBUG", "debug"), ("loglevel", "warning", "warn"),
        ("base_url", "https://npm.example.com/prefix/", "https://npm.example.com/prefix"),
        ("base_url", "  ", ""),
        ("hostname", "::1", "::1"), ("hostname", "0.0.0.0", "0.0.0.0"),
        ("hostname", "npm.example", "npm.example"),
    ],
)
def test_parsers_read_good_values(name: str, text: str, value: object) -> None:
    """Each parser turns the text forms it documents into the value components use."""
    assert getattr(load({name: text}), name) == value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("auth_read", "maybe"), ("auth_write", ""), ("port", "0"), ("port", "65536"),
        ("port", "-1"), ("port", "http"), ("port", ""), ("max_users", "-1"),
        ("max_users", "1.5"), ("max_body_size", "0"), ("max_body_size", "0mb"),
        ("max_body_size", "1.5mb"), ("max_body_size", "10tb"), ("max_body_size", "-5"),
        ("memory_cache_size", "lots"), ("loglevel", "verbose"),
        ("base_url", "ftp://x.example"), ("base_url", "npm.example.com"), ("base_url", "http://"),
        ("base_url", "https://x.example/?a=1"), ("base_url", "https://x.example/#top"), ("base_url", "https://x.example?"),
        ("hostname", ""), ("hostname", "a b"), ("hostname", "host/path"),
    ],
)
def test_bad_environment_value_names_the_variable(name: str, text: str) -> None:
    """A bad NOPARD_* value raises ConfigError whose message names that variable."""
    env = "NOPARD_" + name.upper()
    with pytest.raises(ConfigError, match=env):
        load(**{env: text})


@pytest.mark.parametrize(("name", "text"), [("port", "99999"), ("max_body_size", "big"), ("auth_read", "2")])
def test_bad_option_value_names_the_option(name: str, text: str) -> None:
    """A bad twistd option raises ConfigError whose message names --the-option."""
    with pytest.raises(ConfigError, match="--" + name.replace("_", "-")):
        load({name: text})


def test_bad_setting_is_named_among_good_ones() -> None:
    """With one bad variable among good settings, the error names the bad one."""
    with pytest.raises(ConfigError, match="NOPARD_LOGLEVEL"):
        load({"port": "80"}, NOPARD_LOGLEVEL="loud")


def test_empty_registry_path_is_refused() -> None:
    """An empty registry path is a ConfigError naming NOPARD_REGISTRY_PATH."""
    with pytest.raises(ConfigError, match="NOPARD_REGISTRY_PATH"):
        load(NOPARD_REGISTRY_PATH="  ")


def test_relative_paths_are_made_absolute_from_cwd() -> None:
    """registry_path, htpasswd and logfile given relative are resolved against cwd."""
    settings = load(NOPARD_REGISTRY_PATH="data/../reg", NOPARD_HTPASSWD="users", NOPARD_LOGFILE="n.log")
    assert settings.registry_path == "/srv/nopard/reg"
    assert settings.htpasswd == "/srv/nopard/users"
    assert settings.logfile == "/srv/nopard/n.log"


def test_absolute_registry_path_is_kept() -> None:
    """An absolute registry path ignores cwd."""
    assert load(NOPARD_REGISTRY_PATH="/var/lib/npm").registry_path == "/var/lib/npm"


def test_cwd_defaults_to_the_process_directory() -> None:
    """Without cwd, relative paths resolve against os.getcwd()."""
    settings = load_settings({}, {})
    assert settings.registry_path == os.path.join(os.getcwd(), "registry")


def test_htpasswd_path_defaults_inside_the_registry() -> None:
    """With no htpasswd setting, htpasswd_path is where older versions kept the users (moved to the store at start)."""
    assert load().htpasswd_path == "/srv/nopard/registry/htpasswd"


def test_htpasswd_path_uses_the_setting_when_given() -> None:
    """A configured htpasswd file is used as given (made absolute)."""
    assert load(NOPARD_HTPASSWD="/etc/nopard/htpasswd").htpasswd_path == "/etc/nopard/htpasswd"


def test_live_settings_update_is_seen_through_current() -> None:
    """After update, .current has the new value and keeps the others."""
    live = LiveSettings(load())
    returned = live.update(max_users=5, auth_read=True)
    assert live.current is returned
    assert (live.current.max_users, live.current.auth_read, live.current.port) == (5, True, 5984)


def test_settings_replace_leaves_the_original() -> None:
    """replace makes a copy; the Settings it came from is unchanged."""
    settings = load()
    settings.replace(port=1)
    assert settings.port == 5984


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_setting_env_and_option_names(setting) -> None:
    """Each setting is NOPARD_<NAME> in the environment and --<name-with-dashes> as an option."""
    assert setting.env == "NOPARD_" + setting.name.upper()
    assert setting.option == setting.name.replace("_", "-")
    assert "_" not in setting.option


def test_every_setting_is_a_settings_field() -> None:
    """SETTINGS and the Settings dataclass list the same names, in the same order."""
    assert [s.name for s in SETTINGS] == list(Settings.__dataclass_fields__)


def test_twistd_options_are_one_per_setting() -> None:
    """The twistd Options class has exactly one option per setting, named setting.option
    (--listen is a method: it may be given more than once)."""
    assert [row[0] for row in Options.optParameters] == [s.option for s in SETTINGS if s.name != "listen"]
    options = Options()
    options.parseOptions(["--listen", "tcp:5984", "--listen=unix:/run/nopard/nopard.sock"])
    assert options.given()["listen"] == "tcp:5984 unix:/run/nopard/nopard.sock"
    assert Options().given()["listen"] is None


def test_twistd_options_give_only_what_was_typed() -> None:
    """Options.given maps typed options to their text and every other setting to None."""
    options = Options()
    options.parseOptions(["--port", "8080", "--base-url", "https://x.example"])
    given = options.given()
    assert set(given) == {s.name for s in SETTINGS}
    assert (given["port"], given["base_url"], given["hostname"]) == ("8080", "https://x.example", None)


@pytest.mark.parametrize("order", ["self first", "self last"])
def test_every_scope_upstream_is_checked_against_this_nopard(order: str) -> None:
    """A scope upstream that is this nopard is refused wherever it stands among the others."""
    pairs = ["@own=http://localhost:4873/", "@other=http://127.0.0.2:4873/"]
    if order == "self last":
        pairs.reverse()
    with pytest.raises(ConfigError, match="NOPARD_SCOPE_UPSTREAMS: http://localhost:4873/? is this nopard itself"):
        load(NOPARD_PORT="4873", NOPARD_SCOPE_UPSTREAMS=",".join(pairs))
