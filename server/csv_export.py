"""CSV that is safe to open in a spreadsheet.

Rows follow RFC 4180 (``,`` separated, CRLF, ``"`` doubled inside quoted fields). Every
text field is quoted and numbers are not (booleans are the text ``true``/``false``), so a spreadsheet still reads numbers as
numbers. A text field that a spreadsheet would run as a formula, one starting with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return, gets a leading single quote, as
OWASP's CSV-injection advice says: ``=HYPERLINK("x")`` is written ``"'=HYPERLINK(""x"")"``
and shows as text. Numbers are never changed; only text can come from a client.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

__all__ = ["FORMULA_STARTS", "spreadsheet_safe", "CsvEncoder", "Cell"]

FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | float


def spreadsheet_safe(text: str) -> str:
    """``text``, with a leading ``'`` when a spreadsheet would take it for a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class CsvEncoder:
    """Encodes a header and batches of rows to UTF-8 bytes, one buffer reused."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(
            self._buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n"
        )

    def encode(self, rows: Iterable[Sequence[Cell]]) -> bytes:
        for row in rows:
            self._writer.writerow([_cell(c) for c in row])
        data = self._buffer.getvalue().encode()
        self._buffer.seek(0)
        self._buffer.truncate()
        return data


def _cell(value: Cell | bool) -> Cell:
    if isinstance(value, str):
        return spreadsheet_safe(value)
    if isinstance(value, bool):  # ``True`` to csv; ``true``, like the JSON export, to a reader
        return "true" if value else "false"
    return value
