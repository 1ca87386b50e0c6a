"""The one table helper of the experiment side: terminal, Markdown and HTML tables.

Every table ``dpp`` prints or writes (``dpp train``'s final table, ``dpp eval``, ``dpp data
list``, ``dpp compare``, the report's tables, ``scripts/results_tables.py``) goes through
:func:`format_table`, which hands the cells to ``tabulate`` as they are (no number
parsing: cells are pre-formatted strings).

Example::

    >>> print(format_table([["fc1", "15/784"], ["fc2", "15/300"]], ["layer", "k/n"]))
    layer       k/n
    -------  ------
    fc1      15/784
    fc2      15/300
    >>> print(format_table([["a|b", "1"]], ["x", "y"], fmt="markdown"))
    | x    |   y |
    |:-----|----:|
    | a\\|b |   1 |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from tabulate import tabulate

__all__ = ["TableFormat", "format_table"]

TableFormat = Literal["text", "plain", "markdown", "html"]

_TABLEFMT = {"text": "simple", "plain": "plain", "markdown": "pipe", "html": "html"}
_ALIGN = {"l": "left", "r": "right", "c": "center"}


def format_table(
    rows: Sequence[Sequence[Any]],
    header: Sequence[str] | None = None,
    *,
    fmt: TableFormat = "text",
    align: str | None = None,
) -> str:
    """Render ``rows`` (one sequence of cells per row) as a table.

    Args:
        rows: the cells; each is shown as ``str(cell)``.
        header: column names (none: no header line).
        fmt: ``"text"`` (a terminal table with a rule under the header), ``"plain"`` (no
            rules), ``"markdown"`` (a pipe table; ``|`` in cells is escaped) or ``"html"``
            (a ``<table>``, cells escaped).
        align: one letter per column, ``l``/``r``/``c``; default: the first column left,
            the others right.

    Returns:
        The table, without a trailing newline.

    Raises:
        ValueError: an unknown ``fmt``, or ``align`` / a row of another width than the
            header.
    """
    if fmt not in _TABLEFMT:
        raise ValueError(f"table format must be one of {', '.join(_TABLEFMT)}, got {fmt!r}")
    cells = [[str(c) for c in row] for row in rows]
    width = len(header) if header is not None else max((len(r) for r in cells), default=0)
    bad = [i for i, r in enumerate(cells) if len(r) != width]
    if bad:
        raise ValueError(f"table row {bad[0]} has {len(cells[bad[0]])} cells, expected {width}")
    align = align if align is not None else "l" + "r" * max(width - 1, 0)
    if len(align) != width or set(align) - set(_ALIGN):
        raise ValueError(f"align must be {width} letters of l/r/c, got {align!r}")
    head = [str(h) for h in header] if header is not None else ()
    if fmt == "markdown":
        cells = [[c.replace("|", "\\|") for c in r] for r in cells]
        head = [h.replace("|", "\\|") for h in head]
    if not width:
        return ""
    return tabulate(
        cells,
        headers=head,
        tablefmt=_TABLEFMT[fmt],
        disable_numparse=True,
        colalign=[_ALIGN[a] for a in align],
    )
