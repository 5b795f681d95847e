"""Runtime settings (nopard.settings.overrides): validation, precedence, the stored object, polling,
and the components that follow a change without a restart."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from nopard.cli.maintenance import call_directly
from nopard.jobs.schedule import SyncSchedule
from nopard.mirror.upstreams import Upstreams
from nopard.settings.config import SETTINGS, ConfigError, LiveSettings, Settings, load_settings, setting_sources
from nopard.settings.overrides import (
    OVERRIDABLE,
    POLL_SECONDS,
    START_PATIENCE,
    STORE_KEY,
    OverrideError,
    Overrides,
    StartGate,
    describe,
    effective_settings,
    scrub,
)
from nopard.storage.fs import FilesystemStorage
from nopard.upstream.agents import LiveAgent

CWD = "/srv/nopard"


def base(options: dict[str, str | None] | None = None, **environ: str) -> Settings:
    return load_settings(options or {}, environ, cwd=CWD)


def done(coroutine: Any) -> Any:
    """The result of a coroutine that never really waits (storage through call_directly)."""
    result: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(result.append)
    assert result, "the coroutine waited"
    if isinstance(result[0], Exception) or hasattr(result[0], "raiseException"):
        result[0].raiseException()
    return result[0]


class Recorder:
    """A log observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]


def overrides_on(root: Path, clock: Clock | None = None, settings: Settings | None = None,
                 sources: dict[str, str] | None = None) -> tuple[Overrides, Recorder]:
    """An Overrides service on a store at ``root``, with its own LiveSettings."""
    settings = settings or base()
    recorder = Recorder()
    service = Overrides(LiveSettings(settings), settings, sources or setting_sources({}, {}),
                        FilesystemStorage(str(root), call_directly), clock or Clock(), Logger(observer=recorder))
    return service, recorder


# Validation --------------------------------------------------------------


def test_every_overridable_name_is_a_setting() -> None:
    assert set(OVERRIDABLE) <= {s.name for s in SETTINGS}


def test_good_values_are_parsed_by_their_own_parser() -> None:
    settings = effective_settings(base(), {"meta_ttl": "60", "auto_forward": "no",
                                           "forwarder_url": "https://registry.example/", "loglevel": "warning"})
    assert (settings.meta_ttl, settings.auto_forward) == (60.0, False)
    assert (settings.forwarder_url, settings.loglevel) == ("https://registry.example", "warn")


@pytest.mark.parametrize("name, text, variable", [
    ("meta_ttl", "-3", "NOPARD_META_TTL"),
    ("forwarder_url", "ftp://x", "NOPARD_FORWARDER_URL"),
    ("sync_concurrency", "0", "NOPARD_SYNC_CONCURRENCY"),
    ("auth_read", "maybe", "NOPARD_AUTH_READ"),
    ("backfill", "some", "NOPARD_BACKFILL"),
])
def test_bad_value_names_the_variable(name: str, text: str, variable: str) -> None:
    with pytest.raises(OverrideError) as raised:
        effective_settings(base(), {name: text})
    assert raised.value.setting == variable and str(raised.value).startswith(variable + ": ")
    assert isinstance(raised.value, ConfigError)


def test_cross_setting_checks_run_again() -> None:
    """An upstream that is this nopard itself is refused, as at start."""
    with pytest.raises(OverrideError, match="NOPARD_FORWARDER_URL: .* is this nopard itself") as raised:
        effective_settings(base(NOPARD_PORT="4873"), {"forwarder_url": "http://localhost:4873/"})
    assert raised.value.setting == "NOPARD_FORWARDER_URL"


def test_unknown_and_fixed_settings_are_refused() -> None:
    with pytest.raises(OverrideError, match="no such setting"):
        effective_settings(base(), {"colour": "blue"})
    with pytest.raises(OverrideError, match="NOPARD_PORT: cannot be changed at runtime"):
        effective_settings(base(), {"port": "80"})


def test_values_must_be_text() -> None:
    with pytest.raises(OverrideError, match="NOPARD_META_TTL"):
        effective_settings(base(), {"meta_ttl": 60})  # type: ignore[dict-item]


def test_empty_text_means_no_override() -> None:
    assert effective_settings(base(NOPARD_META_TTL="90"), {"meta_ttl": "  "}).meta_ttl == 90.0


# Precedence and sources ----------------------------------------------------


def test_setting_sources() -> None:
    sources = setting_sources({"port": "9000", "meta_ttl": None}, {"NOPARD_META_TTL": "5", "REDIS_URL": "redis://r"})
    assert (sources["port"], sources["meta_ttl"], sources["redis_url"], sources["loglevel"]) == (
        "option", "environment", "environment", "default")


def test_page_beats_option_beats_environment_beats_default() -> None:
    environ = {"NOPARD_META_TTL": "10", "NOPARD_NOT_FOUND_TTL": "20", "NOPARD_STALE_DEADLINE": "3"}
    options = {"not_found_ttl": "30", "stale_deadline": "4"}
    settings, sources = base(options, **environ), setting_sources(options, environ)
    page = {"stale_deadline": "5"}
    entries = {e["name"]: e for e in describe(effective_settings(settings, page), sources, page)}
    assert (entries["upstream_timeout"]["value"], entries["upstream_timeout"]["source"]) == ("30", "default")
    assert (entries["meta_ttl"]["value"], entries["meta_ttl"]["source"]) == ("10", "environment")
    assert (entries["not_found_ttl"]["value"], entries["not_found_ttl"]["source"]) == ("30", "option")
    assert (entries["stale_deadline"]["value"], entries["stale_deadline"]["source"]) == ("5", "settings page")


def test_entries_describe_each_overridable_setting() -> None:
    entries = describe(base(), setting_sources({}, {}), {})
    assert [e["name"] for e in entries] == list(OVERRIDABLE)
    first = entries[0]
    assert first == {"name": "forwarder_url", "env": "NOPARD_FORWARDER_URL", "option": "--forwarder-url",
                     "help": first["help"], "default": "", "value": "", "source": "default"}
    values = {e["name"]: e["value"] for e in entries}
    assert (values["auth_write"], values["stale_deadline"], values["loglevel"]) == ("yes", "2", "info")


def test_scrub_hides_proxy_credentials() -> None:
    assert scrub("proxy_url=http://bob:s3cret@proxy.example:3128") == "proxy_url=http://<redacted>@proxy.example:3128"


# The stored object ------------------------------------------------------------


def test_change_stores_applies_and_logs(tmp_path: Path) -> None:
    service, recorder = overrides_on(tmp_path)
    entries = done(service.change({"meta_ttl": "60", "proxy_url": "http://bob:pw@proxy.example:3128"}, "alice"))
    assert service.live.current.meta_ttl == 60.0
    assert {e["name"]: e["source"] for e in entries}["meta_ttl"] == "settings page"
    stored = orjson.loads((tmp_path / STORE_KEY).read_bytes())
    assert stored["values"] == {"meta_ttl": "60", "proxy_url": "http://bob:pw@proxy.example:3128"}
    assert stored["changed_by"] == "alice" and stored["changed_at"].endswith("Z")
    [logged] = recorder.named("settings-changed")
    assert logged["names"] == "meta_ttl,proxy_url" and "pw" not in logged["changes"]


def test_change_merges_with_what_is_stored_and_empty_removes(tmp_path: Path) -> None:
    service, _ = overrides_on(tmp_path)
    done(service.change({"meta_ttl": "60"}, "alice"))
    done(service.change({"auto_forward": "no"}, "bob"))
    assert orjson.loads((tmp_path / STORE_KEY).read_bytes())["values"] == {"meta_ttl": "60", "auto_forward": "no"}
    done(service.change({"meta_ttl": ""}, "alice"))
    assert orjson.loads((tmp_path / STORE_KEY).read_bytes())["values"] == {"auto_forward": "no"}
    assert service.live.current.meta_ttl == 300.0 and service.live.current.auto_forward is False


def test_one_bad_value_stores_nothing(tmp_path: Path) -> None:
    service, _ = overrides_on(tmp_path)
    with pytest.raises(OverrideError, match="NOPARD_META_TTL"):
        done(service.change({"auto_forward": "no", "meta_ttl": "-3"}, "alice"))
    assert not (tmp_path / STORE_KEY).exists()
    assert service.live.current.auto_forward is True


def test_change_retries_when_another_writer_got_there_first(tmp_path: Path) -> None:
    """The compare-and-swap fails once (another instance wrote meanwhile): both changes are kept."""
    service, _ = overrides_on(tmp_path)
    storage = service._storage
    real_replace = storage.replace
    raced: list[bool] = []

    async def replace_after_a_rival(key: str, data: bytes, version: str | None) -> bool:
        if not raced:
            raced.append(True)
            await storage.write(key, orjson.dumps({"values": {"sync_rate": "60"}}))
        return await real_replace(key, data, version)

    storage.replace = replace_after_a_rival  # type: ignore[method-assign]
    done(service.change({"meta_ttl": "60"}, "alice"))
    assert orjson.loads((tmp_path / STORE_KEY).read_bytes())["values"] == {"sync_rate": "60", "meta_ttl": "60"}


def test_start_applies_what_is_stored_and_skips_bad_values(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / STORE_KEY).write_bytes(orjson.dumps({"values": {"meta_ttl": "-1", "sync_rate": "60"}}))
    service, recorder = overrides_on(tmp_path)
    service.startService()
    assert service.loaded and service.live.current.sync_rate == 60 and service.live.current.meta_ttl == 300.0
    assert "NOPARD_META_TTL" in recorder.named("settings-ignored")[0]["error"]
    service.stopService()


def test_a_broken_stored_object_does_not_stop_start(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / STORE_KEY).write_bytes(b"{not json")
    service, recorder = overrides_on(tmp_path)
    service.startService()
    assert service.loaded and service.values == {} and recorder.named("settings-ignored")
    service.stopService()


def test_polling_follows_another_instance(tmp_path: Path) -> None:
    """Two instances on one store: a change through one is applied by the other at its next read."""
    clock = Clock()
    here, _ = overrides_on(tmp_path, clock)
    there, recorder = overrides_on(tmp_path, clock)
    followed: list[float] = []
    there.on_change.append(lambda: followed.append(there.live.current.sync_interval))
    here.startService()
    there.startService()
    done(here.change({"sync_interval": "120", "auth_read": "yes"}, "alice"))
    assert there.live.current.sync_interval == 300.0
    clock.advance(POLL_SECONDS)
    assert there.live.current.sync_interval == 120.0 and there.live.current.auth_read is True
    assert followed == [120.0] and recorder.named("settings-applied")
    assert {e["name"]: e["source"] for e in there.entries()}["auth_read"] == "settings page"
    done(here.change({"auth_read": ""}, "alice"))
    clock.advance(POLL_SECONDS)
    assert there.live.current.auth_read is False
    here.stopService()
    there.stopService()


def test_polling_without_a_change_applies_nothing(tmp_path: Path) -> None:
    clock = Clock()
    service, _ = overrides_on(tmp_path, clock)
    calls: list[None] = []
    service.on_change.append(lambda: calls.append(None))
    service.startService()
    for _ in range(3):
        clock.advance(POLL_SECONDS)
    assert calls == []
    service.stopService()


# Components that follow a change -------------------------------------------------


def test_upstreams_follow_the_forwarder_url() -> None:
    live = LiveSettings(base())
    made: list[str] = []

    def make(url: str, token: str | None) -> Any:
        made.append(url)
        return type("FakeUpstream", (), {"base_url": url})()

    upstreams = Upstreams(live, make)
    assert upstreams.default is None and upstreams.all() == [] and upstreams.for_name("debug") is None
    live.update(forwarder_url="http://one.example")
    first = upstreams.for_name("debug")
    assert first.base_url == "http://one.example" and upstreams.all() == [first]
    assert upstreams.default is first  # built once per URL
    live.update(forwarder_url="http://two.example")
    assert upstreams.default.base_url == "http://two.example" and made == ["http://one.example", "http://two.example"]


class FakePool:
    def __init__(self) -> None:
        self.closed = 0

    def closeCachedConnections(self) -> Deferred:
        self.closed += 1
        return Deferred.fromCoroutine(call_directly(lambda: None))


def test_live_agent_rebuilds_when_proxy_or_certificates_change() -> None:
    live = LiveSettings(base())
    built: list[tuple[str, bool]] = []
    pools: list[FakePool] = []

    def build(settings: Settings, pool: FakePool) -> Any:
        built.append((settings.proxy_url, settings.ignore_cert))
        return object()

    agent = LiveAgent(live, build, lambda: pools.append(FakePool()) or pools[-1])  # type: ignore[arg-type]
    first = agent.current()
    assert agent.current() is first and built == [("", False)]
    live.update(meta_ttl=5.0)
    assert agent.current() is first
    live.update(proxy_url="http://proxy.example:3128")
    assert agent.current() is not first and pools[0].closed == 1
    live.update(ignore_cert=True)
    agent.current()
    assert built[1:] == [("http://proxy.example:3128", False), ("http://proxy.example:3128", True)]
    assert len(pools) == 3  # a pool per agent: no connection outlives the settings it was made under
    agent.closeCachedConnections()
    assert [p.closed for p in pools] == [2, 2, 1]


class SchedulerReactor(Clock):
    """A Clock APScheduler can run on: calls "from threads" at once."""

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)


def test_sync_schedule_follows_the_interval() -> None:
    live = LiveSettings(base(NOPARD_SYNC_INTERVAL="300"))
    jobs = type("NoJobs", (), {"reports": {}, "follower": None})()
    sync = SyncSchedule(jobs, live, SchedulerReactor(), Logger())  # type: ignore[arg-type]
    sync.startService()
    assert sync.scheduler.get_job("sync").trigger.interval.total_seconds() == 300
    live.update(sync_interval=120.0)
    sync.follow_interval()
    assert sync.scheduler.get_job("sync").trigger.interval.total_seconds() == 120
    live.update(sync_interval=0.0)
    sync.follow_interval()
    assert sync.scheduler.get_job("sync") is None and sync.status()["next_run"] is None
    live.update(sync_interval=60.0)
    sync.follow_interval()
    assert sync.scheduler.get_job("sync").trigger.interval.total_seconds() == 60
    sync.stopService()


# Start-up ------------------------------------------------------------------------


class Hello(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"hello"


def test_requests_wait_for_the_first_read(tmp_path: Path) -> None:
    """No request is answered under settings the store replaces (say auth_read)."""
    service, _ = overrides_on(tmp_path)
    gate = StartGate(Hello(), service)
    early = DummyRequest([b""])
    assert gate.render(early) is NOT_DONE_YET and early.written == []
    service.startService()
    assert early.written == [b"hello"] and early.finished
    assert gate.render(DummyRequest([b""])) == b"hello"
    service.stopService()


def test_a_store_that_does_not_answer_keeps_nopard_shut_only_so_long(tmp_path: Path) -> None:
    clock = Clock()
    service, _ = overrides_on(tmp_path, clock)
    # The reads stay pending, held as a store's pending reads are: a Deferred nothing refers to
    # was collected with the read awaiting it, whose `finally` opened the gate early (the test
    # failed whenever the garbage collector ran in between; gc.collect() below makes it run).
    pending: list[Deferred] = []

    def never_answers(key: str) -> Deferred:
        pending.append(Deferred())
        return pending[-1]

    service._storage.read_versioned = never_answers  # type: ignore[method-assign]
    gate = StartGate(Hello(), service)
    early = DummyRequest([b""])
    service.startService()
    gate.render(early)
    gc.collect()
    clock.advance(START_PATIENCE - 1)
    assert early.written == []
    clock.advance(1)
    assert early.written == [b"hello"]
    service.stopService()


def test_a_failing_store_is_logged_once_per_outage(tmp_path: Path) -> None:
    clock = Clock()
    service, recorder = overrides_on(tmp_path, clock)
    real = service._storage.read_versioned

    async def broken(key: str) -> Any:
        raise OSError("disk gone")

    service._storage.read_versioned = broken  # type: ignore[method-assign]
    service.startService()
    assert service.loaded  # start-up goes on with the base settings
    clock.advance(POLL_SECONDS)
    clock.advance(POLL_SECONDS)
    assert len(recorder.named("settings-error")) == 1
    service._storage.read_versioned = real  # type: ignore[method-assign]
    clock.advance(POLL_SECONDS)
    assert len(recorder.named("settings-readable")) == 1
    service.stopService()
