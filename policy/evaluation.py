"""Combining the matched rules into one verdict (docs/language.md, "Combining matching rules").

Pure: no counters, no I/O. The engine asks for a verdict, then checks the verdict's
quotas against the store. Shadow rules are combined apart and never enforce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tollway.dsl.ast import Default, Reason
from tollway.dsl.compiled import CompiledRule, EvalContext

from .model import ShadowOutcome

__all__ = ["Verdict", "combine", "combine_shadow"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Everything about a decision except its quotas' counters.

    ``reason`` is "DENIED_BY_RULE", "DEFAULT_DENY" or None (not denied by rules; the
    quotas decide). ``quotas`` is the union of the matched rules' quotas, highest
    priority first, each once.
    """

    matched: tuple[str, ...]
    reason: Reason | None
    message: str
    quotas: tuple[str, ...]
    model: str
    routed: bool
    checks: tuple[str, ...]
    annotations: dict[str, str]
    # (balance, quota spent first or ""), each balance and each such quota once
    balances: tuple[tuple[str, str], ...] = ()


def _spends(rules: Sequence[CompiledRule]) -> tuple[tuple[str, str], ...]:
    """The matched rules' balances, highest priority first: a balance is spent once, and
    a quota's overflow goes to one balance (the first rule's)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for rule in rules:
        for balance, after in rule.balances:
            if balance in seen or (after and after in seen):
                continue
            seen.add(balance)
            if after:
                seen.add(after)
            out.append((balance, after))
    return tuple(out)


def _route(rules: Sequence[CompiledRule], ctx: EvalContext, requested: str) -> tuple[str, bool]:
    # rules are in priority order, so the first route whose `if` holds wins
    for rule in rules:
        for route in rule.routes:
            if route.test is None or route.test(ctx):
                return route.model, route.model != requested
    return requested, False


def _union(groups: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


def combine(
    rules: Sequence[CompiledRule], default: Default, ctx: EvalContext, requested: str
) -> Verdict:
    """Combine the enforced (non-shadow) matched rules, given in priority order."""
    reason: Reason | None = None
    message = ""
    deny = next((r for r in rules if r.deny is not None), None)
    if deny is not None:
        reason, message = "DENIED_BY_RULE", deny.deny or ""
    elif default.effect == "deny" and not any(r.allow for r in rules):
        reason, message = "DEFAULT_DENY", default.message
    model, routed = _route(rules, ctx, requested)
    annotations: dict[str, str] = {}
    for rule in rules:
        for key, value in rule.annotations:
            annotations.setdefault(key, value)  # higher priority came first and wins
    return Verdict(
        matched=tuple(r.name for r in rules),
        reason=reason,
        message=message,
        quotas=_union([r.quotas for r in rules]),
        model=model,
        routed=routed,
        checks=_union([r.checks for r in rules]),
        annotations=annotations,
        balances=_spends(rules) if any(r.balances for r in rules) else (),
    )


def combine_shadow(
    rules: Sequence[CompiledRule], ctx: EvalContext, requested: str
) -> ShadowOutcome:
    """What the matched shadow rules would have done on their own."""
    if not rules:
        return ShadowOutcome(model=requested)
    deny = next((r for r in rules if r.deny is not None), None)
    model, routed = _route(rules, ctx, requested)
    return ShadowOutcome(
        matched_rules=tuple(r.name for r in rules),
        denied=deny is not None,
        message=(deny.deny or "") if deny is not None else "",
        model=model,
        routed=routed,
        checks=_union([r.checks for r in rules]),
    )
