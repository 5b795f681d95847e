"""nginx for scripts/bench: the shipped deploy/nginx/nopard.conf plus one bench-only location.

The benchmark compares nopard's tarball answers with nginx sending the very same store file
itself, the limit of what any registry behind nginx can do. The shipped conf has no such
location (its store location is ``internal``: nothing bypasses nopard's access rules), so the
bench writes a copy of it with one extra, public location, ``DIRECT``, that serves the store's
files as they are, and runs that copy with tests/nginx_server.py's ``NginxServer``.
"""

from __future__ import annotations

from pathlib import Path

from tests.nginx_server import CONF, NginxServer

# The URL prefix of the bench-only location: DIRECT + a path under the store.
DIRECT = "/_bench_direct/"


def direct_location(store: Path) -> str:
    """The bench-only server location: every file under ``store`` served by nginx alone, with
    the same sendfile and open_file_cache settings as the shipped accel-redirect location."""
    root = str(store).rstrip("/")
    return (
        "\n    # scripts/bench only: the store's files sent by nginx itself, no nopard involved.\n"
        f'    location ~ "^{DIRECT}(.+)$" {{\n'
        f"        alias {root}/$1;\n"
        "        sendfile on;\n"
        "        tcp_nopush on;\n"
        "        open_file_cache max=10000 inactive=60s;\n"
        "    }\n"
    )


def bench_conf(conf_text: str, store: Path) -> str:
    """``conf_text`` (the shipped conf) with ``direct_location(store)`` added to its last server
    block, the public one (the file ends with that block's closing brace)."""
    body = conf_text.rstrip()
    if not body.endswith("}"):
        raise ValueError("the nginx conf does not end with a server block's closing brace")
    return body[:-1].rstrip("\n") + "\n" + direct_location(store) + "}\n"


def start_nginx(work: Path, instance_port: int, store: Path) -> NginxServer:
    """nginx in front of the nopard on ``instance_port`` (whose registry is ``store``), with the
    bench-only location; started, and the caller stops it."""
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nopard-bench.conf"
    conf.write_text(bench_conf(CONF.read_text(), store))
    return NginxServer([instance_port], conf_path=conf, store=store).start()
