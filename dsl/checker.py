"""Semantic checks of a parsed ruleset: every error and warning at once, sorted by location.

Errors stop a ruleset from loading (unknown or duplicate names, bad windows and limits,
type mismatches against a ``schema``); warnings point at rules that cannot do what their
author meant (never matching, always beaten by a deny, quotas nobody enforces).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from .ast import (
    CALENDARS,
    And,
    Annotate,
    Balance,
    Check,
    Default,
    Deny,
    Enforce,
    Expr,
    InlineLimit,
    Not,
    Or,
    Pos,
    Price,
    Quota,
    Route,
    Rule,
    RulesetAst,
    Schema,
    TestCase,
)
from .check_logic import never_true, shadowed_rules
from .check_types import Types
from .diagnostics import Diagnostic
from .prices import PriceTable
from .reporter import Reporter
from .scan import MAX_DEPTH
from .spelling import did_you_mean
from .trust import warn_untrusted

__all__ = ["check"]

# the fields of a DecideRequest a test request may set
REQUEST_FIELDS = ("request_id", "user", "group", "model", "attributes", "estimate", "dry_run")
_Named = TypeVar("_Named", Quota, Balance, Rule, TestCase)
_PRICE_PARTS = ("input", "output", "cached_input")


def check(
    ast: RulesetAst, unparsed: frozenset[str] = frozenset()
) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """``(errors, warnings)`` of a parsed ruleset, each sorted by location.

    ``unparsed``: names of declarations that failed to parse; naming one is not an error
    (its syntax error is reported already).
    """
    report = Reporter(ast)
    defaults: list[Default] = [rf.default for rf in ast.files if rf.default is not None]
    for extra in defaults[1:]:
        report.error(
            extra.pos,
            f"second 'default': the first is at {defaults[0].pos}; a ruleset has at most one",
        )
    schemas = _schemas([s for rf in ast.files for s in rf.schemas], report)
    types = Types(schemas, report)
    declared = [q for rf in ast.files for q in rf.quotas]
    quotas = _unique(declared, "quota", report)
    balances = _unique([b for rf in ast.files for b in rf.balances], "balance", report)
    for name, balance in balances.items():
        if name in quotas:
            report.error(
                balance.pos,
                f"balance '{name}' has the name of the quota at {quotas[name].pos}: "
                "quotas and balances share one set of names",
            )
        if balance.warn_below is not None and balance.warn_below < 0:
            report.error(balance.pos, f"balance '{name}': warn below cannot be negative")
    rules = [r for rf in ast.files for r in rf.rules]
    _unique(rules, "rule", report)
    _unique([t for rf in ast.files for t in rf.tests], "test", report)

    for quota in declared:
        _check_quota(quota, types, report)
    enforced: set[str] = set()
    inline: list[str] = []
    for rule in rules:
        _check_rule(rule, quotas, balances, types, report, enforced, inline, unparsed)
    # rules too deep to compare (an error is reported for them) stay out of the comparison
    shallow = [r for r in rules if r.condition is None or not _too_deep(r.condition)]
    for rule, other in shadowed_rules(shallow):
        report.warn(
            rule.pos,
            f"rule '{rule.name}' never takes effect: rule '{other.name}' "
            f"(priority {other.priority}) denies every request it matches",
        )
    prices = [p for rf in ast.files for p in rf.prices]
    _check_prices(prices, report)
    _check_priced_routes(rules, quotas, PriceTable.of(prices), report)
    for name, quota in quotas.items():
        if name not in enforced:
            report.warn(quota.pos, f"quota '{name}' is declared but no rule enforces it")
    for name, balance in balances.items():
        if name not in enforced:
            report.warn(balance.pos, f"balance '{name}' is declared but no rule enforces it")
    warn_untrusted(schemas.values(), rules, declared, report)
    known_quotas = [*quotas, *inline]
    rule_names = [r.name for r in rules]
    for rf in ast.files:
        for case in rf.tests:
            _check_test(case, known_quotas, rule_names, report, unparsed)
    return report.result()


def _unique(items: Iterable[_Named], what: str, report: Reporter) -> dict[str, _Named]:
    """Name -> first declaration; every later one with the same name is an error."""
    seen: dict[str, _Named] = {}
    for item in items:
        first = seen.get(item.name)
        if first is None:
            seen[item.name] = item
        else:
            report.error(item.pos, f"duplicate {what} '{item.name}': first declared at {first.pos}")
    return seen


def _schemas(schemas: list[Schema], report: Reporter) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for schema in schemas:
        first = out.get(schema.entity)
        if first is not None:
            report.error(
                schema.pos,
                f"second schema for {schema.entity}: the first is at {first.pos}; "
                "put all its keys in one schema",
            )
            continue
        out[schema.entity] = schema
        names: dict[str, Pos] = {}
        for f in schema.fields:
            if f.name in names:
                report.error(
                    f.pos,
                    f"duplicate key '{f.name}' in the {schema.entity} schema "
                    f"(first at {names[f.name]})",
                )
            names.setdefault(f.name, f.pos)
            if schema.entity == "request" and f.type.name not in ("string", "any"):
                report.error(
                    f.pos, f"request attributes are strings: request.{f.name} cannot be {f.type}"
                )
            if f.admin and schema.entity == "request":
                report.error(
                    f.pos,
                    f"request.{f.name} cannot be admin: request attributes come with each "
                    "request; only user and group keys can be",
                )
            if f.name == "id" or (schema.entity == "request" and f.name == "model"):
                report.warn(
                    f.pos,
                    f"{schema.entity}.{f.name} is built in (a string), not a metadata key",
                )
    return out


def _check_quota(quota: Quota, types: Types, report: Reporter) -> None:
    window, limit, scope = quota.window, quota.limit, quota.scope
    if window.seconds is None and window.calendar is None:
        text = window.text
        stripped = text.lstrip("0123456789_")
        if stripped != text:
            report.error(
                window.pos,
                f"bad duration '{text}': the unit must be s, m, h, d or w "
                "(like 30s, 5m, 1h, 1d, 7d)",
            )
        else:
            report.error(
                window.pos,
                f"bad window '{text}': expected a duration like 30s, 5m, 1h, 1d, "
                "or day, week, month" + did_you_mean(text, CALENDARS),
            )
    elif window.seconds is not None and window.seconds <= 0:
        report.error(window.pos, f"bad duration '{window.text}': a window must be at least 1s")
    pos = limit.pos if limit.pos.line else quota.pos
    if limit.value is not None and limit.path is None:
        if limit.value < 0:
            report.error(pos, f"quota '{quota.name}': a limit cannot be negative")
        elif limit.value == 0:
            report.warn(pos, f"quota '{quota.name}' has limit 0: it never admits a request")
    if limit.percent is not None and not 0 < limit.percent <= 100:
        report.error(pos, f"percent must be more than 0 and at most 100, not {limit.percent:g}%")
    if limit.fallback is not None and limit.fallback < 0:
        report.error(pos, f"quota '{quota.name}': a fallback limit cannot be negative")
    path = limit.path
    if path is None:
        return
    if path.root not in ("user", "group"):
        report.error(
            path.pos,
            f"a limit path must start with user. or group., not {path.root}. "
            "(request attributes are strings, not numbers)",
        )
        return
    types.limit_path(path)
    subject = scope.subject
    entity = path.root
    if subject == "user" and entity == "group":
        report.warn(
            path.pos,
            f"quota '{quota.name}' is counted for each user but its limit reads {path}: "
            "requests that name no group cannot resolve it (QUOTA_UNRESOLVED)",
        )
    elif subject in ("group", "everyone") and entity == "user":
        whose = "per group" if subject == "group" else "for everyone together"
        report.warn(
            path.pos,
            f"quota '{quota.name}' is counted {whose} but its limit reads {path}: "
            "the limit changes with whichever user asks",
        )
    elif subject == "everyone":
        report.warn(
            path.pos,
            f"quota '{quota.name}' is counted for everyone together but its limit reads "
            f"{path}: the limit changes with whichever group asks",
        )


def _check_prices(prices: list[Price], report: Reporter) -> None:
    seen: dict[str, Price] = {}
    for price in prices:
        first = seen.setdefault(price.pattern, price)
        if first is not price:
            report.error(
                price.pos, f"duplicate price for '{price.pattern}': first declared at {first.pos}"
            )
        if not price.pattern.strip():
            report.error(price.pos, "price for an empty model pattern")
        for part in _PRICE_PARTS:
            value = getattr(price, part)
            if value is not None and value < 0:
                report.error(price.pos, f"price '{price.pattern}': {part} cannot be negative")


def _check_priced_routes(
    rules: list[Rule], quotas: dict[str, Quota], table: PriceTable, report: Reporter
) -> None:
    """Warn at each model a rule routes to that no price covers, when cost quotas apply.

    Behind a gateway that reports tokens but no cost, tollway prices the tokens from the
    table; a routed model the table does not cover then counts nothing against cost quotas.
    """
    cost: list[str] = []
    for rule in rules:
        if rule.shadow:
            continue
        for action in rule.actions:
            if isinstance(action, Enforce):
                cost += [n for n in action.names if n in quotas and quotas[n].metric == "cost"]
            elif isinstance(action, InlineLimit) and action.quota.metric == "cost":
                cost.append(action.quota.name)
    if not cost:
        return
    names = ", ".join(dict.fromkeys(cost))
    warned: set[str] = set()
    for rule in rules:
        if rule.shadow:
            continue
        for action in rule.actions:
            if not isinstance(action, Route) or action.model in warned or not action.model.strip():
                continue
            if table.lookup(action.model) is None:
                warned.add(action.model)
                report.warn(
                    action.pos,
                    f"no price covers '{action.model}': cost quotas ({names}) count nothing "
                    "for requests routed to it unless the gateway reports cost_usd",
                )


def _too_deep(expr: Expr) -> bool:
    """Whether ``expr`` nests deeper than the parser allows (trees built in code may);
    iterative, so that a deep tree cannot overflow the stack while being measured."""
    stack: list[tuple[Expr, int]] = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(node, And | Or):
            stack.extend((item, depth + 1) for item in node.items)
        elif isinstance(node, Not):
            stack.append((node.item, depth + 1))
    return False


def _check_condition(expr: Expr, what: str, pos: Pos, types: Types, report: Reporter) -> None:
    if _too_deep(expr):
        report.error(pos, f"condition nested deeper than {MAX_DEPTH} levels")
        return
    types.expr(expr)
    reason = never_true(expr)
    if reason:
        report.warn(pos, f"{what}: {reason}")


def _check_enforce(
    action: Enforce,
    quotas: dict[str, Quota],
    balances: dict[str, Balance],
    report: Reporter,
    enforced: set[str],
    unparsed: frozenset[str],
) -> None:
    """Every name known; ``Q then B`` a quota then a balance of the same metric, one step."""
    known = [*quotas, *balances]
    for i, name in enumerate(action.names):
        enforced.add(name)
        pos = action.name_pos[i] if i < len(action.name_pos) else action.pos
        if name not in quotas and name not in balances and name not in unparsed:
            what = "quota or balance" if balances else "quota"
            report.error(pos, f"unknown {what} '{name}'" + did_you_mean(name, known))
        chain = action.chain(i)
        if not chain:
            continue
        then_pos = action.then_pos[i] if i < len(action.then_pos) else (pos,) * len(chain)
        enforced.update(chain)
        if len(chain) > 1:
            report.error(
                then_pos[1],
                f"'{name} then {' then '.join(chain)}' is a chain of {len(chain)} steps: "
                "a quota may be followed by one balance only",
            )
            continue
        after = chain[0]
        if name in balances:
            report.error(
                pos,
                f"'{name}' is a balance: only a quota comes before 'then' "
                f"(enforce QUOTA then {after})",
            )
        if after in quotas:
            report.error(
                then_pos[0],
                f"'{after}' is a quota: 'then' names a balance, spent once '{name}' is used up",
            )
        elif after not in balances:
            if after not in unparsed:
                report.error(
                    then_pos[0], f"unknown balance '{after}'" + did_you_mean(after, balances)
                )
        elif name in quotas and quotas[name].metric != balances[after].metric:
            report.error(
                then_pos[0],
                f"'{name} then {after}': quota '{name}' counts {quotas[name].metric} but "
                f"balance '{after}' holds {balances[after].metric}; they must match",
            )


def _check_rule(
    rule: Rule,
    quotas: dict[str, Quota],
    balances: dict[str, Balance],
    types: Types,
    report: Reporter,
    enforced: set[str],
    inline: list[str],
    unparsed: frozenset[str],
) -> None:
    if rule.condition is not None:
        what = f"rule '{rule.name}' can never match"
        _check_condition(rule.condition, what, rule.pos, types, report)
    if not rule.actions:
        report.warn(rule.pos, f"rule '{rule.name}' has no actions: matching it changes nothing")
    for action in rule.actions:
        if isinstance(action, Enforce):
            _check_enforce(action, quotas, balances, report, enforced, unparsed)
        elif isinstance(action, InlineLimit):
            inline.append(action.quota.name)
            _check_quota(action.quota, types, report)
        elif isinstance(action, Route):
            if not action.model.strip():
                report.error(action.pos, "route to an empty model name")
            if action.condition is not None:
                what = "this route never applies"
                _check_condition(action.condition, what, action.pos, types, report)
        elif isinstance(action, Check):
            if any(not name.strip() for name in action.names):
                report.error(action.pos, "check names cannot be empty")
        elif isinstance(action, Annotate):
            if not action.key.strip():
                report.error(action.pos, "annotate needs a non-empty key")
        elif isinstance(action, Deny) and not action.message.strip():
            report.warn(action.pos, "deny with an empty message: say why the request is refused")


def _check_test(
    case: TestCase, quotas: list[str], rules: list[str], report: Reporter,
    unparsed: frozenset[str],
) -> None:
    if not case.steps:
        report.warn(case.pos, f"test '{case.name}' sends no request")
    for step in case.steps:
        for key in step.request:
            if key not in REQUEST_FIELDS:
                report.error(
                    step.pos,
                    f"unknown request field '{key}': a test request may set "
                    f"{', '.join(REQUEST_FIELDS)}" + did_you_mean(key, REQUEST_FIELDS),
                )
        for expect in step.expects:
            if expect.kind in ("quotas", "exceeded"):
                known, what = quotas, "quota"
            elif expect.kind == "rules":
                known, what = rules, "rule"
            else:
                continue
            for name in expect.args:
                if name not in known and name not in unparsed:
                    report.error(expect.pos, f"unknown {what} '{name}'" + did_you_mean(name, known))
