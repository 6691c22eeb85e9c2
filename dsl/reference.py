"""The reference interpreter: walks a condition's syntax tree directly, one rule at a time.

It is deliberately plain (no index, no closures, no pre-split globs) so that it can serve
as the oracle the compiled decision tree is checked against, and as the tracer behind
``explain``, which needs to see each test as written.
"""

from __future__ import annotations

from .ast import And, Compare, Exists, Expr, Glob, In, ListLiteral, Literal, Not, Or, Path, Rule
from .ast import Value as JsonValue
from .compiled import EvalContext, TestTrace
from .render import expr_text
from .values import contains, equals, glob_match, ordered, resolve

__all__ = ["evaluate", "trace_rule"]


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
