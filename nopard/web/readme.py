"""Readmes for the browser: Markdown rendered to HTML, then sanitized.

Package readmes are written by anyone who can publish (or by anyone at all,
for mirrored packages), so what reaches the browser keeps only harmless markup:
no script, style or iframe, no event handler, no ``javascript:`` or other
non-web link. Images lose their source and show their alt text: the pages load
nothing from outside nopard (air-gapped networks, privacy), and a readme's
relative images point into its repository, which nopard does not hold.
"""

from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt

MAX_README = 512 * 1024  # characters rendered; longer readmes are cut
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
