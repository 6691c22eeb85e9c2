"""From quota declarations to the counters one decision touches.

A quota names a metric, a limit, a window and a scope; for a concrete request it becomes
a ``CounterSpec``: whose counter (the scope key), how much is allowed (the limit resolved
against the entities' metadata) and how much this request adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from tollway.dsl.ast import Balance, Limit, Quota, Scope
from tollway.dsl.compiled import EvalContext
from tollway.dsl.values import resolve

from .stores.base import BalanceSpec, CounterSpec
from .windows import window_of

__all__ = [
    "subject_key", "scope_key", "owner_key", "reporter_key", "resolve_limit", "metric_amounts",
    "Unresolved", "counters_for", "balances_for",
]


@lru_cache(maxsize=16384)
def _enc(ident: str) -> str:
    # ids are opaque; encoding keeps the separators below unambiguous. The same few
    # thousand ids and models recur in every decision, hence the cache.
    return quote(ident, safe="")


def subject_key(subject: str, user_id: str | None, group_id: str | None) -> str | None:
    """Whose counter it is: ``u=<user>``, ``g=<group>``, ``g=<group>/u=<user>`` or ``*``
    (``everyone``); None when the request lacks the subject's entity (a user-only request
    has no group key: group quotas do not apply to it)."""
    if subject == "user":
        return None if user_id is None else f"u={_enc(user_id)}"
    if subject == "group":
        return None if group_id is None else f"g={_enc(group_id)}"
    if subject == "user_in_group":
        if user_id is None or group_id is None:
            return None
        return f"g={_enc(group_id)}/u={_enc(user_id)}"
    return "*"


def scope_key(scope: Scope, user_id: str | None, group_id: str | None, model: str) -> str | None:
    """The counter key inside a quota (``subject_key``, then ``+m=<model>`` for ``and
    model`` scopes), or None when the request lacks the scope's entity. Ids and models
    are percent-encoded, so the separators stay unambiguous. The one place a scope key
    is spelled."""
    key = subject_key(scope.subject, user_id, group_id)
    if key is None or not scope.per_model:
        return key
    return f"{key}+m={_enc(model)}"


def owner_key(user_id: str | None, group_id: str | None) -> str:
    """Whom a decision was for, in the scope keys' spelling: a report that quotes the
    decision must name the same user and group (``*`` when it named neither)."""
    if user_id and group_id:
        subject = "user_in_group"
    else:
        subject = "user" if user_id else "group" if group_id else "everyone"
    key = subject_key(subject, user_id, group_id)
    assert key is not None
    return key


def reporter_key(user_id: str | None, group_id: str | None) -> str:
    """Whose request ids a report's idempotency marker belongs to: its user's (else its
    group's), so one caller's ``request_id`` never silences another's report."""
    return owner_key(user_id, None if user_id else group_id)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def resolve_limit(limit: Limit, ctx: EvalContext) -> float | None:
    """The limit for this request, or None when its path is missing and there is no fallback."""
    if limit.path is None:
        return limit.value
    base = _number(resolve(ctx, limit.path))
    if base is None:
        base = limit.fallback
    if base is None:
        return None
    if limit.percent is not None:
        return base * limit.percent / 100.0
    return base


def metric_amounts(
    input_tokens: int, output_tokens: int, cost_usd: float, requests: float
) -> dict[str, float]:
    """What one request counts for each metric."""
    return {
        "requests": requests,
        "tokens": float(input_tokens + output_tokens),
        "input_tokens": float(input_tokens),
        "output_tokens": float(output_tokens),
        "cost": cost_usd,
    }


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A quota whose limit could not be resolved for this request (fail closed)."""

    quota: Quota
    key: str


def counters_for(
    names: tuple[str, ...],
    quotas: Mapping[str, Quota],
    ctx: EvalContext,
    model: str,
    amounts: Mapping[str, float],
) -> tuple[list[CounterSpec], list[Unresolved]]:
    """The counters of the named quotas that apply to this request, and those unresolved."""
    specs: list[CounterSpec] = []
    unresolved: list[Unresolved] = []
    user_id, group_id = ctx.user_id, ctx.group_id
    for name in names:
        quota = quotas[name]
        key = scope_key(quota.scope, user_id, group_id, model)
        if key is None:
            continue
        limit_ast = quota.limit
        limit = limit_ast.value if limit_ast.path is None else resolve_limit(limit_ast, ctx)
        if limit is None:
            unresolved.append(Unresolved(quota, key))
            continue
        specs.append(
            CounterSpec(
                name,
                quota.metric,
                key,
                window_of(quota.window),
                limit,
                amounts[quota.metric],
                quota.on_store_error,
            )
        )
    return specs, unresolved


def balances_for(
    spends: tuple[tuple[str, str], ...],
    balances: Mapping[str, Balance],
    counters: list[CounterSpec],
    ctx: EvalContext,
    model: str,
    amounts: Mapping[str, float],
) -> list[BalanceSpec]:
    """The balances a request spends from ((balance, quota first or "") pairs): those
    whose scope applies to it. A chained quota that does not apply leaves its balance
    to pay alone."""
    specs: list[BalanceSpec] = []
    counted = {c.quota for c in counters}
    user_id, group_id = ctx.user_id, ctx.group_id
    for name, after in spends:
        balance = balances[name]
        key = scope_key(balance.scope, user_id, group_id, model)
        if key is None:
            continue
        specs.append(BalanceSpec(
            name, balance.metric, key, amounts[balance.metric], after if after in counted else ""
        ))
    return specs
