"""Fixtures shared by the unit and end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import NopardServer, Npm
from tests.upstream import FakeUpstream

# Hypothesis's per-example deadline (200 ms) is a time assertion: on a loaded 2-core machine it
# failed property tests whose code was right (test_history, test_charts). Examples are bounded by
# their sizes instead; a test that wants a deadline still sets its own.
settings.register_profile("nopard", deadline=None)
settings.load_profile("nopard")


@pytest.fixture
def start_nopard(tmp_path: Path) -> Iterator[Callable[..., NopardServer]]:
    """Start `twistd -n nopard` processes with given settings; stopped after the test."""
    servers: list[NopardServer] = []

    def start(env: dict[str, str] | None = None, args: tuple = (), name: str = "nopard") -> NopardServer:
        server = NopardServer(tmp_path / name, env, args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nopard(start_nopard: Callable[..., NopardServer]) -> NopardServer:
    """A nopard with default settings in a temporary directory."""
    return start_nopard()


@pytest.fixture
def npm(nopard: NopardServer, tmp_path: Path) -> Npm:
    """The real npm CLI pointed at ``nopard``."""
    return Npm(nopard.url, tmp_path / "npm-home")


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream registry process for the whole run."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, healthy, with zeroed counters; put back to normal after the test."""
    yield upstream.healthy()
    upstream.healthy()
