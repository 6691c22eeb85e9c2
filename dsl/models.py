"""The model names a ruleset spells out: route targets, ``request.model`` literals, prices.

Metrics label series by model; the models named here keep their own series whatever
clients send (anything else is bounded by the metrics layer).
"""

from __future__ import annotations

from collections.abc import Iterator

from .ast import And, Compare, Exists, Expr, Glob, In, ListLiteral, Literal, Not, Or, Path, Route
from .compiled import CompiledRuleset

__all__ = ["named_models"]

_MODEL = ("request", "model")


def named_models(ruleset: CompiledRuleset) -> frozenset[str]:
    """Every model name the rules write literally (globs are patterns, not names)."""
    names: set[str] = set()
    for compiled in ruleset.rules:
        names.update(r.model for r in compiled.routes)
        rule = compiled.rule
        if rule.condition is not None:
            names.update(_literals(rule.condition))
        for action in rule.actions:
            if isinstance(action, Route) and action.condition is not None:
                names.update(_literals(action.condition))
    for price in ruleset.prices.prices:
        if "*" not in price.pattern and "?" not in price.pattern:
            names.add(price.pattern)
    return frozenset(names)


def _is_model(node: object) -> bool:
    return isinstance(node, Path) and node.parts == _MODEL


def _literals(expr: Expr) -> Iterator[str]:
    """String literals compared with, or listed against, ``request.model``."""
    match expr:
        case Compare(left=left, right=right):
            for side, other in ((left, right), (right, left)):
                if _is_model(side) and isinstance(other, Literal) and isinstance(other.value, str):
                    yield other.value
        case In(item=item, container=ListLiteral(items=items)) if _is_model(item):
            yield from (v for v in items if isinstance(v, str))
        case And(items=items) | Or(items=items):
            for item in items:
                yield from _literals(item)
        case Not(item=item):
            yield from _literals(item)
        case Glob() | Exists() | Literal() | In():
            return
