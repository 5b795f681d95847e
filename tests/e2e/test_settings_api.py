"""Runtime settings over HTTP: GET and PUT /-/nopard/settings change a running nopard, and
every nopard sharing its store, without a restart."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.polling import poll_until
from tests.support import REPO, NopardServer, Response, free_port
from tests.upstream import FakeUpstream

RULES = """
admins = ["root"]

[[packages]]
pattern = "**"
access = ["$all"]
publish = ["$authenticated"]
proxy = ["$all"]
"""
SETTINGS = "/-/nopard/settings"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


@pytest.fixture
def start(start_nopard: Callable[..., NopardServer], rules: Path) -> Callable[..., NopardServer]:
    """Start a nopard whose admin is root (NOPARD_CONFIG), plus any NOPARD_* given."""
    def start_one(name: str = "nopard", **settings: str) -> NopardServer:
        env = {"NOPARD_CONFIG": str(rules), "NOPARD_MAX_USERS": "5", "NOPARD_STALE_DEADLINE": "0.5",
               "NOPARD_UPSTREAM_TIMEOUT": "3"}
        env.update({f"NOPARD_{k.upper()}": v for k, v in settings.items()})
        return start_nopard(env, name=name)
    return start_one


def unreachable() -> str:
    """An upstream URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/"


def change(server: NopardServer, token: str | None, **values: str) -> Response:
    return server.request("PUT", SETTINGS, {"values": values}, token=token)


def entries(server: NopardServer, token: str) -> dict[str, dict]:
    answer = server.request("GET", SETTINGS, token=token)
    assert answer.status == 200, answer.body
    return {entry["name"]: entry for entry in answer.json()["settings"]}


def test_forwarder_url_changes_without_a_restart(start, fake: FakeUpstream) -> None:
    """From an unreachable upstream to the fake one: the next install reads through it."""
    server = start(forwarder_url=unreachable())
    root = server.token("root", "pw-root")
    assert server.request("GET", "/debug").status != 200
    answer = change(server, root, forwarder_url=fake.url)
    assert answer.status == 200, answer.body
    [entry] = [e for e in answer.json()["settings"] if e["name"] == "forwarder_url"]
    assert (entry["value"], entry["source"], entry["env"]) == (fake.url.rstrip("/"), "settings page",
                                                               "NOPARD_FORWARDER_URL")
    document = server.request("GET", "/debug")
    assert document.status == 200, document.body
    version = document.json()["dist-tags"]["latest"]
    tarball = document.json()["versions"][version]["dist"]["tarball"][len(server.url) - 1:]
    assert server.request("GET", tarball).status == 200


def test_auto_forward_off_applies_at_once(start, fake: FakeUpstream) -> None:
    server = start(forwarder_url=fake.url)
    root = server.token("root", "pw-root")
    assert server.request("GET", "/debug").status == 200
    assert change(server, root, auto_forward="no").status == 200
    fake.reset()
    assert server.request("GET", "/semver").status == 404
    assert server.request("GET", "/debug").status == 200  # what is mirrored is still served
    assert fake.stats()["requests"] == []


@pytest.mark.parametrize("values, variable", [
    ({"meta_ttl": "-3"}, "NOPARD_META_TTL"),
    ({"forwarder_url": "ftp://x"}, "NOPARD_FORWARDER_URL"),
    ({"auto_forward": "no", "meta_ttl": "-3"}, "NOPARD_META_TTL"),
    ({"port": "80"}, "NOPARD_PORT"),
    ({"colour": "blue"}, "colour"),
])
def test_invalid_values_change_nothing(start, values: dict, variable: str) -> None:
    server = start()
    root = server.token("root", "pw-root")
    before = entries(server, root)
    answer = change(server, root, **values)
    assert answer.status == 400
    assert answer.json()["setting"] == variable and answer.json()["error"].startswith(variable)
    assert entries(server, root) == before
    assert not (server.registry / "settings" / "overrides.json").exists()


def test_malformed_body_is_refused(start) -> None:
    server = start()
    root = server.token("root", "pw-root")
    answer = server.request("PUT", SETTINGS, {"meta_ttl": "60"}, token=root)
    assert answer.status == 400 and "values" in answer.json()["error"]


def test_only_admins(start) -> None:
    server = start()
    server.token("root", "pw-root")
    eve = server.token("eve", "pw-eve")
    assert server.request("GET", SETTINGS).status == 401
    assert change(server, None, meta_ttl="60").status == 401
    assert server.request("GET", SETTINGS, token=eve).status == 403
    assert change(server, eve, meta_ttl="60").status == 403
    assert not (server.registry / "settings" / "overrides.json").exists()


def test_nobody_is_admin_unless_named(start_nopard: Callable[..., NopardServer]) -> None:
    """Without NOPARD_CONFIG admins or NOPARD_ADMINS a logged-in user is refused; NOPARD_ADMINS names one."""
    plain = start_nopard({"NOPARD_MAX_USERS": "5"}, name="plain")
    alice = plain.token("alice", "pw-alice")
    assert change(plain, alice, forwarder_url="http://registry.example/").status == 403
    named = start_nopard({"NOPARD_MAX_USERS": "5", "NOPARD_ADMINS": "bob"}, name="named")
    alice, bob = named.token("alice", "pw-alice"), named.token("bob", "pw-bob")
    assert change(named, alice, meta_ttl="60").status == 403
    assert change(named, bob, meta_ttl="60").status == 200
    assert entries(named, bob)["meta_ttl"]["source"] == "settings page"


def test_page_beats_environment_and_survives_a_restart(start) -> None:
    server = start(meta_ttl="100")
    root = server.token("root", "pw-root")
    assert (entries(server, root)["meta_ttl"]["value"], entries(server, root)["meta_ttl"]["source"]) == (
        "100", "environment")
    assert change(server, root, meta_ttl="50").status == 200
    server.stop()
    server.start()
    entry = entries(server, root)["meta_ttl"]
    assert (entry["value"], entry["source"]) == ("50", "settings page")
    assert change(server, root, meta_ttl="").status == 200
    entry = entries(server, root)["meta_ttl"]
    assert (entry["value"], entry["source"]) == ("100", "environment")


def test_another_instance_on_the_same_store_follows(start, tmp_path: Path) -> None:
    shared = str(tmp_path / "shared-registry")
    first = start("first", registry_path=shared)
    second = start("second", registry_path=shared)
    root = first.token("root", "pw-root")
    assert second.request("GET", "/debug").status == 404  # no upstream: a private registry
    assert change(first, root, auth_read="yes").status == 200
    poll_until(lambda: second.request("GET", "/debug").status == 401, "the second instance to follow", 15, 0.2)
    assert entries(second, root)["auth_read"]["source"] == "settings page"
    assert "settings-applied" in second.log()


def test_proxy_url_changes_without_a_restart(start, fake: FakeUpstream, tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    proxy = subprocess.Popen([sys.executable, "-m", "tests.proxy_server", "--log", str(log)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proxy.stdout.readline().split()[1])
        server = start(forwarder_url=fake.url)
        root = server.token("root", "pw-root")
        assert server.request("GET", "/debug").status == 200
        assert change(server, root, proxy_url=f"http://127.0.0.1:{port}").status == 200
        assert server.request("GET", "/semver").status == 200
        assert f"GET {fake.url}semver" in log.read_text()
        assert f"{fake.url}debug" not in log.read_text()
    finally:
        proxy.terminate()
        proxy.wait()
