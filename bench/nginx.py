"""nginx for scripts/bench: the shipped deploy/nginx/nopard.conf plus one bench-only location.

The benchmark compares nopard's tarball answers with nginx sending the very same store file
itself, the limit of what any registry behind nginx can do. The shipped conf has no such
location (its store location is ``internal``: nothing bypasses nopard's access rules), so the
bench writes a copy of it with one extra, public location, ``DIRECT``, that serves the store's
files as they are, and runs that copy with tests/nginx_server.py's ``NginxServer``. A second
one, ``ONE_HOP``, proxies a tarball GET straight to nopard (as ``location /`` does), without
the shipped conf's question first (auth_request to nopard): what the question costs shows.
A third, ``STATIC``, maps nopard's tarball URLs (``/<name>/-/<file>``) onto the mirrored files
of the store, so that `npm ci` can install a lockfile straight from nginx: the fastest HTTP
server there is, sending the very files nopard sends (bench/npm.py's "static nginx" limit).
"""

from __future__ import annotations

from pathlib import Path

from tests.nginx_server import CONF, NginxServer

# The URL prefix of the bench-only location: DIRECT + a path under the store.
DIRECT = "/_bench_direct/"
# And of the second: ONE_HOP + a tarball path, proxied to nopard without the question first.
ONE_HOP = "/_bench_one_hop"
# And of the third: STATIC + a tarball path as nopard names it (<name>/-/<file>), sent by nginx
# from the store's mirrored copy.
STATIC = "/_bench_static/"


def direct_location(store: Path) -> str:
    """The bench-only server locations: every file under ``store`` served by nginx alone, with
    the same sendfile and open_file_cache settings as the shipped accel-redirect location; the
    mirrored tarballs under nopard's own tarball paths, likewise; and tarball GETs proxied to
    nopard in one hop, to tell what the question costs."""
    root = str(store).rstrip("/")
    return (
        "\n    # scripts/bench only: the store's files sent by nginx itself, no nopard involved.\n"
        f'    location ~ "^{DIRECT}(.+)$" {{\n'
        f"        alias {root}/$1;\n"
        "        sendfile on;\n"
        "        tcp_nopush on;\n"
        "        open_file_cache max=10000 inactive=60s;\n"
        "    }\n"
        "\n    # scripts/bench only: a tarball URL as nopard names it, sent from the store's mirrored\n"
        "    # copy by nginx alone (the lockfile of the bench's `npm ci` from static nginx names these).\n"
        # ^~: a prefix that wins over the shipped tarball regex (which would ask nopard first);
        # the regex nested in it is still matched.
        f"    location ^~ {STATIC} {{\n"
        f'        location ~ "^{STATIC}(.+)/-/([^/]+)$" {{\n'
        f"            alias {root}/packages/$1/upstream/tarballs/$2;\n"
        "            sendfile on;\n"
        "            tcp_nopush on;\n"
        "            open_file_cache max=10000 inactive=60s;\n"
        "        }\n"
        "        return 404;\n"
        "    }\n"
        "\n    # scripts/bench only: a tarball GET proxied straight to nopard, as `location /` does,\n"
        "    # without the question first (nopard's X-Accel-Redirect is still followed).\n"
        # ^~: a prefix that wins over the shipped tarball regex, which this path matches too.
        f"    location ^~ {ONE_HOP}/ {{\n"
        f"        rewrite ^{ONE_HOP}(/.+)$ $1 break;\n"
        "        proxy_pass http://nopard;\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        "        proxy_set_header X-Forwarded-Host $http_host;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_buffering off;\n"
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
