"""Tables as text: the rows, the aligned plain-text and the GitHub-flavoured markdown forms.

Both the run's report (``report/``) and the baseline comparison (``baseline.py``) print tables;
the comparison is part of the gate, below the reports, so the generic table code lives here,
below both, and knows nothing of what the columns mean.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of a table: a cell per column; ``failed`` marks it for emphasis."""

    cells: tuple[str, ...]
    failed: bool


def text_table(rows: list[Row], columns: tuple[str, ...],
               width: int | None = None) -> list[str]:
    """Plain aligned text lines (terminal summary), at most ``width`` characters each.

    The first column (the test id) gives way first: it keeps its end, which names the test and
    its parameters. When the table still does not fit, each row becomes a block: the test on
    its own line, then its other cells as ``column value`` pairs, wrapped. Nothing is dropped
    from the JSON, markdown or HTML reports, which are not bound to a terminal.
    """
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row.cells, strict=True)]
    gaps = 2 * (len(columns) - 1)
    if width is not None and sum(widths) + gaps > width:
        first = width - gaps - sum(widths[1:])
        if first < MIN_FIRST_COLUMN:
            return _render_blocks(rows, columns, width)
        widths[0] = first

    def line(cells: tuple[str, ...]) -> str:
        cells = (short_label(cells[0], widths[0]), *cells[1:])
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(columns), line(tuple("-" * w for w in widths)), *(line(r.cells) for r in rows)]


#: Below this the test id column says too little; the table is laid out as blocks instead.
MIN_FIRST_COLUMN = 32


def _render_blocks(rows: list[Row], columns: tuple[str, ...], width: int) -> list[str]:
    """One block per row for a terminal too narrow for the columns side by side."""
    lines: list[str] = []
    for row in rows:
        lines.append(short_label(row.cells[0], width))
        pairs = [f"{name} {cell}" for name, cell in zip(columns[1:], row.cells[1:], strict=True)
                 if cell != "-"]
        line = ""
        for pair in pairs:  # a pair is split across lines only when it is wider than a line
            if line and len(line) + 3 + len(pair) <= width:
                line += ";  " + pair
                continue
            if line:
                lines.append(line)
            *whole, line = textwrap.wrap(pair, width, initial_indent=INDENT,
                                         subsequent_indent=INDENT, break_on_hyphens=False)
            lines += whole
        if line:
            lines.append(line)
    return lines


INDENT = "    "


def short_label(label: str, chars: int = 56) -> str:
    """Keep the end of a long chart label: the test name and its parameters say more than the
    directory it lives in."""
    return label if len(label) <= chars else "…" + label[-(chars - 1):]


def escape_cell(text: str) -> str:
    """Make ``text`` one inert table cell.

    A ``|`` would split the cell, a newline would end the table, and GitHub renders (then
    sanitises away) anything that looks like an HTML tag, so ``test[<lambda>]`` would lose its id;
    ``&`` is escaped too, so that an id containing ``&lt;`` is shown as written.
    """
    return (
        text.replace("\\", "\\\\")
        .replace("&", "&amp;")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def markdown_table(columns: tuple[str, ...], rows: Iterable[Row]) -> list[str]:
    """Lines of a GFM table: header, separator, one line per row."""

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(escape_cell(c) for c in cells) + " |"

    return [line(columns), "|" + "---|" * len(columns), *(line(r.cells) for r in rows)]
