"""Fixtures of the end-to-end tests shared by several modules (tests/conftest.py has the suite's own)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.daemons import Daemon, alive
from tests.polling import PollTimeout, poll_until
from tests.support import NopardServer


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """An empty registry directory, as nopard creates at its first start."""
    path = tmp_path / "nopard" / "registry"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def closed(start_nopard: Callable[..., NopardServer]) -> NopardServer:
    """A running nopard with registration closed (NOPARD_MAX_USERS=0)."""
    return start_nopard({"NOPARD_MAX_USERS": "0"})


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory every user can enter (the daemon hands parts of it to nobody)."""
    path = Path(tempfile.mkdtemp(prefix="nopard-service-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running afterwards is killed (by its PID)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.pid and alive(daemon.pid):
            os.kill(daemon.pid, signal.SIGKILL)
            with suppress(PollTimeout):
                poll_until(lambda pid=daemon.pid: not alive(pid), "the killed daemon to be gone", 10)

