"""How literals are spelled in rule text, both ways: reading tokens and writing them back.

The parser and the formatter share these so that whatever ``fmt`` writes reads back as
the same value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from decimal import Decimal

__all__ = [
    "is_identifier",
    "parse_number",
    "number_text",
    "unquote",
    "quote",
    "did_you_mean",
]

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "/": "/"}


def is_identifier(text: str) -> bool:
    return IDENTIFIER.fullmatch(text) is not None


def parse_number(text: str) -> int | float:
    """``200_000`` -> 200000, ``1_000.25`` -> 1000.25: ints stay ints."""
    plain = text.replace("_", "")
    return float(plain) if "." in plain else int(plain)


def number_text(value: int | float) -> str:
    """The canonical spelling of a number, readable by ``parse_number`` (never ``1e+20``)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a number here")
    if isinstance(value, int):
        # long numbers keep a readable grouping: 200_000, not 200000
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written in a rule file")
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if "." not in text:
        text += ".0"
    return text


def unquote(token: str) -> tuple[str, str | None]:
    """The value of a ``"…"`` token, and a problem with its escapes (or None)."""
    body = token[1:-1]
    if "\\" not in body:
        return body, None
    out: list[str] = []
    i, problem = 0, None
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
            code = int(body[i + 2 : i + 6], 16)
            i += 6
            low = body[i + 2 : i + 6] if body[i : i + 2] == "\\u" else ""
            if 0xD800 <= code < 0xDC00 and re.fullmatch(r"[dD][c-fC-F][0-9A-Fa-f]{2}", low):
                code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                i += 6
            if 0xD800 <= code < 0xE000:
                problem = problem or "a \\u escape names half of a surrogate pair"
                continue
            out.append(chr(code))
        else:
            shown = "\\" + nxt
            problem = problem or (
                f"unknown escape '{shown}' in string: use \\\", \\\\, \\n, \\t or \\uXXXX"
            )
            out.append(nxt)
            i += 2
    return "".join(out), problem


def quote(value: str) -> str:
    """A string literal that ``unquote`` reads back as ``value``."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable() or "\ud800" <= ch <= "\udfff":
            code = ord(ch)
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""
