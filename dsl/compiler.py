"""From a checked syntax tree to an indexed, executable ``CompiledRuleset``.

Compilation is an ordered list of named passes over one mutable unit of work (as OPA's
compiler is): each pass does one job and the last one builds the decision tree, so the
index is a product of compilation rather than something the evaluator assembles.
The input is assumed to have passed the checker (unique names, known quotas).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from . import reference
from .ast import (
    Allow,
    And,
    Annotate,
    Balance,
    Check,
    Compare,
    Default,
    Deny,
    Enforce,
    Exists,
    Expr,
    Glob,
    In,
    InlineLimit,
    ListLiteral,
    Literal,
    Not,
    Or,
    Path,
    Quota,
    Route,
    Rule,
    RulesetAst,
    Schema,
    TestCase,
    Value,
)
from .compiled import CompiledRoute, CompiledRule, CompiledRuleset, EvalContext, Predicate
from .diagnostics import Diagnostic
from .index import DecisionTree, build_index
from .prices import PriceTable
from .trust import admin_keys
from .values import compile_glob, contains, equals, getter, index_key, ordered

__all__ = ["compile_ruleset", "compile_condition", "PASSES"]



def _always(ctx: EvalContext) -> bool:
    return True


def _never(ctx: EvalContext) -> bool:
    return False


# ------------------------------------------------------------- conditions


def _operand(node: Path | Literal) -> Callable[[EvalContext], Value]:
    if isinstance(node, Path):
        return getter(node)
    value = node.value
    return lambda ctx: value


def _equality(left: Path | Literal, right: Path | Literal) -> Predicate:
    """``==`` specialised on the literal's type, so the common case is one comparison."""
    if isinstance(left, Literal) and isinstance(right, Path):
        left, right = right, left
    if isinstance(left, Path) and isinstance(right, Literal):
        get, lit = getter(left), right.value
        if lit is None:
            return lambda ctx: get(ctx) is None
        if isinstance(lit, bool):
            # JSON bools are the two singletons; a number is never `is True`
            return lambda ctx: get(ctx) is lit
        if isinstance(lit, str):
            # a str equals only an equal str, so Python's == is exactly JSON's here
            return lambda ctx: get(ctx) == lit
        return lambda ctx: equals(get(ctx), lit)
    lhs, rhs = _operand(left), _operand(right)
    return lambda ctx: equals(lhs(ctx), rhs(ctx))


def _membership(expr: In) -> Predicate:
    item, container = expr.item, expr.container
    if isinstance(container, ListLiteral):
        if isinstance(item, Literal):
            held = contains(list(container.items), item.value)
            return _always if held else _never
        get = getter(item)
        keys = frozenset(index_key(v) for v in container.items if v is not None)
        # index_key(a) == index_key(b) exactly when equals(a, b): one hash lookup
        return lambda ctx: (v := get(ctx)) is not None and index_key(v) in keys
    values = getter(container)
    if isinstance(item, Literal):
        lit = item.value
        if lit is None:
            return _never
        if isinstance(lit, str):
            return lambda ctx: isinstance(v := values(ctx), list | tuple) and lit in v
        return lambda ctx: contains(values(ctx), lit)
    get = getter(item)
    return lambda ctx: contains(values(ctx), get(ctx))


def compile_condition(expr: Expr) -> Predicate:
    """A closure evaluating ``expr``: built once, so a decision never walks the syntax tree."""
    if isinstance(expr, Compare):
        if expr.op == "==":
            return _equality(expr.left, expr.right)
        if expr.op == "!=":
            eq = _equality(expr.left, expr.right)
            return lambda ctx: not eq(ctx)
        op, lhs, rhs = expr.op, _operand(expr.left), _operand(expr.right)
        return lambda ctx: ordered(op, lhs(ctx), rhs(ctx))
    if isinstance(expr, In):
        return _membership(expr)
    if isinstance(expr, Glob):
        match, subject = compile_glob(expr.pattern), getter(expr.subject)
        return lambda ctx: match(subject(ctx))
    if isinstance(expr, Exists):
        get = getter(expr.path)
        return lambda ctx: get(ctx) is not None
    if isinstance(expr, Literal):
        return _always if expr.value is True else _never
    if isinstance(expr, Not):
        inner = compile_condition(expr.item)
        return lambda ctx: not inner(ctx)
    parts = tuple(compile_condition(e) for e in expr.items)
    if isinstance(expr, And):
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            a, b = parts
            return lambda ctx: a(ctx) and b(ctx)
        return lambda ctx: all(p(ctx) for p in parts)
    if isinstance(expr, Or):
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            a, b = parts
            return lambda ctx: a(ctx) or b(ctx)
        return lambda ctx: any(p(ctx) for p in parts)
    raise TypeError(f"not a condition: {expr!r}")


# ------------------------------------------------------------------ passes


@dataclass(slots=True)
class _Unit:
    """Everything the passes read and write; the last step freezes it into the ruleset."""

    ast: RulesetAst
    warnings: tuple[Diagnostic, ...]
    version: str = ""
    paths: tuple[str, ...] = ()
    default: Default = field(default_factory=lambda: Default("allow"))
    schemas: tuple[Schema, ...] = ()
    quotas: dict[str, Quota] = field(default_factory=dict)
    balances: dict[str, Balance] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    tests: tuple[TestCase, ...] = ()
    tests_of: list[Predicate] = field(default_factory=list)
    compiled: list[CompiledRule] = field(default_factory=list)
    index: DecisionTree | None = None
    prices: PriceTable = field(default_factory=PriceTable)


def _fingerprint(unit: _Unit) -> None:
    """``version``: the first 12 hex digits of sha256 over each file's path and text."""
    digest = hashlib.sha256()
    for f in unit.ast.files:
        for part in (f.path, f.source):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    unit.version = digest.hexdigest()[:12]
    unit.paths = tuple(f.path for f in unit.ast.files)


def _collect(unit: _Unit) -> None:
    """Merge the files: default, schemas, declared then inline quotas, rules, tests."""
    files = unit.ast.files
    unit.default = next((f.default for f in files if f.default is not None), Default("allow"))
    unit.schemas = tuple(s for f in files for s in f.schemas)
    unit.tests = tuple(t for f in files for t in f.tests)
    for f in files:
        for quota in f.quotas:
            unit.quotas[quota.name] = quota
        for balance in f.balances:
            unit.balances[balance.name] = balance
    for f in files:
        for rule in f.rules:
            unit.rules.append(rule)
            for action in rule.actions:
                if isinstance(action, InlineLimit):
                    unit.quotas[action.quota.name] = action.quota


def _prices(unit: _Unit) -> None:
    """The price table: every ``price`` of every file, most specific pattern first."""
    unit.prices = PriceTable.of(p for f in unit.ast.files for p in f.prices)


def _order(unit: _Unit) -> None:
    """Highest priority first, then source order across files: the evaluation order."""
    unit.rules.sort(key=lambda r: (-r.priority, r.order))


def _conditions(unit: _Unit) -> None:
    """Compile each rule's ``when`` into a closure (rules without one always hold)."""
    unit.tests_of = [
        _always if r.condition is None else compile_condition(r.condition) for r in unit.rules
    ]


def _actions(unit: _Unit) -> None:
    """Flatten actions into the fields the policy layer reads, in source order."""
    for rule, test in zip(unit.rules, unit.tests_of, strict=True):
        deny: str | None = None
        allow = False
        quotas: list[str] = []
        checks: list[str] = []
        routes: list[CompiledRoute] = []
        notes: list[tuple[str, str]] = []
        spends: list[tuple[str, str]] = []
        for action in rule.actions:
            if isinstance(action, Deny):
                if deny is None:
                    deny = action.message
            elif isinstance(action, Allow):
                allow = True
            elif isinstance(action, Enforce):
                for i, name in enumerate(action.names):
                    chain = action.chain(i)
                    if name in unit.balances:
                        spends.append((name, ""))
                    else:
                        quotas.append(name)
                        spends.extend((after, name) for after in chain)
            elif isinstance(action, InlineLimit):
                quotas.append(action.quota.name)
            elif isinstance(action, Check):
                checks.extend(action.names)
            elif isinstance(action, Route):
                cond = action.condition
                routes.append(CompiledRoute(
                    action.model, None if cond is None else compile_condition(cond)))
            elif isinstance(action, Annotate):
                notes.append((action.key, action.value))
        unit.compiled.append(CompiledRule(
            rule=rule, test=test, deny=deny, allow=allow, quotas=tuple(quotas),
            checks=tuple(checks), routes=tuple(routes), annotations=tuple(notes),
            balances=tuple(spends),
        ))


def _index(unit: _Unit) -> None:
    """The decision tree over the rules in evaluation order."""
    unit.index = build_index([r.condition for r in unit.rules], [r.name for r in unit.rules])


PASSES: tuple[tuple[str, Callable[[_Unit], None]], ...] = (
    ("fingerprint", _fingerprint),
    ("collect", _collect),
    ("price_table", _prices),
    ("order_rules", _order),
    ("compile_conditions", _conditions),
    ("flatten_actions", _actions),
    ("build_index", _index),
)


def _reference_test(rule: Rule, ctx: EvalContext) -> bool:
    return rule.condition is None or reference.evaluate(rule.condition, ctx)


def compile_ruleset(ast: RulesetAst, warnings: Sequence[Diagnostic] = ()) -> CompiledRuleset:
    """Run every pass in order and freeze the result (the AST must have passed the checker)."""
    unit = _Unit(ast=ast, warnings=tuple(warnings))
    for _name, run in PASSES:
        run(unit)
    assert unit.index is not None
    return CompiledRuleset(
        version=unit.version,
        paths=unit.paths,
        default=unit.default,
        schemas=unit.schemas,
        quotas=MappingProxyType(dict(unit.quotas)),
        rules=tuple(unit.compiled),
        tests=unit.tests,
        warnings=unit.warnings,
        index=unit.index,
        reference_test=_reference_test,
        tracer=reference.trace_rule,
        prices=unit.prices,
        files=unit.ast.files,
        admin_keys=MappingProxyType(dict(admin_keys(unit.schemas))),
        balances=MappingProxyType(dict(unit.balances)),
    )
