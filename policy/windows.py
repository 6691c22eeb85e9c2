"""Window and key arithmetic shared by every counter store, so that they agree exactly.

A sliding window of ``W`` seconds is split into buckets of ``b = max(1, W // 60)``
seconds (rounded *down*, so there are at least 60 buckets and the early refusal the
bucketing allows stays under ``W / 60``). Bucket ``i`` holds what was consumed during
``[i*b, (i+1)*b)``. At time ``t`` a window counts buckets ``floor((t-W)/b) .. floor(t/b)``:
the oldest one, partly expired, counts whole, so a quota never admits more than its limit.
Calendar windows (``day``, ``week``, ``month``; UTC, ISO weeks starting Monday) are one
counter per period, labelled ``2026-11-23``, ``2026-W48``, ``2026-11``.

Bucket indices and periods depend only on the whole second ``floor(t)`` (``b`` is an
integer), which is what lets the Redis script compute them from ``TIME`` exactly as
this module does (``stores/lua/common.lua`` mirrors ``slot`` and ``calendar_period``).

Amounts are kept as integer *units*: ``cost`` in micro-USD (1e-6), every other metric
in whole units. Integer sums are exact and associative, so memory and Redis, and any
order of concurrent updates, give the same totals (no float drift across millions of
``HINCRBYFLOAT``s). Amounts round *up* to a unit and limits *down*, so rounding can
never admit more than a limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple, cast

from tollway.dsl.ast import CALENDARS, Window

from .stores.base import (
    BUCKETS_PER_WINDOW,
    CounterSpec,
    CounterState,
    CounterWindow,
    bucket_seconds,
)

__all__ = [
    "BUCKETS_PER_WINDOW",
    "MAX_UNITS",
    "CounterWindow",
    "Period",
    "Slot",
    "bucket_seconds",
    "bucket_index",
    "bucket_until",
    "covered_buckets",
    "calendar_period",
    "sliding",
    "calendar",
    "window_of",
    "slot",
    "metric_scale",
    "amount_units",
    "limit_units",
    "from_units",
    "enforced_limit",
    "fits",
    "counter_key",
    "hold_key",
    "report_key",
    "balance_key",
    "balances_marker_key",
    "balance_scale",
    "balance_units",
    "counter_state",
    "Checked",
    "prepare_counters",
]

# Lua numbers are doubles: integers stay exact up to 2**53.
MAX_UNITS = 2**53 - 1
# Tolerance (in units) for float noise when converting: 0.0031 * 1e6 is 3100.0000000000005.
_EPSILON = 1e-6
_SCALES = {"cost": 1_000_000}


# ------------------------------------------------------------------ sliding windows


def bucket_index(t: float, bucket: int) -> int:
    """Index of the bucket holding time ``t`` (``floor(t / b)``, exact for integer ``b``)."""
    return math.floor(t) // bucket


def covered_buckets(t: float, window_seconds: int, bucket: int) -> tuple[int, int]:
    """First and last bucket index a window counts at time ``t`` (both inclusive)."""
    sec = math.floor(t)
    return (sec - window_seconds) // bucket, sec // bucket


def bucket_until(index: int, window_seconds: int, bucket: int) -> int:
    """The first unix second at which bucket ``index`` no longer counts in the window."""
    return (index + 1) * bucket + window_seconds


# ---------------------------------------------------------------- calendar windows


@dataclass(frozen=True, slots=True)
class Period:
    """One calendar period: its label and ``[start, end)`` in unix seconds."""

    label: str
    start: int
    end: int


_EPOCH_DAY = date(1970, 1, 1)


def _unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def calendar_period(kind: str, t: float) -> Period:
    """The UTC ``day``, ISO ``week`` (Monday 00:00) or ``month`` holding time ``t``."""
    # a period depends only on the UTC day, so it is computed once per day and kind
    return _period_of_day(kind, math.floor(t) // 86400)


@lru_cache(maxsize=64)
def _period_of_day(kind: str, day_number: int) -> Period:
    today = _EPOCH_DAY + timedelta(days=day_number)
    if kind == "day":
        return Period(today.isoformat(), _unix(today), _unix(today + timedelta(days=1)))
    if kind == "week":
        year, week, weekday = today.isocalendar()
        monday = today - timedelta(days=weekday - 1)
        return Period(f"{year:04d}-W{week:02d}", _unix(monday), _unix(monday + timedelta(days=7)))
    if kind == "month":
        first = today.replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return Period(f"{first.year:04d}-{first.month:02d}", _unix(first), _unix(following))
    raise ValueError(f"unknown calendar window {kind!r}: expected one of {', '.join(CALENDARS)}")


# ------------------------------------------------------------------------- windows


def sliding(seconds: int) -> CounterWindow:
    """A sliding window of ``seconds`` (ValueError below 1 s)."""
    return CounterWindow(seconds=seconds)


def calendar(kind: str) -> CounterWindow:
    """The UTC ``day``, ISO ``week`` or ``month`` window."""
    return CounterWindow(calendar=kind)


@lru_cache(maxsize=1024)
def window_of(window: Window) -> CounterWindow:
    """The stores' window for a rule file's window (``per 1h``, ``per month``).

    Cached by value: every decision of a quota asks for the same one.
    """
    if window.seconds is not None:
        return sliding(window.seconds)
    return calendar(str(window.calendar))


# ------------------------------------------------------------------------- slots


class Slot(NamedTuple):
    """Where a window writes at one instant and which fields it counts.

    ``field`` is the bucket index (sliding) or period label (calendar) that receives new
    usage; ``first`` the oldest counted bucket (sliding only); ``until`` the unix second
    after which what is written to ``field`` no longer counts (when the key may expire).
    """

    field: int | str
    first: int | None
    until: int

    def counts(self, field: int | str) -> bool:
        """Whether a stored field is part of the window's usage now."""
        if self.first is None:
            return field == self.field
        return isinstance(field, int) and self.first <= field <= int(self.field)

    def stale(self, field: int | str) -> bool:
        """Whether a stored field can never count again (safe to delete)."""
        if self.first is None:
            return field != self.field
        return not isinstance(field, int) or field < self.first


def slot(window: CounterWindow, t: float) -> Slot:
    """Where ``window`` writes at time ``t`` and which fields it counts."""
    seconds = window.seconds
    if seconds is not None:
        sec = math.floor(t)
        size = window.bucket
        current = sec // size
        return Slot(current, (sec - seconds) // size, (current + 1) * size + seconds)
    period = calendar_period(str(window.calendar), t)
    return Slot(period.label, None, period.end)


# ------------------------------------------------------------------------- units


def metric_scale(metric: str) -> int:
    """Units per metric unit: 1e6 for ``cost`` (micro-USD), 1 for counts."""
    return _SCALES.get(metric, 1)


def amount_units(amount: float, metric: str, what: str = "amount") -> int:
    """An amount in integer units, rounded up. Raises ValueError for NaN, negatives, overflow."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{what}: must be a finite number >= 0, got {amount!r}")
    scaled = amount * metric_scale(metric) - _EPSILON
    if scaled > MAX_UNITS:  # also inf, which ceil() could not convert
        raise ValueError(f"{what}: {amount!r} is too large for a {metric} counter")
    return max(0, math.ceil(scaled))


def limit_units(limit: float, metric: str, what: str = "limit") -> int:
    """A limit in integer units, rounded down and clamped to ``[0, MAX_UNITS]``."""
    if math.isnan(limit):
        raise ValueError(f"{what}: must be a number, got NaN")
    scaled = limit * metric_scale(metric) + _EPSILON
    if scaled >= MAX_UNITS:
        return MAX_UNITS
    if scaled <= 0:  # a negative limit, -inf included, admits nothing
        return 0
    return math.floor(scaled)


def from_units(units: int, metric: str) -> float:
    return units / metric_scale(metric)


def enforced_limit(limit: float, metric: str) -> float:
    """The limit a store enforces: rounded down to whole units (2.5 requests -> 2)."""
    return from_units(limit_units(limit, metric), metric)


def fits(used: int, amount: int, limit: int) -> bool:
    """The admission rule: ``used + amount <= limit``; a zero amount needs ``used < limit``."""
    return used < limit if amount == 0 else used + amount <= limit


# -------------------------------------------------------------------------- keys


def counter_key(prefix: str, quota: str, key: str) -> str:
    """``{prefix}q:{quota}:{key}``: one hash per counter, fields are buckets or periods."""
    return f"{prefix}q:{quota}:{key}"


def hold_key(prefix: str, hold_id: str) -> str:
    """Where a reservation is remembered until its report settles it."""
    return f"{prefix}h:{hold_id}"


def report_key(prefix: str, reporter: str, request_id: str) -> str:
    """The marker that makes a report count once, per reporter (``quotas.reporter_key``)."""
    return f"{prefix}r:{reporter}:{request_id}"


def balance_key(prefix: str, balance: str, key: str) -> str:
    """``{prefix}b:{balance}:{key}``: one hash per balance and scope key."""
    return f"{prefix}b:{balance}:{key}"


def balances_marker_key(prefix: str) -> str:
    """Present while the store holds the balances loaded from the ledger."""
    return f"{prefix}bl"


# Balances are kept in finer units than counters: cost in nano-USD, as the ledger.
_BALANCE_SCALES = {"cost": 1_000_000_000}


def balance_scale(metric: str) -> int:
    """Units per metric unit in a balance: 1e9 for ``cost`` (nano-USD), 1 for counts."""
    return _BALANCE_SCALES.get(metric, 1)


def balance_units(amount: float, metric: str, what: str = "amount") -> int:
    """A balance amount (>= 0) in integer units, rounded up (never spends too little)."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{what}: must be a finite number >= 0, got {amount!r}")
    scaled = amount * balance_scale(metric) - _EPSILON
    if scaled > MAX_UNITS:
        raise ValueError(f"{what}: {amount!r} is too large for a {metric} balance")
    return max(0, math.ceil(scaled))


# ------------------------------------------------------------------------ states


def counter_state(
    spec: CounterSpec,
    t: float,
    buckets: Mapping[int | str, int],
    amount: int,
    limit: int,
    *,
    used: int | None = None,
    clean: bool = False,
) -> CounterState:
    """The state of one counter given the fields it counts at ``t`` (units).

    ``retry_after`` walks the oldest buckets forward as they leave the window until the
    amount fits; an amount larger than the limit never fits and gets the window length.
    A calendar window frees its usage only at the period end. ``used`` may pass
    ``sum(buckets.values())`` when the caller has it; ``clean`` says every key of
    ``buckets`` is a bucket index holding a positive amount (what the stores read back),
    so nothing needs filtering.
    """
    if used is None:
        used = sum(buckets.values())
    exceeded = used >= limit if amount == 0 else used + amount > limit  # not fits()
    scale = _SCALES.get(spec.metric, 1)
    used_f = used / scale
    limit_f = limit / scale  # what is enforced: the limit rounded down to whole units
    window = spec.window
    seconds = window.seconds
    if seconds is None:
        end = calendar_period(str(window.calendar), t).end
        return CounterState(used_f, limit_f, exceeded, end - t if exceeded else 0.0, float(end))
    size = window.bucket
    # a window holding nothing frees what is counted now when the current bucket leaves it
    empty_until = float(bucket_until(math.floor(t) // size, seconds, size))
    if not exceeded:
        # only the oldest live bucket matters: when it leaves, the window frees usage
        oldest: int | None
        if clean:
            oldest = cast("int | None", min(buckets, default=None))
        else:
            oldest = min(
                (i for i, v in buckets.items() if isinstance(i, int) and v > 0), default=None
            )
        resets_at = (
            float(bucket_until(oldest, seconds, size)) if oldest is not None else empty_until
        )
        return CounterState(used_f, limit_f, False, 0.0, resets_at)
    live = sorted((i, v) for i, v in buckets.items() if isinstance(i, int) and v > 0)
    resets_at = float(bucket_until(live[0][0], seconds, size)) if live else empty_until
    retry_after = float(seconds)
    if amount <= limit and not (amount == 0 and limit == 0):
        remaining = used
        for index, value in live:
            remaining -= value
            if fits(remaining, amount, limit):
                retry_after = bucket_until(index, seconds, size) - t
                break
    return CounterState(used_f, limit_f, True, retry_after, resets_at)


class Checked(NamedTuple):
    """A counter spec validated and converted once: its store key and amounts in units."""

    spec: CounterSpec
    key: str
    amount: int
    limit: int


# Below these, amounts and limits convert without any range check: times the largest
# scale (1e6) they stay far under MAX_UNITS, and NaN fails the comparison.
_FAST_AMOUNT = 1e9


def prepare_counters(prefix: str, counters: Iterable[CounterSpec]) -> list[Checked]:
    """Validate and convert a decision's counters; ValueError before anything is touched."""
    out: list[Checked] = []
    seen: set[str] = set()
    ceil, floor, scales = math.ceil, math.floor, _SCALES
    for spec in counters:
        if not isinstance(spec, CounterSpec):
            raise ValueError(f"counters: expected CounterSpec, got {type(spec).__name__}")
        key = counter_key(prefix, spec.quota, spec.key)
        if key in seen:
            raise ValueError(f"counters: {spec.quota!r} for {spec.key!r} appears twice")
        seen.add(key)
        metric, amount, limit = spec.metric, spec.amount, spec.limit
        scale = scales.get(metric, 1)
        # the arithmetic of amount_units / limit_units, without their range checks where
        # the range makes them moot; anything else goes through them (and their messages)
        if 0 <= amount < _FAST_AMOUNT:
            amount_u = max(0, ceil(amount * scale - _EPSILON))
        else:
            amount_u = amount_units(amount, metric, f"quota {spec.quota}: amount")
        if 0 <= limit < _FAST_AMOUNT:
            limit_u = floor(limit * scale + _EPSILON)
        else:
            limit_u = limit_units(limit, metric, f"quota {spec.quota}: limit")
        out.append(Checked(spec, key, amount_u, limit_u))
    return out
