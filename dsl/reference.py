"""The reference interpreter: walks a condition's syntax tree directly, one rule at a time.

It is deliberately plain (no index, no closures, no pre-split globs) so that it can serve
as the oracle the compiled decision tree is checked against, and as the tracer behind
``explain``, which needs to see each test as written.
"""

from __future__ import annotations

import json

from .ast import And, Compare, Exists, Expr, Glob, In, ListLiteral, Literal, Not, Or, Path, Rule
from .ast import Value as JsonValue
from .compiled import EvalContext, TestTrace
from .values import contains, equals, glob_match, ordered, resolve

__all__ = ["evaluate", "trace_rule", "expr_text", "literal_text"]


def _operand(node: Path | Literal, ctx: EvalContext) -> JsonValue:
    return resolve(ctx, node) if isinstance(node, Path) else node.value


def evaluate(expr: Expr, ctx: EvalContext) -> bool:
    """Whether a condition holds in a context (short-circuit ``and``/``or``; never raises)."""
    if isinstance(expr, Compare):
        left, right = _operand(expr.left, ctx), _operand(expr.right, ctx)
        if expr.op == "==":
            return equals(left, right)
        if expr.op == "!=":
            return not equals(left, right)
        return ordered(expr.op, left, right)
    if isinstance(expr, In):
        item = _operand(expr.item, ctx)
        if isinstance(expr.container, ListLiteral):
            return contains(list(expr.container.items), item)
        return contains(resolve(ctx, expr.container), item)
    if isinstance(expr, Glob):
        return glob_match(expr.pattern, resolve(ctx, expr.subject))
    if isinstance(expr, Exists):
        return resolve(ctx, expr.path) is not None
    if isinstance(expr, And):
        return all(evaluate(item, ctx) for item in expr.items)
    if isinstance(expr, Or):
        return any(evaluate(item, ctx) for item in expr.items)
    if isinstance(expr, Not):
        return not evaluate(expr.item, ctx)
    if isinstance(expr, Literal):
        return expr.value is True
    raise TypeError(f"not a condition: {expr!r}")


# ------------------------------------------------------------------- text


def literal_text(value: JsonValue) -> str:
    """A literal as the rule language spells it: ``"free"``, ``true``, ``null``, ``1.5``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(literal_text(v) for v in value) + "]"
    return repr(value)


def _operand_text(node: Path | Literal | ListLiteral) -> str:
    if isinstance(node, Path):
        return str(node)
    if isinstance(node, ListLiteral):
        return "[" + ", ".join(literal_text(v) for v in node.items) + "]"
    return literal_text(node.value)


def expr_text(expr: Expr) -> str:
    """A condition written back as source text (fully parenthesised where it nests)."""
    if isinstance(expr, Compare):
        return f"{_operand_text(expr.left)} {expr.op} {_operand_text(expr.right)}"
    if isinstance(expr, In):
        return f"{_operand_text(expr.item)} in {_operand_text(expr.container)}"
    if isinstance(expr, Glob):
        return f"{expr.subject} ~ {literal_text(expr.pattern)}"
    if isinstance(expr, Exists):
        return f"{expr.path} exists"
    if isinstance(expr, Literal):
        return literal_text(expr.value)
    if isinstance(expr, Not):
        inner = expr_text(expr.item)
        return f"not ({inner})" if isinstance(expr.item, And | Or) else f"not {inner}"
    joiner = " and " if isinstance(expr, And) else " or "
    return joiner.join(
        f"({expr_text(e)})" if isinstance(e, And | Or) else expr_text(e) for e in expr.items
    )


# ------------------------------------------------------------------ trace


def _paths(expr: Expr) -> list[Path]:
    if isinstance(expr, Compare):
        return [n for n in (expr.left, expr.right) if isinstance(n, Path)]
    if isinstance(expr, In):
        return [n for n in (expr.item, expr.container) if isinstance(n, Path)]
    if isinstance(expr, Glob):
        return [expr.subject]
    if isinstance(expr, Exists):
        return [expr.path]
    return []


def _atomic(expr: Expr) -> bool:
    return not isinstance(expr, And | Or | Not)


def _trace(expr: Expr, ctx: EvalContext, out: list[TestTrace]) -> bool:
    if isinstance(expr, And):
        return all(_trace(item, ctx, out) for item in expr.items)
    if isinstance(expr, Or):
        return any(_trace(item, ctx, out) for item in expr.items)
    if isinstance(expr, Not) and not _atomic(expr.item):
        return not _trace(expr.item, ctx, out)
    # an atomic test, or `not` of one: shown as one line, as it was written
    held = evaluate(expr, ctx)
    test = expr.item if isinstance(expr, Not) else expr
    seen = tuple((str(p), resolve(ctx, p)) for p in _paths(test))
    out.append(TestTrace(expr_text(expr), held, seen))
    return held


def trace_rule(rule: Rule, ctx: EvalContext) -> tuple[bool, tuple[TestTrace, ...]]:
    """Whether the rule matches, and each test evaluated on the way (short-circuit order).

    Tests skipped by short-circuit are not listed: the trace is what evaluation did.
    """
    if rule.condition is None:
        return True, ()
    out: list[TestTrace] = []
    matched = _trace(rule.condition, ctx, out)
    return matched, tuple(out)
