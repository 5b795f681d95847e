"""Readmes for the browser: Markdown rendered to HTML, then sanitized.

Package readmes are written by anyone who can publish (or by anyone at all,
for mirrored packages), so what reaches the browser keeps only harmless markup:
no script, style or iframe, no event handler, no ``javascript:`` or other
non-web link. Images lose their source and show their alt text: the pages load
nothing from outside nopard (air-gapped networks, privacy), and a readme's
relative images point into its repository, which nopard does not hold.

Rendering costs about 1 µs a character for an ordinary readme but up to 30 µs
for a hostile one (``![`` repeated: 13 s for 500K characters), so it runs only
in nopard.web.readme_worker's child process, under the budgets below
(nopard.web.readme_renders); ``plain_readme`` is what a reader sees past them.
"""

from __future__ import annotations

import html
import re

import nh3
from markdown_it import MarkdownIt

# Size budget: longer readmes are not rendered but shown as text (cut here). An ordinary readme
# of this size renders in about 0.5 s on a small machine, so anything longer would meet the
# time budget anyway; it also bounds what goes to the child and what one rendering holds.
MAX_README = 512 * 1024  # characters
# Time budget: a rendering still running after this is killed with its process (a Python
# thread cannot be interrupted): 4 times what an ordinary readme of MAX_README takes.
RENDER_SECONDS = 2.0
# How long a page waits for its readme before answering with the text (it is still rendered,
# and kept, for the next view): what keeps every page view within about a second.
PAGE_WAIT_SECONDS = 1.0
_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "details", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre",
    "q", "s", "samp", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "tt", "ul", "var",
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"align", "colspan", "rowspan"},
    "th": {"align", "colspan", "rowspan"},
    "ol": {"start"},
    "code": {"class"},
    "*": {"lang"},
}
_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table").enable("strikethrough")


def _keep_attribute(element: str, attribute: str, value: str) -> str | None:
    """nh3's attribute filter: no image source (see the module's doc), only language-* code classes."""
    if element == "img" and attribute == "src":
        return None
    if element == "code" and attribute == "class" and not value.startswith("language-"):
        return None
    return value


_HEADING = re.compile(r"<(/?)h([1-6])\b")


def render_readme(text: str) -> str:
    """Sanitized HTML of a Markdown readme (raw HTML in it included, then cleaned).

    Its headings go two levels down (# becomes h3): the readme sits under the
    page's h1 and its own "Readme" h2, and screen readers navigate by level.
    """
    html = _markdown.render(text[:MAX_README])
    clean = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
        attribute_filter=_keep_attribute,
        strip_comments=True,
    )
    return _HEADING.sub(lambda match: f"<{match[1]}h{min(6, int(match[2]) + 2)}", clean)


TOO_LARGE = "too large"
TOO_SLOW = "too slow"
FAILED = "failed"
BUSY = "busy"
PENDING = "pending"
_NOTES = {
    TOO_LARGE: f"This readme is longer than {MAX_README // 1024}K characters: it is shown as plain text, "
               "not rendered.",
    TOO_SLOW: f"This readme took more than {RENDER_SECONDS:g} s to render: it is shown as plain text.",
    FAILED: "This readme could not be rendered: it is shown as plain text.",
    BUSY: "Readmes are being rendered for other pages: this one is shown as plain text for now.",
    PENDING: "This readme is still being rendered: it is shown as plain text for now; reload the page "
             "in a moment to see it rendered.",
}


def plain_readme(text: str, reason: str) -> str:
    """The fallback: a note saying why (``reason``: TOO_LARGE, TOO_SLOW...), then the text, escaped, preformatted."""
    shown = html.escape(text[:MAX_README], quote=True)
    cut = "\n…" if len(text) > MAX_README else ""
    return f'<p class="readme-note" role="note">{_NOTES[reason]}</p><pre class="readme-text">{shown}{cut}</pre>'
