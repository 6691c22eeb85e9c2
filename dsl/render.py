"""Conditions, values, limits and scopes written back as rule text.

Used by ``fmt`` and by diagnostics; whatever it writes parses back to the same tree.
Parentheses are added only where precedence needs them (``not`` > ``and`` > ``or``), and
around a nested ``and``/``or`` of the same kind, which the parser keeps as written.
"""

from __future__ import annotations

from .ast import (
    And,
    Compare,
    Exists,
    Expr,
    Glob,
    In,
    Limit,
    ListLiteral,
    Literal,
    Not,
    Or,
    Path,
    Scalar,
    Scope,
    Value,
    Window,
)
from .spelling import is_identifier, number_text, quote

__all__ = [
    "scalar_text",
    "value_text",
    "path_text",
    "expr_text",
    "limit_text",
    "window_text",
    "scope_text",
]

_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def scalar_text(value: Scalar) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return number_text(value)
    return quote(value)


def key_text(key: str) -> str:
    return key if is_identifier(key) else quote(key)


def value_text(value: Value, *, outer: bool = True) -> str:
    """A JSON value as written in a test ``request``: ``{ user: {id: "u1"}, model: "m" }``
    (spaces inside the outermost braces only)."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = ", ".join(f"{key_text(k)}: {value_text(v, outer=False)}" for k, v in value.items())
        return "{ " + inner + " }" if outer else "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v, outer=False) for v in value) + "]"
    return scalar_text(value)


def _amount(value: float) -> str:
    """A limit as people write money and counts: ``200_000``, ``5_000``, ``60``, ``0.5``."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:_}"
    return number_text(value)


def path_text(path: Path) -> str:
    return ".".join([path.parts[0], *(key_text(p) for p in path.parts[1:])])


def _operand(node: Path | Literal | ListLiteral) -> str:
    if isinstance(node, Path):
        return path_text(node)
    if isinstance(node, ListLiteral):
        return "[" + ", ".join(scalar_text(v) for v in node.items) + "]"
    return scalar_text(node.value)


def _rank(expr: Expr) -> int:
    if isinstance(expr, Or):
        return 1
    if isinstance(expr, And):
        return 2
    if isinstance(expr, Not):
        return 3
    return 4


def expr_text(expr: Expr) -> str:
    if isinstance(expr, Or | And):
        word = " or " if isinstance(expr, Or) else " and "
        mine = _rank(expr)
        # a child of the same kind was parenthesised in the source; keep it so
        return word.join(
            f"({expr_text(item)})" if _rank(item) <= mine else expr_text(item)
            for item in expr.items
        )
    if isinstance(expr, Not):
        inner = expr_text(expr.item)
        return f"not ({inner})" if _rank(expr.item) < 3 else f"not {inner}"
    if isinstance(expr, Compare):
        return f"{_operand(expr.left)} {expr.op} {_operand(expr.right)}"
    if isinstance(expr, In):
        return f"{_operand(expr.item)} in {_operand(expr.container)}"
    if isinstance(expr, Glob):
        return f"{path_text(expr.subject)} ~ {quote(expr.pattern)}"
    if isinstance(expr, Exists):
        return f"{path_text(expr.path)} exists"
    return scalar_text(expr.value)


def limit_text(limit: Limit) -> str:
    fallback = "" if limit.fallback is None else f" or {_amount(limit.fallback)}"
    if limit.path is None:
        return _amount(limit.value if limit.value is not None else 0)
    if limit.percent is not None:
        return f"{number_text(limit.percent)}% of {path_text(limit.path)}{fallback}"
    return f"{path_text(limit.path)}{fallback}"


def window_text(window: Window) -> str:
    if window.text:
        return window.text
    if window.calendar is not None:
        return window.calendar
    seconds = window.seconds or 0
    for unit, size in _UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def scope_text(scope: Scope) -> str:
    base = {
        "user": "for each user",
        "group": "for each group",
        "user_in_group": "for each user in group",
        "everyone": "for everyone",
    }[scope.subject]
    return base + (" and model" if scope.per_model else "")
