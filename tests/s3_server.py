"""moto's standalone S3 server, started as a subprocess on a free 127.0.0.1 port.

A real S3 API over HTTP (not an in-process mock), so the S3 backend is tested
through botocore's whole stack, and a twistd process can use it too.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.polling import wait_for_start
from tests.support import free_port, stop_process

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """moto's S3 server (with S3's atomic writes: tests/moto_atomic.py) on a free port; a context
    manager that stops it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        """The URL to give AWS_ENDPOINT_URL."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables that point boto3 at this server, with its dummy credentials."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> MotoServer:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.moto_atomic", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,  # where `-m tests.moto_atomic` is found
        )
        wait_for_start(self.process, self._answers, "moto server", 30, lambda: "is moto[server] installed?", self.stop)
        return self

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        connection.request("GET", "/moto-api/")
        connection.getresponse().read()
        connection.close()
        return True

    def stop(self) -> None:
        """Stop the server."""
        stop_process(self.process)

    def client(self) -> Any:
        """A boto3 client for this server (for tests to look into the bucket); one per server, made
        at the first call (a new session and client load botocore's models again, ~0.5 s each)."""
        if self._client is None:
            import boto3

            self._client = boto3.session.Session(
                aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1",
            ).client("s3", endpoint_url=self.endpoint)
        return self._client

    def new_bucket(self) -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"nopard-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
