"""The arithmetic of spending from balances, shared by every counter store (the Redis
scripts mirror it in ``lua/common.lua``).

A balance is kept in integer units (``windows.balance_scale``: nano-USD for ``cost``).
``enforce Q then B`` spends the quota first: the quota takes what room it has left (in
its own, coarser units) and the balance the rest, so one request may straddle both. A
report replaces the reservation by the actual amount: below the estimate the balance
is refunded first; above it, the excess goes to the balance when the reservation
reached it, else to the quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..windows import Checked, balance_key, balance_scale, balance_units, metric_scale
from .base import BalanceSpec, BalanceState, CounterState

__all__ = [
    "PreparedBalance", "prepare_balances", "chain_split", "settle_split", "fits_balance",
    "chained_state", "balance_state",
]


class PreparedBalance(NamedTuple):
    """A balance spec checked once: its store key, the amount in balance units, the
    position of its quota among the decision's counters (-1: alone) and how many balance
    units one unit of that quota is worth."""

    spec: BalanceSpec
    key: str
    amount: int
    after: int
    ratio: int


def prepare_balances(
    prefix: str, balances: Sequence[BalanceSpec], counters: Sequence[Checked]
) -> list[PreparedBalance]:
    """Validate and convert a decision's balances; ValueError before anything is touched."""
    out: list[PreparedBalance] = []
    seen: set[str] = set()
    position = {c.spec.quota: i for i, c in enumerate(counters)}
    for spec in balances:
        if not isinstance(spec, BalanceSpec):
            raise ValueError(f"balances: expected BalanceSpec, got {type(spec).__name__}")
        key = balance_key(prefix, spec.balance, spec.key)
        if key in seen:
            raise ValueError(f"balances: {spec.balance!r} for {spec.key!r} appears twice")
        seen.add(key)
        after = position.get(spec.after, -1) if spec.after else -1
        if after >= 0 and counters[after].spec.metric != spec.metric:
            raise ValueError(f"balances: {spec.balance!r} and quota {spec.after!r} differ in metric")
        ratio = balance_scale(spec.metric) // metric_scale(spec.metric)
        amount = balance_units(spec.amount, spec.metric, f"balance {spec.balance}: amount")
        out.append(PreparedBalance(spec, key, amount, after, ratio))
    return out


def chain_split(quota_amount: int, room: int, amount: int, ratio: int) -> tuple[int, int]:
    """What the quota and the balance take of one amount: ``(quota units, balance units)``.

    ``quota_amount`` and ``room`` (limit less used, never below 0) are in quota units,
    ``amount`` is the same amount in balance units.
    """
    take = quota_amount if quota_amount <= room else room
    rest = amount - take * ratio
    return take, rest if rest > 0 else 0


def fits_balance(need: int, available: int, covered: bool) -> bool:
    """Whether a balance covers ``need`` units; a request needing nothing from it fits
    when its quota had room (``covered``) or the balance has anything left."""
    if need > 0:
        return need <= available
    return covered or available > 0


def settle_split(actual: int, quota_held: int, balance_held: int, ratio: int) -> tuple[int, int]:
    """Who pays the actual amount (balance units) of a reservation that held
    ``quota_held`` quota units and ``balance_held`` balance units:
    ``(quota units, balance units)``."""
    held_by_quota = quota_held * ratio
    if balance_held > 0 or actual <= held_by_quota:
        share = actual if actual < held_by_quota else held_by_quota
    else:
        share = actual
    quota_units = -(-share // ratio)  # rounded up, as counter amounts are
    return quota_units, actual - share


def chained_state(state: CounterState, refused: bool) -> CounterState:
    """A quota's state when a balance takes what it has no room for: exceeded only when
    the two together could not cover the amount."""
    if refused == state.exceeded:
        return state
    return CounterState(
        state.used, state.limit, refused, state.retry_after if refused else 0.0,
        state.resets_at,
    )


def balance_state(
    b: PreparedBalance, before: tuple[int, int], need: int, taken: bool, refused: bool
) -> BalanceState:
    """A balance as one decision saw it, from the units a store read."""
    balance, reserved = before
    scale = balance_scale(b.spec.metric)
    return BalanceState(
        (balance - reserved) / scale,
        reserved / scale,
        need / scale if taken else 0.0,
        refused,
    )
