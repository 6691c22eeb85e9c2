"""The Lark parser for ``rules.lark``, built once per process.

Building the LALR tables takes a noticeable fraction of a second, so the parser object is
made on first use and shared; Lark's LALR parser keeps no state between ``parse`` calls.
"""

from __future__ import annotations

from functools import cache

from lark import Lark
from lark.lexer import PatternStr

__all__ = ["lark_parser", "terminal_literals"]


@cache
def lark_parser() -> Lark:
    return Lark.open(
        "rules.lark",
        rel_to=__file__,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


@cache
def terminal_literals() -> dict[str, str]:
    """Terminal name -> the literal text it stands for (``RBRACE`` -> ``}``), for messages."""
    return {
        t.name: t.pattern.value
        for t in lark_parser().terminals
        if isinstance(t.pattern, PatternStr)
    }
