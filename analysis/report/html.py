"""REPORT.md as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------------
# Markdown → self-contained HTML (the subset this report writes: headings, paragraphs, lists, pipe tables, images,
# code, emphasis, links)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.5; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; }
th { background: #f4f6f8; }
tr:nth-child(even) td { background: #fafafa; }
td.r, th.r { text-align: right; } td.c, th.c { text-align: center; }
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


def _inline(text: str, base: Path) -> str:
    """Inline Markdown → HTML: code spans first (their content stays literal), then images, links, bold, italics."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False).replace("\\|", "|")

        def image(m):
            alt, src = m.group(1), m.group(2)
            data = _embed(html.unescape(src), base)
            return f'<img alt="{alt}" src="{data or src}">'

        s = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", image, s)
        s = re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _table_html(lines: list[str], base: Path) -> str:
    header = _split_row(lines[0])
    aligns = []
    for mark in _split_row(lines[1]):
        aligns.append(
            "r"
            if mark.endswith(":") and not mark.startswith(":")
            else "c"
            if mark.startswith(":") and mark.endswith(":")
            else "l"
        )
    cls = lambda i: f' class="{aligns[i]}"' if i < len(aligns) and aligns[i] != "l" else ""  # noqa: E731
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th{cls(i)}>{_inline(h, base)}</th>" for i, h in enumerate(header)) + "</tr></thead>",
        "<tbody>",
    ]
    for line in lines[2:]:
        cells = _split_row(line)
        out.append("<tr>" + "".join(f"<td{cls(i)}>{_inline(c, base)}</td>" for i, c in enumerate(cells)) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def markdown_to_html(md: str, base: Path, title: str = "Report") -> str:
    """The report's Markdown as one self-contained HTML page; local PNG images become base64 data URIs."""
    lines = md.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        if stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : j])) + "</code></pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2), base)}</h{level}>")
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{3,}", lines[i + 1].strip()):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            body.append(_table_html([ln.strip() for ln in lines[i:j]], base))
            i = j
            continue
        image = re.match(r"^!\[([^\]]*)\]\(([^)\s]+)\)$", stripped)
        if image:
            alt, src = image.group(1), image.group(2)
            data = _embed(src, base)
            body.append(
                f'<figure><img alt="{html.escape(alt)}" src="{data or html.escape(src)}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>"
            )
            i += 1
            continue
        if re.match(r"^([-*]|\d+\.)\s+", stripped):
            ordered = bool(re.match(r"^\d+\.", stripped))
            tag = "ol" if ordered else "ul"
            items = []
            while i < len(lines) and re.match(r"^([-*]|\d+\.)\s+", lines[i].strip()):
                item = re.sub(r"^([-*]|\d+\.)\s+", "", lines[i].strip())
                i += 1
                while (
                    i < len(lines)
                    and lines[i].startswith("  ")
                    and lines[i].strip()
                    and not re.match(r"^([-*]|\d+\.)\s+", lines[i].strip())
                ):
                    item += " " + lines[i].strip()
                    i += 1
                items.append(f"<li>{_inline(item, base)}</li>")
            body.append(f"<{tag}>" + "".join(items) + f"</{tag}>")
            continue
        if stripped.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            body.append(f"<blockquote>{_inline(' '.join(quote), base)}</blockquote>")
            continue
        if re.match(r"^(-{3,}|\*{3,})$", stripped):
            body.append("<hr>")
            i += 1
            continue
        para = []
        while (
            i < len(lines)
            and lines[i].strip()
            and not re.match(r"^(#{1,6}\s|```|\||!\[|([-*]|\d+\.)\s+|>)", lines[i].strip())
        ):
            para.append(lines[i].strip())
            i += 1
        if not para:  # a line no rule above took (e.g. a lone "|"): keep it as text
            para.append(stripped)
            i += 1
        body.append(f"<p>{_inline(' '.join(para), base)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
