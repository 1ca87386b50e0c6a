"""Rendering a :class:`~.sections.Page` as HTML or Markdown: one function per block type.

Example::

    >>> table = Table(["a", "b"], [["1", "2"]])
    >>> page = Page("T", "t", [Paragraph("by `dpp`")], [Section("S", [table])])
    >>> print(render(page, "md"))
    # T
    <BLANKLINE>
    by `dpp`
    <BLANKLINE>
    ## S
    <BLANKLINE>
    | a   |   b |
    |:----|----:|
    | 1   |   2 |
    <BLANKLINE>
"""

from __future__ import annotations

import html
import re

from ..tables import format_table
from .sections import Block, Figure, Page, Paragraph, Section, Table

__all__ = ["FORMATS", "render"]

#: Page formats and the file each is written to.
FORMATS = {"html": "report.html", "md": "report.md"}

_CODE = re.compile(r"`([^`]*)`")

#: The page's style sheet, one rule per selector.
_CSS_RULES = {
    "body": 'font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;'
    "margin:2em auto;padding:0 1em;color:#222;line-height:1.45",
    "h1": "font-size:1.6em",
    "h2": "font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em",
    "table": "border-collapse:collapse;margin:1em 0;font-size:.92em",
    "th,td": "border:1px solid #ccc;padding:.3em .6em;text-align:right",
    "th": "background:#f3f3f3",
    "td:first-child,th:first-child": "text-align:left",
    "figure": "margin:1.5em 0",
    "img": "max-width:100%;height:auto;border:1px solid #eee",
    "figcaption": "font-size:.9em;color:#444;max-width:900px",
    ".note": "color:#a40",
    "code": "font-size:.95em",
}
_CSS = "".join(f"{selector}{{{rules}}}" for selector, rules in _CSS_RULES.items())


def _html_text(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        attrs = ' class="note"' if block.note else ""
        return f"<p{attrs}>{_html_text(block.text)}</p>"
    if isinstance(block, Table):
        return format_table(block.rows, block.header, fmt="html")
    src = html.escape(block.file, quote=True)
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(block.title, quote=True)}" '
        f'loading="lazy"></a><figcaption><b>{html.escape(block.title)}.</b> '
        f"{html.escape(block.caption)}</figcaption></figure>"
    )


def _html_heading(section: Section) -> str:
    anchor = f' id="{html.escape(section.anchor, quote=True)}"' if section.anchor else ""
    return f"<h2{anchor}>{html.escape(section.title)}</h2>"


def render_html(page: Page) -> str:
    """The page as one standalone HTML document (inline CSS, figures linked)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(page.head_title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(page.title)}</h1>",
        *(_html_block(b) for b in page.intro),
    ]
    for section in page.sections:
        parts.append(_html_heading(section))
        parts += [_html_block(b) for b in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"> {block.text}" if block.note else block.text
    if isinstance(block, Table):
        return format_table(block.rows, block.header, fmt="markdown")
    assert isinstance(block, Figure)
    return f"![{block.title}]({block.file})\n\n*{block.title}.* {block.caption}"


def render_markdown(page: Page) -> str:
    """The page as Markdown (GitHub flavour: pipe tables)."""
    parts = [f"# {page.title}", *(_md_block(b) for b in page.intro)]
    for section in page.sections:
        parts.append(f"## {section.title}")
        parts += [_md_block(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


def render(page: Page, fmt: str) -> str:
    """``page`` in ``fmt`` (a key of :data:`FORMATS`: ``"html"`` or ``"md"``)."""
    if fmt not in FORMATS:
        raise ValueError(f"report format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return render_html(page) if fmt == "html" else render_markdown(page)
