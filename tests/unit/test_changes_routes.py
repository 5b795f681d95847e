"""GET /-/nopard/changes in-process: what is listed, in which order, to whom; bad input; the history kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from nopard.catalog import changes as changelog
from nopard.domain import changes
from nopard.storage.fs import FilesystemStorage
from tests.support import publish_body
from tests.unit.route_harness import OPERATOR_TOKEN, InProcess, build
from tests.unit.test_routes_search import RULES  # secret-* readable by alice only


async def publish(app: InProcess, token: str, name: str, version: str = "1.0.0") -> None:
    """Publish ``name@version``."""
    answer = await app.call("PUT", f"/{name}", publish_body(name, version), token=token)
    assert answer.status == 201, answer.body


async def feed(app: InProcess, query: str, token: str | None = None, **headers: str) -> dict:
    """The feed's answer (200) to ``?query``."""
    answer = await app.call("GET", f"/-/nopard/changes?{query}", token=token, **headers)
    assert answer.status == 200, answer.body
    return answer.json()


def listed(page: dict) -> list[tuple[int, str, str]]:
    """(seq, id, kind) of each result."""
    return [(result["seq"], result["id"], result["kind"]) for result in page["results"]]


@pytest_twisted.ensureDeferred
async def test_changes_are_listed_in_order_with_what_they_did(tmp_path: Path) -> None:
    """Publish, a second version, a dist-tag, a whole unpublish: numbered 1.. in the order made,
    each with its kind, the unpublish marked deleted; since and limit page through them."""
    app = build(tmp_path)
    token = await app.user("alice")
    await publish(app, token, "demo")
    await publish(app, token, "other")
    await publish(app, token, "demo", "1.1.0")
    assert (await app.call("PUT", "/-/package/demo/dist-tags/beta", "1.0.0", token=token)).status == 200
    rev = (await app.call("GET", "/other")).json()["_rev"]
    assert (await app.call("DELETE", f"/other/-rev/{rev}", token=token)).status == 200
    page = await feed(app, "since=0")
    assert listed(page) == [(1, "demo", "publish"), (2, "other", "publish"), (3, "demo", "publish"),
                            (4, "demo", "dist-tag"), (5, "other", "unpublish")]
    assert page["last_seq"] == 5 and page["results"][4]["deleted"] is True
    assert "deleted" not in page["results"][0] and page["results"][0]["changes"][0]["rev"].startswith("1-")
    assert listed(await feed(app, "since=3&limit=1")) == [(4, "demo", "dist-tag")]
    assert (await feed(app, "since=2&limit=2"))["last_seq"] == 4
    assert await feed(app, "since=now") == {"results": [], "last_seq": 5}
    assert await feed(app, "since=5") == {"results": [], "last_seq": 5}
    assert await feed(app, "since=99") == {"results": [], "last_seq": 5}  # past the end: where it really is


@pytest_twisted.ensureDeferred
async def test_a_hidden_package_never_appears(tmp_path: Path) -> None:
    """secret-* is alice's alone: anonymous and bob never see its changes (last_seq still moves past
    them, telling nothing), alice and the operator token do."""
    app = build(tmp_path, rules=RULES)
    alice, bob = await app.user("alice"), await app.user("bob")
    await publish(app, alice, "secret-plans")
    await publish(app, bob, "public-thing")
    await publish(app, alice, "secret-plans", "1.0.1")
    for token in (None, bob):
        page = await feed(app, "since=0", token)
        assert listed(page) == [(2, "public-thing", "publish")] and page["last_seq"] == 3
        assert "secret" not in str(page)
        assert await feed(app, "since=2", token) == {"results": [], "last_seq": 3}
    assert [r["id"] for r in (await feed(app, "since=0", alice))["results"]] == ["secret-plans", "public-thing",
                                                                                  "secret-plans"]
    operator = await feed(app, "since=0", X_Nopard_Operator_Token=OPERATOR_TOKEN)
    assert len(operator["results"]) == 3


@pytest.mark.parametrize("query", ["since=garbage", "since=-1", "since=1.5", "since=" + "9" * 19, "since=%00",
                                   "limit=0", "limit=1001", "limit=abc", "limit=-5", "limit=" + "1" * 30,
                                   "since=0&limit=", "since=%E2%91%A0"])
@pytest_twisted.ensureDeferred
async def test_bad_since_or_limit_is_a_400_saying_why(tmp_path: Path, query: str) -> None:
    """since must be a sequence or now, limit 1 to 1000: otherwise 400 JSON naming the parameter, nothing read."""
    app = build(tmp_path)
    answer = await app.call("GET", f"/-/nopard/changes?{query}")
    if query == "since=0&limit=":  # an empty limit is the default one
        assert answer.status == 200
        return
    assert answer.status == 400, answer.body
    wrong = query.split("=", 1)[0] if "&" not in query else "limit"
    assert wrong in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_thousand_is_the_largest_page(tmp_path: Path) -> None:
    """limit=1000 is allowed; the default page holds 100."""
    app = build(tmp_path)
    assert (await app.call("GET", "/-/nopard/changes?limit=1000")).status == 200
    assert changes.DEFAULT_LIMIT == 100


@pytest_twisted.ensureDeferred
async def test_segments_keep_the_order_and_old_history_answers_410(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With segments of 3 changes and 2 kept: 8 publishes span three segments, numbered in order
    across them; a page crossing a segment boundary is whole; since=0 is older than what is kept: 410."""
    monkeypatch.setattr(changelog, "SEGMENT", 3)
    monkeypatch.setattr(changelog, "KEEP_SEGMENTS", 2)
    app = build(tmp_path)
    token = await app.user("alice")
    for index in range(8):
        await publish(app, token, f"pkg-{index}")
    page = await feed(app, "since=3&limit=1000")
    assert [(seq, name) for seq, name, _ in listed(page)] == [(4 + i, f"pkg-{3 + i}") for i in range(5)]
    assert listed(await feed(app, "since=5&limit=2")) == [(6, "pkg-5", "publish"), (7, "pkg-6", "publish")]
    assert (await feed(app, "since=now"))["last_seq"] == 8
    gone = await app.call("GET", "/-/nopard/changes?since=0")
    assert gone.status == 410 and "since=now" in gone.json()["error"]


@pytest.mark.parametrize(("before", "after", "kind"), [
    (None, {"versions": {"1.0.0": {}}}, changes.PUBLISH),
    ({"versions": {"1.0.0": {}, "2.0.0": {}}}, {"versions": {"1.0.0": {}}}, changes.UNPUBLISH),
    ({"versions": {"1.0.0": {}}, "dist-tags": {"latest": "1.0.0"}},
     {"versions": {"1.0.0": {}}, "dist-tags": {"latest": "1.0.0", "beta": "1.0.0"}}, changes.DIST_TAG),
    ({"versions": {"1.0.0": {}}}, {"versions": {"1.0.0": {"deprecated": "use x"}}}, changes.DEPRECATE),
    ({"versions": {"1.0.0": {}}, "users": {}}, {"versions": {"1.0.0": {}}, "users": {"bob": True}}, changes.CHANGE),
])
def test_what_a_change_did(before: dict | None, after: dict, kind: str) -> None:
    """The kind of a change, judged on the document before and after."""
    assert changes.kind_of(before, after) == kind


@pytest.mark.parametrize(("body", "since", "problem"), [
    (None, 0, "larger than allowed"),
    (b'{"results": [', 0, "not JSON"),
    (b'{"last_seq": 3}', 0, "no results"),
    (b'{"results": [{"seq": 2, "id": "a"}, {"seq": 1, "id": "b"}], "last_seq": 2}', 0, "does not follow"),
    (b'{"results": [{"seq": 4, "id": "a"}], "last_seq": 4}', 5, "does not follow"),
    (b'{"results": [{"id": "a"}], "last_seq": 4}', 0, "no sequence"),
    (b'{"results": [], "last_seq": 2}', 5, "last_seq"),
    (b'{"results": [{"seq": true, "id": "a"}]}', 0, "no sequence"),
])
def test_a_page_that_cannot_be_trusted_says_why(body: bytes | None, since: int, problem: str) -> None:
    """Every way a followed page is refused."""
    page = changes.read_page(body, since, 10)
    assert page.problem is not None and problem in page.problem


def test_a_page_of_opaque_sequences_names_each_valid_package_once() -> None:
    """CouchDB 2's sequences ("N-opaque") are compared by their number and passed back as given; a name
    that is no package (a design document) is skipped; a name changed twice is listed once, at its last."""
    body = (b'{"results": [{"seq": "3-g1AA", "id": "a"}, {"seq": "4-g1AB", "id": "_design/app"},'
            b' {"seq": "5-g1AC", "id": "b"}, {"seq": "6-g1AD", "id": "a"}], "last_seq": "6-g1AD"}')
    page = changes.read_page(body, "2-g1ZZ", 10)
    assert page.problem is None and page.names == ["b", "a"] and page.last_seq == "6-g1AD" and page.results == 4


@pytest_twisted.ensureDeferred
async def test_changes_recorded_at_once_share_swaps_and_keep_their_numbers(tmp_path: Path) -> None:
    """Fifty changes recorded at once (an install fetching documents): numbered 1 to 50 in the order
    recorded, written in far fewer compare-and-swaps than changes; segments of 20 make them span three."""
    swaps: list[str] = []

    class Counting(FilesystemStorage):
        async def replace(self, key: str, data: bytes, version: str | None) -> bool:
            swaps.append(key)
            return await super().replace(key, data, version)

        async def create(self, key: str, data: bytes) -> bool:
            swaps.append(key)
            return await super().create(key, data)

    log = changelog.ChangeLog(Counting(str(tmp_path), deferToThread), lambda: 1_800_000_000.0, Logger())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(changelog, "SEGMENT", 20)
        numbers = await gatherResults([Deferred.fromCoroutine(log.record(f"pkg-{i}", changes.REFRESH))
                                       for i in range(50)])
        page = await log.page(0, 1000, lambda name: True)
    assert numbers == list(range(1, 51))
    assert [(r["seq"], r["id"]) for r in page["results"]] == [(i + 1, f"pkg-{i}") for i in range(50)]
    assert len([key for key in swaps if "/log/" in key]) < 10, swaps
