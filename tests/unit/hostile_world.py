"""The registry the hostile-route properties run against, and what they observe of it.

A *world* is a registry directory made once (users, tokens, local, scoped,
mirrored and hidden packages) and copied for every generated example, so each
example meets the same store and fresh in-memory state (login limiter, caches,
sessions, sync reports): a failure replays exactly while hypothesis shrinks it.

Two worlds differ only in the hidden packages: ``public`` lacks them and
``hidden`` is ``public`` plus alice's ``secret-pkg`` and ``@hidden/pkg`` (the access
rule lets only alice read them; both hold her mirrored copy of the hidden
``secret-mirror``). A caller other than alice must not be able to tell them apart.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest_twisted
from twisted.internet.defer import Deferred

from nopard.domain.errors import InvalidInput
from nopard.domain.names import parse_package_action, parse_package_path
from tests.support import Response, publish_body
from tests.unit.mirror_harness import FakeRegistry, packument
from tests.unit.route_harness import InProcess, build

PASSWORD = "secret-pw"
MARKER = "HIDDEN-MARKER-5c1e"  # in the hidden packages' descriptions and readmes: never shown to others
HIDDEN_NAMES = ("secret-pkg", "@hidden/pkg", "secret-mirror")
RULES = {
    "packages": [
        {"pattern": "secret-*", "access": ["alice"], "publish": ["alice"], "unpublish": ["alice"],
         "proxy": ["$all"]},
        {"pattern": "@hidden/*", "access": ["alice"], "publish": ["alice"], "unpublish": ["alice"],
         "proxy": ["$all"]},
        {"pattern": "**", "access": ["$all"], "publish": ["$authenticated"], "unpublish": ["$authenticated"],
         "proxy": ["$all"]},
    ]
}
LOCAL_PACKAGES = ("demo", "@scope/lib", "upstream", "@scope/upstream")
MIRRORED_PACKAGES = ("mirrored-pkg", "@ext/mirrored")  # the first mirrored into the store, the second cold
CALLERS = ("anonymous", "ordinary", "read-only", "token user")


def wait(work: Coroutine[Any, Any, Any]) -> Any:
    """Run ``work`` on the reactor (pytest-twisted's) and return its result, from a plain test."""
    return pytest_twisted.blockon(Deferred.fromCoroutine(work))


def fake_upstream() -> FakeRegistry:
    """The upstream every world mirrors from: two public packages and a hidden one."""
    return FakeRegistry(documents={
        "mirrored-pkg": packument("mirrored-pkg", "1.0.0"),
        "@ext/mirrored": packument("@ext/mirrored", "1.0.0", "2.0.0"),
        "secret-mirror": {**packument("secret-mirror", "1.0.0"), "description": MARKER},
    })


@dataclass
class World:
    """A registry directory to copy, and the credentials valid in it."""

    root: Path
    auth: dict[str, str | None] = field(default_factory=dict)  # caller -> Authorization header
    alice: str = ""  # alice's token: she may read the hidden packages

    def open(self, into: Path, upstream: FakeRegistry | None = None, **settings: Any) -> InProcess:
        """A fresh app over a copy of this world's store, in ``into``."""
        shutil.copytree(self.root / "registry", into / "registry", symlinks=True)
        app = build(into, rules=RULES, upstream=upstream or fake_upstream(), **settings)
        app.skip_idle_time = True  # sync and prefetch pace their requests by the clock
        return app


def make_worlds(base: Path) -> tuple[World, World]:
    """The ``public`` and ``hidden`` worlds under ``base`` (a few bcrypt hashes: done once per module)."""
    public = World(base / "public")
    app = build(public.root, rules=RULES, upstream=fake_upstream())
    tokens = {user: wait(app.user(user, PASSWORD)) for user in ("alice", "bob", "carol")}
    for name in LOCAL_PACKAGES:
        answer = wait(app.call("PUT", "/" + name.replace("/", "%2f"), publish_body(name, "1.0.0"),
                               token=tokens["bob"]))
        assert answer.status == 201, answer.body
    star = {"_id": "demo", "users": {"bob": True}}
    assert wait(app.call("PUT", "/demo", star, token=tokens["bob"])).status == 200
    readonly = wait(app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD, "readonly": True},
                             token=tokens["bob"]))
    created = wait(app.call("POST", "/-/npm/v1/tokens", {"password": PASSWORD}, token=tokens["carol"]))
    assert readonly.status == created.status == 200, (readonly.body, created.body)
    assert wait(app.call("GET", "/mirrored-pkg")).status == 200  # mirrored into the store
    public.auth = {"anonymous": None, "ordinary": f"Bearer {tokens['bob']}",
                   "read-only": f"Bearer {readonly.json()['token']}",
                   "token user": f"Bearer {created.json()['token']}"}
    public.alice = tokens["alice"]
    for path in ("/secret-mirror", "/secret-mirror/-/secret-mirror-1.0.0.tgz"):  # hidden, mirrored in both
        assert wait(app.call("GET", path, token=public.alice)).status == 200

    hidden = World(base / "hidden", dict(public.auth), public.alice)
    app = public.open(hidden.root)
    for name in HIDDEN_NAMES[:2]:
        body = publish_body(name, "1.0.0", description=MARKER, readme=MARKER)
        answer = wait(app.call("PUT", "/" + name.replace("/", "%2f"), body, token=hidden.alice))
        assert answer.status == 201, answer.body
    star = {"_id": "secret-pkg", "users": {"alice": True}}
    assert wait(app.call("PUT", "/secret-pkg", star, token=hidden.alice)).status == 200
    return public, hidden


def fresh_directory() -> Path:
    """A directory for one example (hypothesis runs many examples per test: no tmp_path each),
    in memory where there is a tmpfs: copying and removing a registry per example costs less."""
    memory = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="nopard-hostile-", dir=memory if memory.is_dir() else None))


# What a request changed in the store ---------------------------------------------


def snapshot(app: InProcess) -> dict[str, str]:
    """Every stored key with a hash of its bytes (the fs store's dot files, locks and temporaries, left out)."""
    root = Path(app.settings.current.registry_path)
    found = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changed_keys(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Keys added, removed or rewritten with other bytes."""
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


ACCOUNT_PREFIXES = ("/-/user/", "/-/whoami", "/-/npm/v1/tokens", "/-/npm/v1/user", "/-/v1/login", "/-/v1/done/",
                    "/-/web/login", "/-/web/logout")


def own_keys(method: str, path: str) -> Callable[[str], bool]:
    """Which keys a request to ``path`` may write when accepted: its package's, or its account's.

    Package routes write only under ``packages/<the package named>/``; account
    routes only users, tokens and the htpasswd file; the settings routes only the
    overrides; the sync and prefetch triggers only mirrored copies and job locks; the keys
    and attestations routes only the upstream's copies they keep for offline use.
    """
    route = path.split("?", 1)[0]
    if route.startswith(ACCOUNT_PREFIXES):
        return lambda key: key.startswith(("users/", "tokens/"))
    if route in ("/-/nopard/settings", "/-/web/settings"):
        return lambda key: key == "settings/overrides.json"
    if route in ("/-/nopard/sync", "/-/nopard/prefetch"):
        return lambda key: key.startswith("sync/") or (key.startswith("packages/") and "/upstream/" in key)
    if route == "/-/npm/v1/keys":  # the upstream's public keys, kept to be served offline
        return lambda key: key.startswith("signing/upstream-")
    if route.startswith("/-/npm/v1/attestations/"):  # a version's attestations, kept likewise
        return lambda key: key.startswith("packages/") and "/upstream/attestations/" in key
    name = package_named(route)
    if name is None:
        return lambda key: False
    if route.startswith("/-/web/package/"):
        return lambda key: key.startswith(f"packages/{name}/upstream/")
    return lambda key: key.startswith(f"packages/{name}/")


def package_named(route: str) -> str | None:
    """The package a request path names, parsed as the routes parse it (None: none)."""
    try:
        if route.startswith("/-/package/"):
            return parse_package_action(route).name
        if route.startswith("/-/web/package/"):
            rest = unquote(route[len("/-/web/package/"):])
            return rest.removesuffix("/refresh") or None
        if route.startswith("/-/"):
            return None
        return parse_package_path(route).name
    except (InvalidInput, UnicodeDecodeError):
        return None


# What an answer shows ------------------------------------------------------------


def leaked(answer: Response, sent: str) -> list[str]:
    """Hidden names or the hidden packages' marker in ``answer`` that the request did not name itself."""
    shown = (answer.body.decode("utf-8", "replace") + repr(answer.headers)).lower()
    asked = unquote(unquote(sent)).lower()
    found = [MARKER] if MARKER.lower() in shown else []
    return found + [name for name in HIDDEN_NAMES
                    if (name in shown or name.replace("/", "%2f") in shown) and name not in asked]
