"""REPORT.md as one self-contained HTML page: markdown-it-py (CommonMark + GitHub pipe tables) renders the body,
local PNG images become base64 data URIs, and an image alone in its paragraph becomes a figure with its alt text as
the caption. Raw HTML in the Markdown is escaped, not passed through (html=False): run names and failure reasons
come from run files and are shown as text."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.5; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; }
th { background: #f4f6f8; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f2f2f2; padding: 1px 4px; border-radius: 3px; font-size: 0.92em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def _embed(src: str, base: Path) -> str | None:
    """A data URI for a local PNG (relative to the report folder), or None when there is no such file."""
    if re.match(r"^[a-z]+:", src):
        return None
    path = (base / src).resolve()
    if not path.is_file() or path.suffix.lower() != ".png":
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _lone_image(inline: Token) -> Token | None:
    """The image token when an inline block holds one image and nothing else (surrounding spaces aside)."""
    children = [c for c in inline.children or [] if not (c.type == "text" and not c.content.strip())]
    return children[0] if len(children) == 1 and children[0].type == "image" else None


def _renderer(base: Path) -> MarkdownIt:
    """CommonMark with pipe tables, raw HTML off; images embedded from `base`, lone images drawn as figures."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    # add_render_rule binds each rule to the renderer: rules take (renderer, tokens, idx, options, env)
    default_image = md.renderer.rules["image"]

    def image(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        # markdown-it stores the link percent-encoded (a space as %20); the file on disk has the plain name
        data = _embed(unquote(str(token.attrGet("src") or "")), base)
        if data is not None:
            token.attrSet("src", data)
        return default_image(tokens, idx, options, env)

    def paragraph_open(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
        if not tokens[idx].hidden and tokens[idx + 1].type == "inline" and _lone_image(tokens[idx + 1]):
            return "<figure>"
        return renderer.renderToken(tokens, idx, options, env)

    def paragraph_close(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
        lone = None if tokens[idx].hidden or tokens[idx - 1].type != "inline" else _lone_image(tokens[idx - 1])
        if lone is not None:
            return f"<figcaption>{html.escape(lone.content)}</figcaption></figure>\n"
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image)
    md.add_render_rule("paragraph_open", paragraph_open)
    md.add_render_rule("paragraph_close", paragraph_close)
    return md


def markdown_to_html(md: str, base: Path, title: str = "Report") -> str:
    """The report's Markdown as one self-contained HTML page; local PNG images (paths relative to `base`, the
    report folder) become base64 data URIs, other images keep their link."""
    body = _renderer(base).render(md)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + body + "</body>\n</html>\n"
    )
