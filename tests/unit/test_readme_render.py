"""Readmes rendered for the browser: Markdown kept, anything active removed."""

from __future__ import annotations

import re

import pytest

from nopard.web.readme import render_readme

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
