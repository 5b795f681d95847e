"""Package names in-process: legacy names publish, serve and mirror; names npm never accepts are 400.

And a tarball path naming another package's file is a 404, like any tarball nopard does not hold.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted

from tests.support import publish_body, tarball_bytes
from tests.unit.mirror_harness import FakeRegistry, packument, tarball
from tests.unit.route_harness import build

# Names npm accepts for old packages (validate-npm-package-name's validForOldPackages; a leading
# "-" as npm's pending fix has it); the public registry would refuse them for new packages.
LEGACY_NAMES = ["JSONStream-x", "-x-y", "@scope/_x", "@con/x", "nul.x", "con", "it's(ok)!*", "@s/Upper"]
NEVER = [("_x", "underscore"), ("@x", "missing"), ("x@y", "'@'"), (".x", "period"), ("node_modules", "not a valid"),
         ("@ACME/lib", "lowercase")]


def path_of(name: str) -> str:
    """The document path npm uses for ``name`` (``@scope%2fname``)."""
    return "/" + quote(name, safe="@!'()*~")


@pytest.mark.parametrize("name", LEGACY_NAMES)
@pytest_twisted.ensureDeferred
async def test_a_legacy_name_is_published_served_and_its_tarball_installs(tmp_path: Path, name: str) -> None:
    """A name npm accepts for old packages publishes (201), and its document and tarball are served."""
    app = build(tmp_path)
    token = await app.user("pat")
    answer = await app.call("PUT", path_of(name), publish_body(name, "1.0.0"), token=token)
    assert answer.status == 201, answer.body
    document = await app.call("GET", path_of(name))
    assert document.status == 200 and document.json()["name"] == name
    url = document.json()["versions"]["1.0.0"]["dist"]["tarball"]
    served = await app.call("GET", url.removeprefix("http://127.0.0.1:5984"))
    assert served.status == 200 and served.body == tarball_bytes(name, "1.0.0")


@pytest.mark.parametrize("name", ["JSONStream-x", "-x-y", "@con/x", "nul.x"])
@pytest_twisted.ensureDeferred
async def test_a_legacy_name_is_mirrored_like_any_other(tmp_path: Path, name: str) -> None:
    """A legacy name the upstream holds is fetched, kept and served with its tarball."""
    upstream = FakeRegistry(documents={name: packument(name, "1.0.0")})
    app = build(tmp_path, upstream=upstream)
    document = await app.call("GET", path_of(name))
    assert document.status == 200, document.body
    url = document.json()["versions"]["1.0.0"]["dist"]["tarball"]
    served = await app.call("GET", url.removeprefix("http://127.0.0.1:5984"))
    assert served.status == 200 and served.body == tarball(name, "1.0.0")


@pytest.mark.parametrize(("name", "why"), NEVER)
@pytest_twisted.ensureDeferred
async def test_a_name_npm_never_accepts_is_a_400_saying_why(tmp_path: Path, name: str, why: str) -> None:
    """Reads and publishes of a name npm refuses even for old packages get a JSON 400 with the reason."""
    upstream = FakeRegistry(documents={name: packument(name, "1.0.0")})
    app = build(tmp_path, upstream=upstream)
    token = await app.user("pat")
    for answer in (await app.call("GET", path_of(name)),
                   await app.call("PUT", path_of(name), publish_body(name, "1.0.0"), token=token)):
        assert answer.status == 400, answer.body
        assert why in answer.json()["error"]
    assert upstream.asked(name) == 0  # never asked upstream for it


@pytest.mark.parametrize("path", ["/demo/-/other-1.0.0.tgz", "/demo/-/demo-1.0.tgz", "/demo/-/notes.txt"])
@pytest_twisted.ensureDeferred
async def test_a_tarball_path_of_another_package_is_a_404(tmp_path: Path, path: str) -> None:
    """A tarball file that is not one of the package's is missing (404 JSON), as npm expects, not malformed."""
    app = build(tmp_path)
    token = await app.user("pat")
    assert (await app.call("PUT", "/demo", publish_body("demo", "1.0.0"), token=token)).status == 201
    answer = await app.call("GET", path)
    assert answer.status == 404, answer.body
    assert answer.json()["error"].startswith("tarball not found")
    assert (await app.call("GET", "/demo/-/..%2fx")).status == 400  # still malformed: a path, not a file
