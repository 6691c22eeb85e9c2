"""Warnings about rule logic: conditions that can never hold, rules a deny always beats.

Both are syntactic and conservative: a warning is given only when it is certain from the
text, so a clean ``tollway check`` does not prove every rule is reachable.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from .ast import And, Compare, Deny, Expr, In, ListLiteral, Literal, Not, Or, Path, Rule, Scalar
from .nowhere import strip_positions
from .render import path_text, scalar_text

__all__ = ["never_true", "shadowed_rules"]

_ORDERING = ("<", "<=", ">", ">=")


def conjuncts(expr: Expr | None) -> list[Expr]:
    """The ``and``-ed parts of a condition, nested ``and``s flattened; [] for no condition."""
    if expr is None:
        return []
    if isinstance(expr, And):
        out: list[Expr] = []
        for item in expr.items:
            out.extend(conjuncts(item))
        return out
    return [expr]


def _key(value: Scalar) -> Hashable:
    """Equality as rules see it: 1 == 1.0, but true is not 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return ("value", value)


def never_true(expr: Expr) -> str | None:
    """Why ``expr`` can never hold, or None when it might."""
    if isinstance(expr, Literal):
        return "the condition is false" if expr.value is not True else None
    if isinstance(expr, Not):
        inner = expr.item
        if isinstance(inner, Literal) and inner.value is True:
            return "'not true' is false"
        return None
    if isinstance(expr, Or):
        reasons = [never_true(item) for item in expr.items]
        return reasons[0] if all(reasons) else None
    if isinstance(expr, Compare):
        return _constant(expr)
    if isinstance(expr, And):
        parts = conjuncts(expr)
        for part in parts:
            reason = never_true(part)
            if reason:
                return reason
        return _contradiction(parts)
    return None


def _constant(expr: Compare) -> str | None:
    if expr.op in _ORDERING and any(
        isinstance(side, Literal) and side.value is None for side in (expr.left, expr.right)
    ):
        return f"'{expr.op}' with null is never true"
    if isinstance(expr.left, Literal) and isinstance(expr.right, Literal):
        equal = _key(expr.left.value) == _key(expr.right.value)
        if (expr.op == "==" and not equal) or (expr.op == "!=" and equal):
            return "it compares two different constants"
    return None


class _Facts:
    """What the conjuncts of one ``and`` say about one path."""

    def __init__(self) -> None:
        self.equal: dict[Hashable, Scalar] = {}
        self.unequal: set[Hashable] = set()
        self.allowed: set[Hashable] | None = None
        self.low: tuple[float, bool] | None = None  # (bound, strict)
        self.high: tuple[float, bool] | None = None


def _facts(parts: Iterable[Expr]) -> dict[str, _Facts]:
    facts: dict[str, _Facts] = {}
    for part in parts:
        if isinstance(part, Compare):
            path, value, op = _path_and_value(part)
            if path is None:
                continue
            f = facts.setdefault(path, _Facts())
            if op == "==":
                f.equal[_key(value)] = value
            elif op == "!=":
                f.unequal.add(_key(value))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                bound = (float(value), op in ("<", ">"))
                if op in (">", ">="):
                    f.low = bound if f.low is None or bound > f.low else f.low
                elif f.high is None or (bound[0], not bound[1]) < (f.high[0], not f.high[1]):
                    f.high = bound
        elif (
            isinstance(part, In)
            and isinstance(part.item, Path)
            and isinstance(part.container, ListLiteral)
        ):
            f = facts.setdefault(path_text(part.item), _Facts())
            keys = {_key(v) for v in part.container.items}
            f.allowed = keys if f.allowed is None else f.allowed & keys
    return facts


def _path_and_value(expr: Compare) -> tuple[str | None, Scalar, str]:
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    if isinstance(expr.left, Path) and isinstance(expr.right, Literal):
        return path_text(expr.left), expr.right.value, expr.op
    if isinstance(expr.right, Path) and isinstance(expr.left, Literal):
        return path_text(expr.right), expr.left.value, flipped.get(expr.op, expr.op)
    return None, None, expr.op


def _contradiction(parts: list[Expr]) -> str | None:
    for path, f in _facts(parts).items():
        values = list(f.equal.values())
        if len(values) > 1:
            shown = " and ".join(scalar_text(v) for v in values[:2])
            return f"{path} cannot be both {shown}"
        for key, value in f.equal.items():
            if key in f.unequal:
                return f"{path} cannot be {scalar_text(value)} and not {scalar_text(value)}"
            if f.allowed is not None and key not in f.allowed:
                return f"{path} is {scalar_text(value)}, which is not in the list it must be in"
            if f.low or f.high:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    return f"{path} cannot be {scalar_text(value)} and a number in a range"
                if not _in_range(float(value), f):
                    return f"{path} is {scalar_text(value)}, outside the range it must be in"
        if f.allowed is not None and not f.allowed:
            return f"no value of {path} is in every list it must be in"
        if f.low and f.high:
            (lo, lo_strict), (hi, hi_strict) = f.low, f.high
            if lo > hi or (lo == hi and (lo_strict or hi_strict)):
                return f"no number is in the range {path} must be in"
    return None


def _in_range(value: float, f: _Facts) -> bool:
    if f.low is not None and (value < f.low[0] or (f.low[1] and value == f.low[0])):
        return False
    return not (f.high is not None and (value > f.high[0] or (f.high[1] and value == f.high[0])))


def shadowed_rules(rules: list[Rule]) -> list[tuple[Rule, Rule]]:
    """``(rule, denier)`` for every rule a deny beats on every request it matches.

    D shadows R when D is not a shadow rule, has a ``deny``, comes first in priority order
    (higher priority, or equal and earlier), and each of D's conditions is also one of R's
    (so D's condition is the same as R's or wider). Each rule's conditions are compared
    once, so this stays fast for thousands of rules.
    """
    ranked = sorted(rules, key=lambda r: (-r.priority, r.order))
    parts = [frozenset(strip_positions(c) for c in conjuncts(r.condition)) for r in ranked]
    denies = [
        i
        for i, r in enumerate(ranked)
        if not r.shadow and any(isinstance(a, Deny) for a in r.actions)
    ]
    out: list[tuple[Rule, Rule]] = []
    for j, rule in enumerate(ranked):
        if rule.shadow:
            continue
        for i in denies:
            if i >= j:
                break
            if parts[i] <= parts[j]:
                out.append((rule, ranked[i]))
                break
    return out
