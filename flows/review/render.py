"""Safe rendering of model text for the review pages: a CommonMark subset through markdown-it-py
with raw HTML off (every `<tag>` in model output is shown as text), images off (no requests
leave the page), and links only to http(s) / mailto, opened in a new tab without a referrer.
Anything else (`javascript:`, `data:`, `vbscript:`, relative paths) stays inert text.

    html = render_markdown("**bold** <script>alert(1)</script>")   # markupsafe.Markup
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

_SAFE_LINK = re.compile(r"^(https?://|mailto:)[^\s\x00-\x1f]*$", re.IGNORECASE)


def _make() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).disable("image")
    md.validateLink = lambda url: bool(_SAFE_LINK.match(url.strip()))

    def link_open(renderer, tokens, idx, options, env):  # noqa: ANN001 - markdown-it rule signature
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        tokens[idx].attrSet("target", "_blank")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _make()


def render_markdown(text: str | None) -> Markup:
    """Model text -> HTML that can be inserted into a page (nothing in it executes)."""
    if not text:
        return Markup('<p class="empty">(empty)</p>')
    return Markup(_MD.render(text))


def render_messages(messages: Sequence[dict] | None) -> list[dict]:
    """Chat messages -> [{"role": escaped role, "html": rendered content}]."""
    return [{"role": escape(str(m.get("role") or "")), "html": render_markdown(m.get("content"))}
            for m in (messages or [])]
