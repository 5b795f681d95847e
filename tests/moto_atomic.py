"""moto's standalone S3 server with S3's atomic writes, for tests/s3_server.py.

S3 applies a conditional PutObject or DeleteObject (If-Match, If-None-Match) atomically: of two
writers holding the same ETag, one wins and the other gets 412. moto's threaded server checks
the condition and stores the object in two steps, so two concurrent writers may both pass the
check and one update is lost (tests/unit/storage_contract.py's concurrent read-merge-replace
test failed that way under load). Here writes (PUT, POST, DELETE) run one at a time, as S3's
own ordering would have them; reads stay concurrent.

Run as ``python -m tests.moto_atomic -H 127.0.0.1 -p PORT``.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

_WRITES = frozenset({"PUT", "POST", "DELETE"})


class AtomicWrites:
    """A WSGI middleware running ``app``'s writes one at a time (answers consumed inside the lock)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _WRITES:
            return self._app(environ, start_response)
        with self._lock:
            return list(self._app(environ, start_response))  # a write's answer is small


def main() -> None:
    """Serve moto's S3 on the given host and port until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, AtomicWrites(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
