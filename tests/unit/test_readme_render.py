"""Readmes rendered for the browser: Markdown kept, anything active removed."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nopard.web import readme
from nopard.web.readme import PAGE_WAIT_SECONDS, render_readme
from nopard.web.readme_renders import RETRY_SECONDS, ReadmeRenders
from nopard.web.readme_worker import ReadmeWorker, RenderTooSlow, serve
from tests.polling import poll_until_async
from tests.support import publish_body
from tests.unit.readme_fakes import HeldRenderer, InlineRenderer
from tests.unit.route_harness import InProcess, build

HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="  javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    '<div onmouseover="alert(1)">x</div>',
    "<svg onload=alert(1)>",
    "<iframe src=https://evil.example></iframe>",
    "<style>body{display:none}</style>",
    '<form action="https://evil.example"><input name=x></form>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    "<object data=x></object><embed src=x>",
    '<p style="background:url(javascript:alert(1))">x</p>',
    "![x](https://tracker.example/pixel.gif)",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_nothing_active_survives(text: str) -> None:
    html = render_readme(f"# Title\n\n{text}\n")
    assert not re.search(r"<(script|iframe|style|form|input|meta|object|embed|svg)\b", html, re.I)
    assert not re.search(r"\son\w+\s*=", html, re.I)
    assert not re.search(r"(href|src)\s*=\s*\"?\s*(javascript|data):", html, re.I)
    assert " style=" not in html and " src=" not in html
    assert "<h3>Title</h3>" in html


def test_markdown_is_rendered() -> None:
    html = render_readme(
        "# Name\n\n## Usage\n\nSome **bold**, `code` and a [link](https://docs.example/a).\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n```js\nconst x = '<b>';\n```\n"
    )
    assert "<h3>Name</h3>" in html and "<h4>Usage</h4>" in html
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert '<a href="https://docs.example/a" rel="nofollow noopener noreferrer">link</a>' in html
    assert "<table>" in html and "<td>1</td>" in html
    assert '<code class="language-js">const x = \'&lt;b&gt;\';' in html
    assert '<img alt="logo">' in render_readme("![logo](logo.png)")


# Budgets: each version rendered once, in a process of its own, within size and time --------


HOSTILE_TEXT = "<b>bold?</b> & ![" * 8


async def published_with_readme(app: InProcess, readme: str, name: str = "demo", version: str = "1.0.0",
                                token: str | None = None) -> str:
    """Publish ``name@version`` with ``readme``; the publisher's token."""
    token = token or await app.user("pat")
    body = publish_body(name, version)
    body["readme"] = body["versions"][version]["readme"] = readme
    answer = await app.call("PUT", f"/{name}", body, token=token)
    assert answer.status == 201, answer.body
    return token


async def until(condition: Callable[[], object]) -> None:
    """Let the reactor run (the app's requests in flight) until ``condition`` holds."""
    await poll_until_async(condition, lambda pause: task.deferLater(reactor, pause, lambda: None), interval=0.01)


async def page(app: InProcess, name: str = "demo") -> str:
    """The package page of ``name`` as a browser gets it (200)."""
    answer = await app.call("GET", f"/-/web/package/{name}", Accept="text/html")
    assert answer.status == 200, answer.body[:300]
    return answer.body.decode()


@pytest_twisted.ensureDeferred
async def test_each_version_is_rendered_once_however_often_it_is_viewed(tmp_path: Path) -> None:
    """Five views of one version render its readme once; a new version's readme is rendered again, once."""
    renderer = InlineRenderer()
    app = build(tmp_path, renderer=renderer)
    token = await published_with_readme(app, "# Hello readme")
    for _ in range(5):
        assert "<h3>Hello readme</h3>" in await page(app)
    assert app.readmes.renders == 1 and renderer.texts == ["# Hello readme"]
    await published_with_readme(app, "# Second readme", version="1.0.1", token=token)
    for _ in range(3):
        assert "<h3>Second readme</h3>" in await page(app)
    assert app.readmes.renders == 2


@pytest_twisted.ensureDeferred
async def test_views_during_a_rendering_share_it(tmp_path: Path) -> None:
    """Three pages asked while the readme renders wait for that one rendering."""
    renderer = HeldRenderer()
    app = build(tmp_path, renderer=renderer)
    await published_with_readme(app, "# Shared")
    views = [Deferred.fromCoroutine(page(app)) for _ in range(3)]
    await until(lambda: len(renderer.pending) == 1 and app.readmes.renders == 1)
    renderer.finish()
    for body in [await view for view in views]:
        assert "<h3>Shared</h3>" in body
    assert app.readmes.renders == 1


@pytest_twisted.ensureDeferred
async def test_a_readme_too_slow_to_render_is_shown_as_escaped_text(tmp_path: Path) -> None:
    """The renderer's time budget ran out: the page shows the text, escaped, with a note; never retried."""
    renderer = HeldRenderer()
    app = build(tmp_path, renderer=renderer)
    await published_with_readme(app, HOSTILE_TEXT)
    view = Deferred.fromCoroutine(page(app))
    await until(lambda: len(renderer.pending) == 1)
    renderer.too_slow()
    for body in (await view, await page(app)):
        assert "took more than 2 s to render: it is shown as plain text" in body
        assert "&lt;b&gt;bold?&lt;/b&gt; &amp; ![" in body and "<b>bold?" not in body
        assert '<pre class="readme-text">' in body
    assert app.readmes.renders == 1


def count_markdown_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the Markdown renderings done in this process (one item each)."""
    done: list[int] = []
    real = readme._markdown.render

    def counted(text: str, env: object = None) -> str:
        done.append(len(text))
        return real(text, env)

    monkeypatch.setattr(readme._markdown, "render", counted)
    return done


@pytest_twisted.ensureDeferred
async def test_two_views_of_a_version_render_its_readme_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The regression of item 1: every view rendered the readme again (two views, two renderings)."""
    done = count_markdown_renders(monkeypatch)
    app = build(tmp_path)
    await published_with_readme(app, "# Viewed twice")
    for _ in range(2):
        assert "<h3>Viewed twice</h3>" in await page(app)
    assert len(done) == 1


@pytest_twisted.ensureDeferred
async def test_a_readme_over_the_size_budget_is_not_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A readme longer than 512K characters is shown as text, escaped and cut, without being rendered."""
    done = count_markdown_renders(monkeypatch)
    app = build(tmp_path)
    await published_with_readme(app, "<i>x</i>" + "*_" * (512 * 1024 // 2))
    body = await page(app)
    assert "is longer than 512K characters: it is shown as plain text" in body
    assert '<pre class="readme-text">&lt;i&gt;x&lt;/i&gt;*_*_' in body and "<i>x</i>" not in body
    assert done == []


@pytest_twisted.ensureDeferred
async def test_a_page_waits_at_most_its_budget_and_the_rendering_is_kept_for_the_next(tmp_path: Path) -> None:
    """Past PAGE_WAIT_SECONDS the page answers with the text; once rendered, the next view shows the HTML."""
    renderer = HeldRenderer()
    app = build(tmp_path, renderer=renderer)
    await published_with_readme(app, "# Slow but fine")
    view = Deferred.fromCoroutine(page(app))
    await until(lambda: len(renderer.pending) == 1)
    app.clock.advance(PAGE_WAIT_SECONDS)
    assert "still being rendered" in await view
    renderer.finish()
    assert "<h3>Slow but fine</h3>" in await page(app)
    assert app.readmes.renders == 1


@pytest_twisted.ensureDeferred
async def test_a_login_completes_while_the_readme_renderer_is_busy(tmp_path: Path) -> None:
    """Logins (bcrypt, in the CPU pool) do not wait for readmes: their renderer is elsewhere."""
    renderer = HeldRenderer()
    app = build(tmp_path, renderer=renderer)
    await published_with_readme(app, "# Busy")
    view = Deferred.fromCoroutine(page(app))
    await until(lambda: len(renderer.pending) == 1)
    login = await app.call("POST", "/-/v1/login")
    assert login.status == 200, login.body
    legacy = await app.call("PUT", "/-/user/org.couchdb.user:pat",
                            {"name": "pat", "password": "secret-pw"})
    assert legacy.status == 201, legacy.body
    assert not view.called and len(renderer.pending) == 1  # the page still waits; the logins did not
    renderer.finish()
    assert "<h3>Busy</h3>" in await view


@pytest_twisted.ensureDeferred
async def test_a_flood_of_distinct_readmes_queues_a_bounded_number(tmp_path: Path) -> None:
    """With QUEUE renderings waiting, another readme is shown as text at once and not queued."""
    renderer = HeldRenderer()
    clock = task.Clock()
    readmes = ReadmeRenders(renderer, clock, queue=2)
    waiting = [Deferred.fromCoroutine(readmes.html(f"p{n}", "1.0.0", f"# {n}")) for n in range(3)]
    busy = await readmes.html("p3", "1.0.0", "<b>3</b>")
    assert "being rendered for other pages" in busy and "&lt;b&gt;3&lt;/b&gt;" in busy
    assert readmes.renders == 1 and len(renderer.pending) == 1  # one rendering, two queued
    for _ in range(3):
        renderer.finish()
    assert [await w for w in waiting] == [render_readme(f"# {n}") for n in range(3)]
    assert readmes.renders == 3


@pytest_twisted.ensureDeferred
async def test_a_readme_found_too_slow_is_tried_again_only_after_an_hour() -> None:
    """Views within RETRY_SECONDS of a too-slow verdict show the text without rendering; after it, one more try."""
    renderer = HeldRenderer()
    clock = task.Clock()
    readmes = ReadmeRenders(renderer, clock)
    first = Deferred.fromCoroutine(readmes.html("p", "1.0.0", "# p"))
    renderer.too_slow()
    assert "took more than" in await first
    clock.advance(RETRY_SECONDS - 1)
    assert "took more than" in await readmes.html("p", "1.0.0", "# p")
    assert readmes.renders == 1
    clock.advance(1)
    again = Deferred.fromCoroutine(readmes.html("p", "1.0.0", "# p"))
    renderer.finish()
    assert await again == render_readme("# p") and readmes.renders == 2


def test_the_kept_renderings_stay_within_their_memory_budget() -> None:
    """Past cache_bytes the least recently viewed renderings go; none is kept twice."""
    clock = task.Clock()
    readmes = ReadmeRenders(InlineRenderer(), clock, cache_bytes=20_000)
    for n in range(50):
        Deferred.fromCoroutine(readmes.html(f"p{n}", "1.0.0", f"# {n}\n\n" + "text " * 400))
    assert readmes.renders == 50 and 0 < readmes.kept_bytes <= 20_000
    kept = readmes.renders
    Deferred.fromCoroutine(readmes.html("p49", "1.0.0", "# 49\n\n" + "text " * 400))
    assert readmes.renders == kept  # the newest is still kept
    Deferred.fromCoroutine(readmes.html("p0", "1.0.0", "# 0\n\n" + "text " * 400))
    assert readmes.renders == kept + 1  # the oldest was evicted


# The child process ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_worker_renders_in_a_child_and_kills_it_past_the_budget() -> None:
    """A real child renders an ordinary readme; a hostile one is killed at the budget, then the next renders."""
    worker = ReadmeWorker(reactor, Logger(namespace="nopard.test"), budget=0.5)
    worker.startService()
    try:
        assert await worker.render("# Child\n\n<script>x</script>") == render_readme("# Child\n\n<script>x</script>")
        with pytest.raises(RenderTooSlow):
            await worker.render("![" * 200_000)  # about 6 s of CPU here: far past 0.5 s
        assert worker.killed == 1 and worker.started == 2
        assert await worker.render("*again*") == "<p><em>again</em></p>\n"
    finally:
        await worker.stopService()
    assert worker.started == 2


def test_the_child_answers_frames_until_end_of_file() -> None:
    """The child's loop: ready, then one answer per readme, then it returns at end of file."""
    body = b"# Hi"
    reader = io.BytesIO(struct.pack(">I", len(body)) + body)
    writer = io.BytesIO()
    serve(reader, writer)
    html = render_readme("# Hi").encode()
    assert writer.getvalue() == b"R" + b"O" + struct.pack(">I", len(html)) + html
