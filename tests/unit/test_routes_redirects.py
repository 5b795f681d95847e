"""Tarball GETs answered without their bytes, in-process: X-Accel-Redirect to the stored file
for nginx (NOPARD_ACCEL_REDIRECT), a 302 to the bucket (NOPARD_TARBALL_REDIRECT); the access
rules decide first, exactly as when nopard sends the bytes itself.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
import pytest_twisted

from nopard.settings.config import ConfigError, load_settings
from nopard.storage import keys
from tests.support import tarball_bytes
from tests.unit.mirror_harness import FakeRegistry, packument, tarball
from tests.unit.route_harness import build
from tests.unit.test_routes_packages import HIDING_RULES, published

ACCEL = "/_nopard_store/"


class FakeObjects:
    """The S3 store's URL-making half: records what it was asked to presign."""

    def __init__(self) -> None:
        self.presigned: list[tuple[str, int]] = []

    async def presigned_get(self, key: str, seconds: int) -> str:
        self.presigned.append((key, seconds))
        return f"http://bucket.invalid/{key}?X-Amz-Expires={seconds}&X-Amz-Signature=s"

    def object_url(self, base: str, key: str) -> str:
        return f"{base}/{key}"


@pytest_twisted.ensureDeferred
async def test_accel_answer_names_the_stored_file_and_sends_no_bytes(tmp_path: Path) -> None:
    """A published tarball: empty body, X-Accel-Redirect to the file under the store's location,
    the same Content-Type and Cache-Control as when nopard sends it; the file is what was published."""
    app = build(tmp_path, accel_redirect=ACCEL)
    await published(app, "@acme/lib")
    answer = await app.call("GET", "/@acme%2flib/-/lib-1.0.0.tgz")
    assert answer.status == 200 and answer.body == b""
    location = answer.headers["x-accel-redirect"]
    assert location == ACCEL + "packages/@acme/lib/tarballs/lib-1.0.0.tgz"
    file = tmp_path / "registry" / unquote(location[len(ACCEL):])
    assert file.read_bytes() == tarball_bytes("@acme/lib", "1.0.0")
    assert answer.headers["content-type"] == "application/octet-stream"
    assert "immutable" in answer.headers["cache-control"]
    assert answer.headers["x-nopard-cache"] == "LOCAL"
    assert "x-accel-expires" not in answer.headers  # NOPARD_ACCEL_CACHE_TTL=0: nginx keeps nothing


@pytest_twisted.ensureDeferred
async def test_accel_cache_ttl_tells_nginx_how_long_a_yes_may_be_reused(tmp_path: Path) -> None:
    """With NOPARD_ACCEL_CACHE_TTL a redirect carries X-Accel-Expires; a refusal never does."""
    app = build(tmp_path, rules=HIDING_RULES, accel_redirect=ACCEL, accel_cache_ttl="30")
    alice = await app.user("alice")
    await published(app, "secret-thing", token=alice)
    allowed = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz", token=alice)
    assert allowed.headers["x-accel-expires"] == "30"
    hidden = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz")
    assert hidden.status == 404 and "x-accel-expires" not in hidden.headers


@pytest_twisted.ensureDeferred
async def test_accel_head_still_says_the_size(tmp_path: Path) -> None:
    """HEAD answers as without accel: the tarball's length, no redirect header."""
    app = build(tmp_path, accel_redirect=ACCEL)
    await published(app)
    answer = await app.call("HEAD", "/demo/-/demo-1.0.0.tgz")
    assert answer.status == 200 and "x-accel-redirect" not in answer.headers
    assert answer.headers["content-length"] == str(len(tarball_bytes("demo", "1.0.0")))


@pytest_twisted.ensureDeferred
async def test_accel_keeps_hidden_and_missing_tarballs_404_json(tmp_path: Path) -> None:
    """A tarball the caller may not read is the JSON 404 of a missing one, with no redirect;
    its reader gets the redirect."""
    app = build(tmp_path, rules=HIDING_RULES, accel_redirect=ACCEL)
    alice = await app.user("alice")
    await published(app, "secret-thing", token=alice)
    hidden = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz")
    missing = await app.call("GET", "/secret-other/-/secret-other-1.0.0.tgz")
    assert hidden.status == missing.status == 404
    assert "error" in hidden.json() and "x-accel-redirect" not in hidden.headers
    assert (await app.call("GET", "/demo/-/demo-9.9.9.tgz")).status == 404
    allowed = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz", token=alice)
    assert allowed.headers["x-accel-redirect"].endswith("/secret-thing/tarballs/secret-thing-1.0.0.tgz")


@pytest_twisted.ensureDeferred
async def test_accel_with_auth_read_needs_a_login(tmp_path: Path) -> None:
    """With NOPARD_AUTH_READ an anonymous tarball GET is 401 and names no file."""
    app = build(tmp_path, accel_redirect=ACCEL, auth_read="yes")
    token = await app.user("pat")
    await published(app, token=token)
    anonymous = await app.call("GET", "/demo/-/demo-1.0.0.tgz")
    assert anonymous.status == 401 and "x-accel-redirect" not in anonymous.headers
    assert "x-accel-redirect" in (await app.call("GET", "/demo/-/demo-1.0.0.tgz", token=token)).headers


@pytest_twisted.ensureDeferred
async def test_accel_mirrored_tarball_is_fetched_and_verified_first(tmp_path: Path) -> None:
    """A mirrored tarball not stored yet is fetched once and stored, then handed to nginx; the
    next GET is a HIT that asks the upstream nothing."""
    upstream = FakeRegistry(documents={"mirrored-pkg": packument("mirrored-pkg", "1.0.0")})
    app = build(tmp_path, upstream=upstream, accel_redirect=ACCEL)
    app.skip_idle_time = True
    first = await app.call("GET", "/mirrored-pkg/-/mirrored-pkg-1.0.0.tgz")
    assert first.status == 200 and first.body == b"", first.body
    assert first.headers["x-nopard-cache"] == "MISS"
    stored = keys.upstream_tarball_key("mirrored-pkg", "mirrored-pkg-1.0.0.tgz")
    assert first.headers["x-accel-redirect"] == ACCEL + stored
    assert (tmp_path / "registry" / stored).read_bytes() == tarball("mirrored-pkg", "1.0.0")
    asked = upstream.asked(".tgz")
    second = await app.call("GET", "/mirrored-pkg/-/mirrored-pkg-1.0.0.tgz")
    assert second.headers["x-nopard-cache"] == "HIT" and second.headers["x-accel-redirect"] == ACCEL + stored
    assert upstream.asked(".tgz") == asked == 1


@pytest_twisted.ensureDeferred
async def test_accel_refuses_a_corrupt_mirrored_tarball(tmp_path: Path) -> None:
    """An upstream tarball failing its integrity is not stored and not redirected to (502 JSON)."""
    upstream = FakeRegistry(documents={"mirrored-pkg": packument("mirrored-pkg", "1.0.0")}, fault="corrupt")
    app = build(tmp_path, upstream=upstream, accel_redirect=ACCEL)
    app.skip_idle_time = True
    answer = await app.call("GET", "/mirrored-pkg/-/mirrored-pkg-1.0.0.tgz")
    assert answer.status == 502 and "x-accel-redirect" not in answer.headers and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_presigned_redirect_is_a_302_that_no_cache_keeps(tmp_path: Path) -> None:
    """NOPARD_TARBALL_REDIRECT=presigned: a 302 to a URL presigned for the TTL, no body, and a
    Cache-Control that lets nobody keep the redirect past the URL's life; HEAD is unchanged."""
    objects = FakeObjects()
    app = build(tmp_path, objects=objects)
    app.settings.update(tarball_redirect="presigned", tarball_redirect_ttl=120)
    await published(app)
    answer = await app.call("GET", "/demo/-/demo-1.0.0.tgz")
    key = keys.tarball_key("demo", "demo-1.0.0.tgz")
    assert answer.status == 302 and answer.body == b""
    assert answer.headers["location"] == f"http://bucket.invalid/{key}?X-Amz-Expires=120&X-Amz-Signature=s"
    assert answer.headers["cache-control"] == "private, no-store"
    assert objects.presigned == [(key, 120)]
    head = await app.call("HEAD", "/demo/-/demo-1.0.0.tgz")
    assert head.status == 200 and "location" not in head.headers
    assert objects.presigned == [(key, 120)]


@pytest_twisted.ensureDeferred
async def test_base_url_redirect_and_hidden_tarballs(tmp_path: Path) -> None:
    """NOPARD_TARBALL_REDIRECT=<base>: a 302 to base + key; a hidden tarball is still the JSON 404
    and presigns nothing."""
    objects = FakeObjects()
    app = build(tmp_path, rules=HIDING_RULES, objects=objects)
    app.settings.update(tarball_redirect="http://cdn.invalid/npm")
    alice = await app.user("alice")
    await published(app, "secret-thing", token=alice)
    hidden = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz")
    assert hidden.status == 404 and "location" not in hidden.headers and "error" in hidden.json()
    allowed = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz", token=alice)
    assert allowed.status == 302
    assert allowed.headers["location"] == "http://cdn.invalid/npm/" + keys.tarball_key(
        "secret-thing", "secret-thing-1.0.0.tgz")


@pytest.mark.parametrize("env, message", [
    ({"NOPARD_ACCEL_REDIRECT": "/_nopard_store/", "NOPARD_STORAGE": "s3", "NOPARD_S3_BUCKET": "bucket"},
     "NOPARD_ACCEL_REDIRECT"),
    ({"NOPARD_TARBALL_REDIRECT": "presigned"}, "NOPARD_TARBALL_REDIRECT"),
    ({"NOPARD_ACCEL_REDIRECT": "_nopard_store"}, "NOPARD_ACCEL_REDIRECT"),
    ({"NOPARD_ACCEL_REDIRECT": "/../x/"}, "NOPARD_ACCEL_REDIRECT"),
    ({"NOPARD_TARBALL_REDIRECT": "ftp://cdn.invalid/"}, "NOPARD_TARBALL_REDIRECT"),
    ({"NOPARD_TARBALL_REDIRECT_TTL": "900000"}, "NOPARD_TARBALL_REDIRECT_TTL"),
])
def test_redirect_settings_that_cannot_work_stop_start_up(tmp_path: Path, env: dict, message: str) -> None:
    """A redirect the store cannot serve, or a malformed one, is refused at start naming the setting."""
    with pytest.raises(ConfigError, match=message):
        load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path), **env})


class Forwarding:
    """A store wrapper such as an index in front of the store: unknown attributes go to the inner one."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, attribute: str) -> object:
        return getattr(self.inner, attribute)


def test_redirects_follow_the_storage_setting_through_a_wrapped_store(tmp_path: Path) -> None:
    """nopard.service picks nginx or the bucket by NOPARD_STORAGE, so a wrapped store keeps accel on."""
    from nopard.service import tarball_redirects
    from nopard.settings.config import LiveSettings
    from nopard.storage.fs import FilesystemStorage
    from tests.unit.route_harness import run_now

    live = LiveSettings(load_settings({}, {"NOPARD_REGISTRY_PATH": str(tmp_path), "NOPARD_ACCEL_REDIRECT": ACCEL}))
    redirects = tarball_redirects(live, Forwarding(FilesystemStorage(str(tmp_path), run_now)))
    assert redirects.active


# nginx's auth_request (deploy/nginx/nopard.conf) asks with this header: only yes or no comes back.
QUESTION = {"X_Nopard_Decision": "1"}


@pytest_twisted.ensureDeferred
async def test_nginx_question_is_answered_yes_with_the_file_and_no_bytes(tmp_path: Path) -> None:
    """Asked by nginx, an authorized tarball is the same accel yes (the file, kept 30 s) as a plain GET."""
    app = build(tmp_path, accel_redirect=ACCEL, accel_cache_ttl="30")
    await published(app, "@acme/lib")
    answer = await app.call("GET", "/@acme/lib/-/lib-1.0.0.tgz", **QUESTION)
    assert answer.status == 200 and answer.body == b""
    assert answer.headers["x-accel-redirect"] == ACCEL + "packages/@acme/lib/tarballs/lib-1.0.0.tgz"
    assert answer.headers["x-accel-expires"] == "30" and "immutable" in answer.headers["cache-control"]


@pytest_twisted.ensureDeferred
async def test_nginx_question_without_accel_is_a_yes_naming_no_file(tmp_path: Path) -> None:
    """Without NOPARD_ACCEL_REDIRECT nopard answers nginx's question 204 with no file and no bytes
    (nginx then asks for the tarball itself, checked again), and lets nginx keep that yes a while."""
    app = build(tmp_path)
    await published(app)
    answer = await app.call("GET", "/demo/-/demo-1.0.0.tgz", **QUESTION)
    assert answer.status == 204 and answer.body == b"" and "x-accel-redirect" not in answer.headers
    assert int(answer.headers["x-accel-expires"]) > 0
    plain = await app.call("GET", "/demo/-/demo-1.0.0.tgz")
    assert plain.status == 200 and plain.body == tarball_bytes("demo", "1.0.0")


@pytest.mark.parametrize("accel", ["", ACCEL])
@pytest_twisted.ensureDeferred
async def test_nginx_question_about_a_refused_tarball_is_a_403_never_kept(tmp_path: Path, accel: str) -> None:
    """auth_request understands only 2xx, 401 and 403: a hidden or wrongly authenticated tarball
    (and with accel a missing one, looked up to name its file) is a 403 to nginx's question, with
    no file and nothing nginx may keep; the plain GET that follows gets nopard's real answer
    (404 JSON here). Without accel a missing tarball is not looked up: the GET that follows is."""
    app = build(tmp_path, rules=HIDING_RULES, accel_redirect=accel, accel_cache_ttl="30")
    alice = await app.user("alice")
    await published(app, "secret-thing", token=alice)
    refused = [("/secret-thing/-/secret-thing-1.0.0.tgz", None), ("/secret-thing/-/secret-thing-1.0.0.tgz", "npd_x")]
    if accel:
        refused.append(("/nothing/-/nothing-1.0.0.tgz", None))
    for path, token in refused:
        answer = await app.call("GET", path, token=token, **QUESTION)
        assert answer.status == 403, (path, answer.status, answer.body)
        assert "x-accel-redirect" not in answer.headers and "x-accel-expires" not in answer.headers
    real = await app.call("GET", "/secret-thing/-/secret-thing-1.0.0.tgz")
    assert real.status == 404 and "error" in real.json()
