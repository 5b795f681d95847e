"""The declaration of every setting: its name, default, parser and help line.

nopard/settings/config.py builds Settings from these; the twistd options, the
environment variables (NOPARD_*) and the table in docs/configuration.md all
come from this one tuple. A new setting is declared here and given its field in
config.Settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nopard.settings.values import (
    parse_accel_prefix,
    parse_age,
    parse_audit,
    parse_backfill,
    parse_base_url,
    parse_bool,
    parse_bucket,
    parse_count,
    parse_forwarder_url,
    parse_host,
    parse_interval,
    parse_level,
    parse_listen,
    parse_log_format,
    parse_name_globs,
    parse_names,
    parse_optional_size,
    parse_optional_url,
    parse_port,
    parse_positive,
    parse_presigned_ttl,
    parse_redis_url,
    parse_s3_prefix,
    parse_scope_map,
    parse_scope_upstreams,
    parse_scopes,
    parse_seconds,
    parse_size,
    parse_storage,
    parse_tarball_redirect,
    parse_text,
    parse_users,
    parse_workers,
)


@dataclass(frozen=True)
class Setting:
    """One setting: its attribute name, default text, parser and help line."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "NOPARD_" + self.name.upper()

    @property
    def option(self) -> str:
        """The twistd option (without dashes) that sets it."""
        return self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("hostname", "127.0.0.1", parse_host, "Address to listen on."),
    Setting("port", "5984", parse_port, "TCP port to listen on."),
    Setting(
        "listen",
        "",
        parse_listen,
        "Where to listen instead, as Twisted endpoint strings separated by spaces (`--listen` may be "
        "repeated): `tcp:5984:interface=127.0.0.1`, `ssl:5985:privateKey=key.pem:certKey=cert.pem`, "
        "`unix:/run/nopard/nopard.sock`, `systemd:domain=INET:index=0` (empty: NOPARD_HOSTNAME and NOPARD_PORT).",
    ),
    Setting(
        "base_url",
        "",
        parse_base_url,
        "Public URL clients use (with any path prefix); empty: built from "
        "Host and X-Forwarded-Proto/X-Forwarded-Host.",
    ),
    Setting("registry_path", "registry", parse_text, "Directory of the registry's data."),
    Setting("storage", "fs", parse_storage, "Where data is stored: fs (NOPARD_REGISTRY_PATH) or s3."),
    Setting(
        "s3_bucket",
        "",
        parse_bucket,
        "S3 bucket of the data, with NOPARD_STORAGE=s3 (AWS_* variables configure boto3).",
    ),
    Setting("s3_prefix", "", parse_s3_prefix, "Object key prefix in the bucket, e.g. npm/registry (empty: none)."),
    Setting(
        "accel_redirect",
        "",
        parse_accel_prefix,
        "With NOPARD_STORAGE=fs behind nginx: an internal location such as /_nopard_store/ aliased to "
        "NOPARD_REGISTRY_PATH; an authorized tarball GET is answered with X-Accel-Redirect to the stored "
        "file, which nginx sends (empty: nopard sends it).",
    ),
    Setting(
        "accel_cache_ttl",
        "0",
        parse_count,
        "Seconds nginx may reuse nopard's yes to a tarball GET for the same URL and credentials "
        "(X-Accel-Expires, deploy/nginx/nopard.conf's decision cache); 0: nopard decides every request.",
    ),
    Setting(
        "tarball_redirect",
        "",
        parse_tarball_redirect,
        "With NOPARD_STORAGE=s3: `presigned` answers an authorized tarball GET with a 302 to a presigned "
        "GET of its object, a base URL (a CDN in front of the bucket) with a 302 to that URL + the "
        "object key (empty: nopard sends the bytes).",
    ),
    Setting(
        "tarball_redirect_ttl",
        "300",
        parse_presigned_ttl,
        "Seconds a presigned tarball URL stays valid (NOPARD_TARBALL_REDIRECT=presigned).",
    ),
    Setting(
        "redis_url",
        "",
        parse_redis_url,
        "Redis shared by several instances, redis://[:password@]host[:port][/db]; REDIS_URL works too "
        "(empty: none, one instance).",
    ),
    Setting(
        "lock_ttl",
        "10",
        parse_seconds,
        "Seconds a Redis lock outlives an instance that stopped renewing it (killed mid-publish or mid-fetch).",
    ),
    Setting("loglevel", "info", parse_level, "Lowest level logged: debug, info, warn, error."),
    Setting("log_format", "text", parse_log_format, "Log lines as text or json (one object a line)."),
    Setting("log_max_size", "10mb", parse_size, "NOPARD_LOGFILE rotates when it reaches this size."),
    Setting("log_backups", "5", parse_count, "Rotated logfiles kept (logfile.1 ... logfile.N)."),
    Setting(
        "logfile", "", parse_text, "Write nopard's log to this file (empty: twistd's log, stdout with -n)."
    ),
    Setting("run_path", "", parse_text, "Directory of the PID file when daemonized (empty: twistd's default)."),
    Setting("runas_user", "", parse_text, "User to drop privileges to once the port is bound (empty: stay)."),
    Setting("home", "", parse_text, "Working directory of the daemon (empty: where it is started)."),
    Setting("htpasswd", "", parse_text,
            "A local htpasswd file of users kept by hand (empty: the users are in the store, users/htpasswd)."),
    Setting(
        "admin_token_file",
        "",
        parse_text,
        "File of the operator token nopard-admin sends for sync and prefetch, made at start if absent, "
        "mode 0600 (empty: <registry_path>/.nopard-admin-token).",
    ),
    Setting(
        "max_users",
        "1",
        parse_count,
        "Registration stays open while fewer users exist; 0 disables it.",
    ),
    Setting(
        "admins",
        "",
        parse_users,
        "Users who may change settings and refresh packages, comma-separated (NOPARD_CONFIG's admins too).",
    ),
    Setting("auth_read", "no", parse_bool, "Reads need a logged-in user (yes/no)."),
    Setting("auth_write", "yes", parse_bool, "Writes need a logged-in user (yes/no)."),
    Setting(
        "login_attempts",
        "10",
        parse_positive,
        "Failed password checks per account from one client address, and per client address over all "
        "accounts, within NOPARD_LOGIN_WINDOW before further tries from that address get 429.",
    ),
    Setting(
        "login_window",
        "300",
        parse_seconds,
        "Seconds failed password checks are counted for (a sliding window).",
    ),
    Setting(
        "session_token_ttl",
        "604800",
        parse_seconds,
        "Seconds the token of a web login (npm login) lives (604800: a week); it is refused, and removed, once "
        "past (npm login again). Tokens from npm token create live as long as its --expires says.",
    ),
    Setting("always_https", "no", parse_bool, "Tarball URLs use https even behind plain http (yes/no)."),
    Setting("max_body_size", "100mb", parse_size, "Largest request body accepted (e.g. 100mb)."),
    Setting(
        "forwarder_url",
        "",
        parse_forwarder_url,
        "Upstream registry to mirror; `none`: a private registry only. Unset: the registry "
        "`npm config get registry` gives the user nopard runs as, read once at start (private only "
        "without npm, or when that is nopard itself).",
    ),
    Setting("auto_forward", "yes", parse_bool, "Fetch names unknown here from the upstream (yes/no)."),
    Setting("proxy_url", "", parse_optional_url, "HTTP proxy for upstream traffic (empty: none)."),
    Setting("ignore_cert", "no", parse_bool, "Do not verify the upstream's TLS certificate (yes/no)."),
    Setting("user_agent", "nopard", parse_text, "User-Agent sent upstream."),
    Setting("meta_ttl", "300", parse_seconds, "Seconds a mirrored document counts as fresh."),
    Setting("upstream_timeout", "30", parse_seconds, "Seconds an upstream request may take, at most."),
    Setting(
        "stale_deadline",
        "2",
        parse_seconds,
        "Seconds to wait for revalidating a stale document before serving it stale.",
    ),
    Setting("not_found_ttl", "60", parse_seconds, "Seconds an upstream 404 is remembered."),
    Setting(
        "mirror_write_delay",
        "0.5",
        parse_interval,
        "Seconds without a new fetch before the upstream copies fetched for clients are written (at most "
        "10 s late; at once when nopard shares its store); 0: each before its answer ends.",
    ),
    Setting(
        "unpublish_grace",
        "86400",
        parse_interval,
        "Seconds a wholly unpublished name stays reserved to its former maintainers and admins; 0: none.",
    ),
    Setting(
        "probe_interval",
        "10",
        parse_seconds,
        "While the upstream counts as down, seconds between two probes of it.",
    ),
    Setting(
        "private_scopes",
        "",
        parse_scopes,
        "Scopes never sent upstream, e.g. @acme,@acme-internal.",
    ),
    Setting(
        "merge_upstream",
        "",
        parse_names,
        "Local packages whose documents also list upstream versions (local wins).",
    ),
    Setting(
        "scope_upstreams",
        "",
        parse_scope_upstreams,
        "Other upstreams per scope: @corp=https://npm.corp.example/ (space-separated).",
    ),
    Setting(
        "scope_tokens",
        "",
        parse_scope_map,
        "Tokens for those upstreams: @corp=TOKEN (space-separated).",
    ),
    Setting(
        "sync_interval",
        "300",
        parse_interval,
        "Seconds between sync runs (refresh, then backfill); 0 turns the schedule off.",
    ),
    Setting("sync_concurrency", "8", parse_positive, "Packages a sync job works on at once."),
    Setting("sync_rate", "600", parse_positive, "Upstream requests per minute sync jobs may make, at most."),
    Setting(
        "backfill",
        "tags",
        parse_backfill,
        "Tarballs the sync fetches ahead: none, tags (dist-tag targets), recent:N, all.",
    ),
    Setting(
        "memory_cache_size",
        "128mb",
        parse_size,
        "Memory held by prepared package documents and small tarballs (a quarter at most), at most.",
    ),
    Setting(
        "config",
        "",
        parse_text,
        "TOML file of access rules: admins, groups, per-package access/publish/unpublish/proxy (empty: none).",
    ),
    Setting(
        "min_release_age",
        "off",
        parse_age,
        "Quarantine: mirrored versions younger than this by the upstream's time (e.g. 3d, 36h) are withheld "
        "from every answer until old enough; a version without a time counts as young (off: none).",
    ),
    Setting(
        "min_release_age_exclude",
        "",
        parse_name_globs,
        "Package names or globs never quarantined, e.g. @acme/* typescript (local packages never are).",
    ),
    Setting(
        "workers",
        "1",
        parse_workers,
        "Worker processes serving the same sockets and store, supervised (`auto`: one per CPU; 1: one "
        "process, no supervisor); without Redis they share state through the supervisor (docs/scaling.md).",
    ),
    Setting(
        "audit",
        "upstream",
        parse_audit,
        "Where npm audit answers come from: `upstream` (the stored advisories when it is down or fails), "
        "`local` (only the stored ones: nopard-admin advisories import, NOPARD_ADVISORIES_URL), "
        "`both` (merged, one entry per advisory id or alias).",
    ),
    Setting(
        "advisories_url",
        "",
        parse_optional_url,
        "A zip of OSV records as OSV publishes them per ecosystem (npm's all.zip, or a copy of it) the sync "
        "worker imports, each run, by conditional GET (empty: none; nopard-admin advisories import only).",
    ),
    Setting(
        "block_malware",
        "yes",
        parse_bool,
        "Advisories of malicious packages (OSV ids MAL-...) block the versions they name, with the id as the "
        "block's source and in its reason, when they are imported (yes/no).",
    ),
    Setting(
        "mirror_max_size",
        "off",
        parse_optional_size,
        "Keeps the tarballs and documents mirrored from the upstream under this size (e.g. 10gb): the eviction "
        "job removes the least recently used upstream tarballs, fetched again when next asked for; never "
        "local packages (off: no limit).",
    ),
    Setting(
        "mirror_evict_pinned",
        "no",
        parse_bool,
        "Whether eviction may also remove tarballs of versions a prefetched lockfile pinned "
        "(nopard-admin prefetch); no: they stay (yes/no).",
    ),
    Setting(
        "changes_url",
        "",
        parse_optional_url,
        "A CouchDB-style changes feed of the upstream (`_changes?since=&limit=`; another nopard's "
        "<url>/-/nopard/changes) the sync worker follows to refresh exactly the mirrored packages that "
        "changed, instead of revalidating every one each run (empty: none; docs/mirroring.md).",
    ),
)
