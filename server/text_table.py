"""Tables of text for a terminal of a given width, or plain tab-separated lines for pipes.

A terminal table never breaks a value in the middle: a column that may be cut (ids,
model names) loses its end behind an ellipsis, down to a minimum width; when that is not
enough, whole columns are dropped, least important first. Times and numbers are never cut.
Plain output has no padding and no box characters: one tab-separated line per row.

Values may come from clients (ids, model names), so control characters are shown
escaped (``\\x1b``, ``\\n``): nothing in a cell can move the cursor or split a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len, set_cell_size

__all__ = ["Column", "fit", "render", "plain", "printable", "ELLIPSIS"]

ELLIPSIS = "…"
GAP = 2  # spaces between two columns


@dataclass(frozen=True)
class Column:
    """``priority``: when the width runs out, the lowest is dropped first. ``cut_to``: the
    narrowest this column's values may be cut to (with an ellipsis); None: never cut."""

    header: str
    priority: int
    align: Literal["left", "right"] = "left"
    cut_to: int | None = None


def printable(text: str) -> str:
    """``text`` with control characters escaped, so it stays on its line and in its cell."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _cut(text: str, width: int) -> str:
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, max(width - 1, 0)) + ELLIPSIS if width > 0 else ""


def fit(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> list[tuple[int, int]]:
    """The columns to show, in order, with their widths, so that a line fits ``width``.

    In priority order each column claims its narrowest width (``cut_to``, or its natural
    width when it may not be cut) while that fits; a column that does not fit is dropped.
    The space left goes back to the cut columns, highest priority first, up to their
    natural widths. The most important column is always shown, cut to the width if need be.
    """
    natural = [
        max([cell_len(col.header), *(cell_len(row[i]) for row in rows)])
        for i, col in enumerate(columns)
    ]
    narrowest = [
        natural[i] if col.cut_to is None else min(natural[i], col.cut_to)
        for i, col in enumerate(columns)
    ]
    by_priority = sorted(range(len(columns)), key=lambda i: (-columns[i].priority, i))
    if not by_priority:
        return []
    first = by_priority[0]
    narrowest[first] = min(narrowest[first], max(width, 1))
    kept = [first]
    used = narrowest[first]
    for i in by_priority[1:]:
        if used + GAP + narrowest[i] <= width:
            kept.append(i)
            used += GAP + narrowest[i]
    widths = {i: narrowest[i] for i in kept}
    spare = width - used
    for i in kept:  # still in priority order
        grow = max(0, min(spare, natural[i] - widths[i]))
        widths[i] += grow
        spare -= grow
    return [(i, widths[i]) for i in sorted(kept)]


def _line(cells: Sequence[str], columns: Sequence[Column], layout: list[tuple[int, int]]) -> str:
    out = []
    for i, w in layout:
        text = _cut(cells[i], w)
        pad = " " * (w - cell_len(text))
        out.append(pad + text if columns[i].align == "right" else text + pad)
    return (" " * GAP).join(out).rstrip()


def render(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> list[str]:
    """The header line and one line per row, each at most ``width`` cells wide."""
    clean = [[printable(c) for c in row] for row in rows]
    layout = fit(columns, clean, width)
    header = [c.header for c in columns]
    return [_line(header, columns, layout), *(_line(row, columns, layout) for row in clean)]


def plain(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """A header line and one line per row, every column, tab-separated, nothing padded."""
    lines = ["\t".join(c.header for c in columns)]
    lines.extend("\t".join(printable(c) for c in row) for row in rows)
    return lines
