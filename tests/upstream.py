"""Start and steer the fake upstream registry (tests/fake_upstream.py) from tests and benchmarks."""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import stop_process

REPO = Path(__file__).resolve().parent.parent


class FakeUpstream:
    """`python -m tests.fake_upstream` as a subprocess on free ports; started on creation.

    ``url`` is the registry base URL to hand to nopard; ``fault``, ``stats``, ``reset``, ``change``
    and ``restore`` talk to its control port. Usable as a context manager that stops it.
    """

    def __init__(self, data_dir: Path = REPO / "tests" / "data" / "upstream", extra_args: tuple = ()) -> None:
        self.changed: set[str] = set()
        # stderr goes to a file: a pipe nobody reads could fill up and freeze the server.
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_upstream", "--data", str(data_dir),
             "--port", "0", "--control-port", "0", *extra_args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        line = self._read_line(timeout=20)
        if not line.startswith(b"READY "):
            self.stop()
            raise RuntimeError(f"the fake upstream did not start:\n{line.decode(errors='replace')}{self.log()}")
        _, port, control = line.split()
        self.port, self.control_port = int(port), int(control)

    def _read_line(self, timeout: float) -> bytes:
        """The first line of stdout, or what came before the process exited or the time ran out."""
        deadline, line, fd = time.monotonic() + timeout, b"", self.process.stdout.fileno()
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if ready and not chunk:
                break  # EOF: the process ended
            line += chunk
        return line

    @property
    def url(self) -> str:
        """The registry base URL, with a trailing slash."""
        return f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        """What the process wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def control(self, method: str, path: str, body: dict | None = None) -> Any:
        """One request to the control port; the JSON answer (raises on a non-200)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=30)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None,
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        if answer.status != 200:
            raise RuntimeError(f"fake upstream {method} {path}: {answer.status} {data!r}")
        return json.loads(data)

    def fault(self, mode: str, **params: Any) -> None:
        """Switch the registry port's fault: none, refused, blackhole, slow (delay=), 500, 404,
        corrupt, truncated; ``paths=[...]`` limits it to paths starting with one of them."""
        self.control("POST", "/fault", {"mode": mode, **params})

    def stats(self) -> dict:
        """{"connections": n, "requests": [[method, decoded path], ...]} since the last reset."""
        return self.control("GET", "/stats")

    def reset(self) -> None:
        """Zero the connection count and forget the requests seen.

        Changes stay: a test that called ``change`` cleans up with ``restore``.
        """
        self.control("POST", "/reset")

    def change(self, name: str) -> dict:
        """Publish a new latest version of ``name`` upstream, with a tarball no client has fetched.

        The version is the latest's patch + 1 (or higher, if taken); its tarball is the latest's
        with package.json's version rewritten, served from memory. The document's latest tag,
        time, ETag and Last-Modified move. Returns {"name", "version", "tarball" (the path on the
        fake), "shasum", "integrity", "modified" (the new time.modified)}.
        """
        self.changed.add(name)
        return self.control("POST", "/change", {"name": name})

    def restore(self, name: str) -> dict:
        """Drop every change made to ``name``, serving its recorded document again; {"name", "latest"}."""
        self.changed.discard(name)
        return self.control("POST", "/restore", {"name": name})

    def feed(self, mode: str | None = None, record: list[str] | None = None, reset: bool = False) -> dict:
        """Steer the changes feed at /_changes (tests/fake_changes.py); {"mode", "seq", "pages"}."""
        body: dict[str, Any] = {"record": record or [], "reset": reset}
        if mode is not None:
            body["mode"] = mode
        return self.control("POST", "/changes", body)

    def healthy(self) -> FakeUpstream:
        """Back to normal for the next test: no fault, zeroed counters, every change undone, a feed that works."""
        self.fault("none")
        self.feed("normal", reset=True)
        self.reset()
        for name in list(self.changed):
            self.restore(name)
        return self

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        stop_process(self.process)
        self.process.stdout.close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
