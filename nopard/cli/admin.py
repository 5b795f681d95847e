"""nopard-admin: operator commands, run on the registry's machine.

These talk to the running nopard over HTTP (it does the work with its own
upstream client, caches and locks; --registry URL, default from
NOPARD_HOSTNAME/NOPARD_PORT), sending the operator token nopard writes at start
(--token-file, default NOPARD_ADMIN_TOKEN_FILE or <NOPARD_REGISTRY_PATH>/.nopard-admin-token,
readable by root and the user nopard runs as):

  nopard-admin sync                  each sync job's last run and the next one
  nopard-admin sync --now [--job J]  run the sync jobs (or job J: refresh, backfill, advisories, evict) now
  nopard-admin prefetch FILE...      fetch what lockfiles name, so they install offline
  nopard-admin block add 'NAME@RANGE' --reason TEXT   withhold those versions everywhere at once
  nopard-admin block list | block remove 'NAME@RANGE'|ID

These work on the registry directory itself, with nopard running or not
(NOPARD_REGISTRY_PATH and NOPARD_HTPASSWD as the daemon reads them, or
--registry-path DIR; keys, fsck, gc, import and export on the store the daemon
opens: with NOPARD_STORAGE=s3 the bucket); every write is atomic:

  nopard-admin user add NAME [--email E] [--password-stdin]   add a user (password asked twice)
  nopard-admin user passwd NAME [--password-stdin]            set a user's password
  nopard-admin user remove NAME                               remove a user and revoke their tokens
  nopard-admin user reset-2fa NAME                            turn off a user's two-factor authentication
  nopard-admin user list                                      users, emails, token counts
  nopard-admin token list [--user NAME]                       tokens: key, user, created, read-only
  nopard-admin token revoke KEY                               revoke the token with that key
  nopard-admin keys list             nopard's signing keys: keyid, created, current or expired
  nopard-admin keys rotate           expire the current signing key now; sign with a new one
  nopard-admin fsck                  verify every stored tarball; quarantine mismatches; report
                                     orphans, missing tarballs, leftover temp files, bad documents
  nopard-admin gc [--dry-run]        remove what fsck counts as garbage (orphans, temp files,
                                     the quarantine)
  nopard-admin import FROM [--htpasswd FILE]
                                     import a nopard export, a Verdaccio/sinopia storage folder
                                     or a nopar registry: packages, tarballs, tags, users
  nopard-admin export TO             write every key of the store and the users to a new folder,
                                     for import into any store
  nopard-admin advisories import PATH
                                     import OSV records (a .json file, a directory of them, or
                                     a zip such as OSV's npm all.zip): npm audit answers from them

Exit status: 0 all well; 1 something failed or was found (listed); 2 usage
error, nopard unreachable, or a registry, user, token or folder that is not there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from nopard.cli.accounts import (
    token_list,
    token_revoke,
    user_add,
    user_list,
    user_passwd,
    user_remove,
    user_reset_2fa,
)
from nopard.cli.advisories import advisories_import
from nopard.cli.announce import tell_instances
from nopard.cli.blocks import add_block_commands
from nopard.cli.registry import AdminError, settings_and_store


def default_registry(environ: dict[str, str] = os.environ) -> str:  # type: ignore[assignment]
    """The local nopard's URL, from the same NOPARD_HOSTNAME/NOPARD_PORT settings it reads."""
    host = environ.get("NOPARD_HOSTNAME", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{environ.get('NOPARD_PORT', '5984')}"


def operator_token(options: argparse.Namespace, required: bool) -> str | None:
    """The operator token nopard wrote at start (--token-file, else NOPARD_ADMIN_TOKEN_FILE, else
    <NOPARD_REGISTRY_PATH>/.nopard-admin-token); None when not ``required`` and it cannot be read."""
    from nopard.auth.operator import TokenFileError, read_token_file
    from nopard.settings.config import ConfigError, load_settings

    path = options.token_file
    if path is None:
        try:
            path = load_settings({}, os.environ).admin_token_path
        except ConfigError as error:
            raise AdminError(str(error)) from None
    try:
        return read_token_file(path)
    except TokenFileError as error:
        if required:
            raise AdminError(f"{error}; or use --token-file FILE") from None
        return None


def call(registry: str, method: str, path: str, body: Any = None, timeout: float = 3600,
         token: str | None = None) -> Any:
    """One JSON request to nopard, with the operator token when given."""
    from nopard.auth.operator import OPERATOR_HEADER

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({OPERATOR_HEADER: token} if token else {})}
    request = urllib.request.Request(registry.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", error.reason)
        except ValueError:
            message = error.reason
        raise AdminError(f"nopard answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise AdminError(f"cannot reach nopard at {registry}: {getattr(error, 'reason', error)}") from None


def print_report(report: dict[str, Any]) -> bool:
    """Print one job report; True if it had no failures."""
    if report.get("skipped"):
        print(f"{report['job']}: skipped ({report['skipped']})")
        return True
    print(f"{report['job']}: checked {report['checked']}, changed {report['changed']}, "
          f"tarballs {report['tarballs']} ({report['bytes']} bytes), failures {report['failure_count']}")
    for failure in report["failures"]:
        print(f"  failed {failure['package']}: {failure['reason']}")
    if report["failure_count"] > len(report["failures"]):
        print(f"  ... and {report['failure_count'] - len(report['failures'])} more")
    return not report["failure_count"]


def sync(options: argparse.Namespace) -> int:
    """Show the sync jobs, or run them now."""
    if not options.now:
        # With the token (when this user can read it) the reports name every package.
        status = call(options.registry, "GET", "/-/nopard/sync", token=operator_token(options, required=False))
        print(f"interval {status['interval']} s, next run {status['next_run'] or 'not scheduled'}")
        for job, report in status["jobs"].items():
            if report is None:
                print(f"{job}: never ran")
            else:
                print(f"{job}: last run {report['started']} .. {report['ended'] or 'running'}")
                print_report(report)
        return 0
    reports = call(options.registry, "POST", "/-/nopard/sync", {"job": options.job},
                   token=operator_token(options, required=True))["reports"]
    return 0 if all([print_report(report) for report in reports]) else 1


def prefetch(options: argparse.Namespace) -> int:
    """Read lockfiles and have nopard fetch everything they name."""
    from nopard.domain.lockfiles import LockfileError, read_lockfile

    packages: set[tuple[str, str]] = set()
    for path in options.files:
        try:
            locked = read_lockfile(path)
        except (LockfileError, OSError) as error:
            raise AdminError(str(error)) from None
        print(f"{path}: {len(locked)} packages")
        packages.update((entry.name, entry.version) for entry in locked)
    report = call(options.registry, "POST", "/-/nopard/prefetch", {"packages": sorted(map(list, packages))},
                  token=operator_token(options, required=True))
    return 0 if print_report(report) else 1


# Commands on the registry directory ------------------------------------------------------

def fsck(options: argparse.Namespace) -> int:
    """Check the store; exit 1 when anything was found."""
    from nopard.cli.announce import ChangedPackages
    from nopard.cli.maintenance import run_now, scan

    settings, store = settings_and_store(options)
    storage = ChangedPackages(store)  # a tarball quarantined is gone: the instances are told
    report = run_now(scan(storage, settings.htpasswd_path, settle=options.settle))
    tell_instances(settings, storage.names)
    for finding in report.findings:
        print(finding.line())
    print(report.summary())
    return 1 if report.findings else 0


def gc(options: argparse.Namespace) -> int:
    """Remove what fsck counts as garbage."""
    from nopard.cli.announce import ChangedPackages
    from nopard.cli.maintenance import collect, run_now, scan

    settings, store = settings_and_store(options)
    storage = ChangedPackages(store)
    report = run_now(scan(storage, settings.htpasswd_path, quarantine=not options.dry_run, settle=options.settle))
    removed = run_now(collect(storage, report, dry_run=options.dry_run))
    tell_instances(settings, storage.names)
    verb = "would remove" if options.dry_run else "removed"
    for finding in removed:
        print(f"{verb} {finding.path} ({finding.kind}, {finding.size} bytes)")
    size = sum(finding.size for finding in removed)
    left = [finding for finding in report.findings if not finding.garbage]
    print(f"gc: {verb} {len(removed)} files ({size} bytes)"
          + (f"; {len(left)} problems gc cannot fix (nopard-admin fsck lists them)" if left else ""))
    return 0


def import_registry(options: argparse.Namespace) -> int:
    """Import another registry's packages and users into the store."""
    from nopard.cli.accounts import open_users
    from nopard.cli.maintenance import run_now
    from nopard.cli.sources import SourceError, detect_source
    from nopard.cli.transfer import import_source

    try:
        source = detect_source(options.source, options.htpasswd)
    except SourceError as error:
        raise AdminError(str(error)) from None
    from nopard.cli.announce import ChangedPackages

    settings, store = settings_and_store(options, create=True)
    storage = ChangedPackages(store)
    spool = settings.registry_path if settings.storage != "s3" else None  # tarballs linked in, not copied
    users = open_users(settings, store)[0]
    report = run_now(import_source(source, storage, users, print, spool))
    tell_instances(settings, storage.names, users)
    print(f"import: packages {report.local} local, {report.mirrored} mirrored, {report.unchanged} unchanged; "
          f"versions {report.versions}; users {report.users}; "
          + (f"{report.problems} things left out (listed)" if report.problems else "nothing left out"))
    return 1 if report.problems else 0


def export_registry(options: argparse.Namespace) -> int:
    """Write every key of the store (but per-instance state) and the htpasswd file to a new folder."""
    from nopard.cli.accounts import open_users
    from nopard.cli.export import check_export_target
    from nopard.cli.export import export_registry as export
    from nopard.cli.maintenance import open_storage, run_now
    from nopard.cli.sources import SourceError

    settings, storage = settings_and_store(options)
    try:
        check_export_target(options.target)
    except SourceError as error:
        raise AdminError(str(error)) from None
    os.makedirs(options.target, exist_ok=True)
    report = run_now(export(storage, open_users(settings, storage)[0], open_storage(options.target), print))
    other = "".join(f", {kind} {count}" for kind, count in sorted(report.other.items()))
    skipped = ", ".join(f"{kind} {count}" for kind, count in report.not_exported.items())
    print(f"export: packages {report.local}, versions {report.versions}, tarballs {report.tarballs}, "
          f"unpublished {report.unpublished}, users {report.users}, profiles {report.profiles}, "
          f"mirrored {report.mirrored}{other} to {os.path.abspath(options.target)}"
          + (f"; not exported: {skipped}" if skipped else "")
          + (f"; {report.problems} things left out (listed)" if report.problems else ""))
    if report.left_out:
        lost = ", ".join(f"{count} {kind}" for kind, count in report.left_out.items())
        print(f"nopard-admin: export INCOMPLETE: the store holds more than was written ({lost}); "
              "nopard-admin fsck lists what it can", file=sys.stderr)
        return 1
    return 1 if report.problems else 0


def signing_keys(options: argparse.Namespace) -> Any:
    """The signing keys in the store NOPARD_STORAGE names (a registry directory, or the S3 bucket)."""
    from nopard.local.signing import SigningKeys

    return SigningKeys(settings_and_store(options)[1], time.time)


def keys_list(options: argparse.Namespace) -> int:
    """Print nopard's signing keys (public parts), the current one last."""
    from nopard.cli.maintenance import run_now

    ring = run_now(signing_keys(options).ring())
    for key in ring:
        state = f"expires {key.expires}" if key.expires else "current"
        print(f"{key.keyid}  created {key.created}  {state}")
    return 0


def keys_rotate(options: argparse.Namespace) -> int:
    """Expire the current signing key now and make a new one for the next publishes."""
    from nopard.cli.maintenance import run_now

    old, new = run_now(signing_keys(options).rotate())
    print(f"rotated: {old.keyid} expires {old.expires} (still verifies versions published before); "
          f"new versions are signed with {new.keyid}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="nopard-admin", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--registry", default=default_registry(),
                     help="the nopard to talk to (default: from NOPARD_HOSTNAME/NOPARD_PORT: %(default)s)")
    top.add_argument("--token-file", metavar="FILE",
                     help="the operator token nopard writes at start, for sync and prefetch (default: "
                     "NOPARD_ADMIN_TOKEN_FILE, else <NOPARD_REGISTRY_PATH>/.nopard-admin-token)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sync_command = commands.add_parser("sync", help="show or run the sync jobs")
    sync_command.add_argument("--now", action="store_true", help="run now and print the summary")
    sync_command.add_argument("--job", choices=("refresh", "backfill", "advisories", "evict"), help="only this job")
    sync_command.set_defaults(run=sync)
    prefetch_command = commands.add_parser("prefetch", help="fetch everything lockfiles name")
    prefetch_command.add_argument("files", nargs="+", metavar="FILE",
                                  help="package-lock.json, npm-shrinkwrap.json, yarn.lock or pnpm-lock.yaml")
    prefetch_command.set_defaults(run=prefetch)
    add_block_commands(commands)

    local = argparse.ArgumentParser(add_help=False)
    local.add_argument("--registry-path", metavar="DIR",
                       help="the registry directory (default: NOPARD_REGISTRY_PATH, else ./registry)")

    def leaf(group: Any, name: str, run: Any, help: str, description: str | None = None) -> argparse.ArgumentParser:
        command = group.add_parser(name, parents=[local], help=help, description=description or help)
        command.set_defaults(run=run)
        return command

    user = commands.add_parser("user", help="add, change, remove and list users (the htpasswd file)",
                               description="Users: the htpasswd file (NOPARD_HTPASSWD, else "
                               "<registry>/htpasswd) and their users/<name>.json profiles.")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = leaf(user_commands, "add", user_add, "add a user")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--email", help="their email address (npm shows it as the maintainer's)")
    passwd = leaf(user_commands, "passwd", user_passwd, "set a user's password")
    passwd.add_argument("name", metavar="NAME")
    for command in (add, passwd):
        command.add_argument("--password-stdin", action="store_true",
                             help="read the password from the first line of stdin instead of asking twice")
    remove = leaf(user_commands, "remove", user_remove, "remove a user and revoke their tokens")
    remove.add_argument("name", metavar="NAME")
    reset = leaf(user_commands, "reset-2fa", user_reset_2fa, "turn off a user's two-factor authentication",
                 "Turn off a user's two-factor authentication (their authenticator is lost and no recovery "
                 "code is left); they can turn it on again with npm profile enable-2fa.")
    reset.add_argument("name", metavar="NAME")
    leaf(user_commands, "list", user_list, "list users, their emails and token counts")

    token = commands.add_parser("token", help="list and revoke login tokens",
                                description="Tokens npm got at login, stored as tokens/<sha256>.json "
                                "records; the token itself is never stored or shown.")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tokens = leaf(token_commands, "list", token_list, "list tokens: key, user, created, read-only")
    tokens.add_argument("--user", metavar="NAME", help="only this user's tokens")
    revoke = leaf(token_commands, "revoke", token_revoke, "revoke a token by its key")
    revoke.add_argument("key", metavar="KEY", help="the key `token list` shows")

    signing = commands.add_parser("keys", help="list and rotate nopard's signing keys",
                                  description="The ECDSA P-256 keys nopard signs published versions with "
                                  "(signing/keys.json in the store: the registry directory, or the S3 "
                                  "bucket with NOPARD_STORAGE=s3 and the AWS_* variables; served at "
                                  "/-/npm/v1/keys without their private parts).")
    signing_commands = signing.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    leaf(signing_commands, "list", keys_list, "list the keys: keyid, created, current or when it expired")
    leaf(signing_commands, "rotate", keys_rotate, "expire the current key now and sign with a new one",
         "Expire the current key now (it stays listed, with `expires`, and keeps verifying versions "
         "published before) and make a new one that signs every version published from now on. "
         "Running instances use it from their next publish.")

    checking = leaf(commands, "fsck", fsck, "verify stored tarballs and report problems (exit 1 if any)",
                    "Verify every stored tarball against the checksums of the version naming it; move a "
                    "mismatch to .quarantine/ in the store (<registry>/.quarantine/, or under the S3 "
                    "prefix); report orphan tarballs, local documents naming missing tarballs, leftover "
                    "temporary files and unreadable documents. One line per finding, then a summary. "
                    "Works on the store NOPARD_STORAGE names, as the daemon opens it. "
                    "Exit status 0: all well; 1: something was found.")
    collect = leaf(commands, "gc", gc, "remove orphan tarballs, leftover temp files and the quarantine",
                   "Remove what fsck counts as garbage: orphan tarballs, leftover temporary files, "
                   "corrupt tarballs and the quarantine. Prints what it removed.")
    collect.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    from nopard.cli.maintenance import SETTLE_SECONDS

    for command in (checking, collect):
        command.add_argument("--settle", type=float, default=SETTLE_SECONDS, metavar="SECONDS",
                             help="count an unnamed tarball or temporary file as left over only when it is "
                             "older than this (default %(default)s: younger ones may be writes in "
                             "progress; 0 when no nopard runs on the store)")
    importing = leaf(commands, "import", import_registry, "import another registry's packages and users",
                     "Import a nopard export or registry, a Verdaccio/sinopia storage folder (or config "
                     "folder holding storage/) or a nopar registry folder: packages with every version "
                     "whose tarball verifies, dist-tags, times, maintainers, readmes, and htpasswd users. "
                     "Importing twice changes nothing. Exit status 0: all imported; 1: something was "
                     "left out (listed); 2: FROM is no registry.")
    importing.add_argument("source", metavar="FROM", help="the folder to import")
    importing.add_argument("--htpasswd", metavar="FILE",
                           help="the users' htpasswd file (default: FROM/htpasswd, or next to a "
                           "Verdaccio storage folder)")
    exporting = leaf(commands, "export", export_registry, "write the store and its users to a new folder",
                     "Write every key of the store (directory or bucket) to TO, in nopard's layout, for "
                     "`nopard-admin import TO` into any store: packages local and mirrored (tarballs "
                     "verified against their documents), users (htpasswd and profiles), token records, "
                     "settings overrides, signing keys, blocks, advisories. Left out: sync locks and "
                     "health probes. Exit status 1 when the store holds something not written (listed).")
    exporting.add_argument("target", metavar="TO", help="a new or empty folder")
    advisories = commands.add_parser("advisories", help="import OSV security advisories",
                                     description="Advisories in OSV's format, ecosystem npm, kept in the "
                                     "store: npm audit is answered from them (NOPARD_AUDIT).")
    advisory_commands = advisories.add_subparsers(dest="advisories_command", required=True, metavar="ACTION")
    importing_advisories = leaf(
        advisory_commands, "import", advisories_import, "import OSV records",
        "Import OSV records from a .json file, a directory of them or a zip (as OSV publishes "
        "all.zip per ecosystem). Records of other ecosystems are skipped and counted; a malformed "
        "record is reported with its file name and skipped. A record replaces the stored one of its "
        "id only when its `modified` is later. Exit status 0: all imported; 1: some were malformed.")
    importing_advisories.add_argument("path", metavar="PATH", help="a .json record, a directory or a zip")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of nopard-admin."""
    from nopard.domain.errors import NopardError

    options = parser().parse_args(argv)
    try:
        return options.run(options)
    except AdminError as error:
        print(f"nopard-admin: {error}", file=sys.stderr)
        return 2
    except NopardError as error:
        print(f"nopard-admin: {error.message}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"nopard-admin: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nopard-admin: interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
