"""Counters in this process's memory: the default store, nothing to install.

One lock makes check-and-consume atomic. Expired buckets and periods are pruned when a
counter is touched, and a sweep once a minute (of the store's clock) drops counters no
one touches any more, so memory follows the set of *active* counters.

Two tables are capped (``StoreOptions``): open reservations and the request_ids that make
reports idempotent. Past a cap the oldest entry is dropped early and counted
(``evictions()``). A reservation dropped that way is released first, so its report,
which then finds no reservation and adds its actuals, never counts next to the estimate.
A request_id dropped early is forgotten: a retry of that report would count again, so
the cap must exceed the reports of the retry horizon (docs/operations.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from cachetools import TTLCache

from .. import windows
from ..usage import LedgerEntry, UsageEvent
from ..windows import MAX_UNITS
from .base import (
    BalanceSpec,
    BalanceState,
    BalancesUnloaded,
    CounterSpec,
    CounterState,
    ForeignDecision,
    ReportOutcome,
    StoreOptions,
)
from .events import DEFAULT_MAX_BACKLOG, MemoryEventQueue
from .spending import (
    balance_state,
    chain_split,
    chained_state,
    fits_balance,
    prepare_balances,
    settle_split,
)

__all__ = ["MemoryCounterStore", "HOLD_TTL", "REPORT_TTL"]

K = TypeVar("K")
V = TypeVar("V")

# A reservation outlives any sane model call; after an hour the report falls back to
# adding its actuals (the reservation then simply stays counted).
HOLD_TTL = 3600.0
# Gateways retry reports within minutes; a day of request_ids covers any retry policy.
REPORT_TTL = 86400.0
_SWEEP_EVERY = 60.0


@dataclass(slots=True)
class _Balance:
    """One balance: credits less settled spending, and the reservations open on it
    (hold_id -> (units, until when it holds)); both in balance units."""

    balance: int
    holds: dict[str, tuple[int, float]]


@dataclass(slots=True)
class _Counter:
    fields: dict[int | str, int]
    until: int  # unix second after which nothing stored here counts


# One reserved amount: (counter key, bucket or period, metric, units, until when it counts).
# A plain tuple of strings and ints: the cyclic GC stops tracking such tuples, and up to
# ``max_holds`` of them wait for their reports, so full collections need not walk them.
_Held = tuple[str, int | str, str, int, int]
# A reserved balance amount: (balance key, units, position of its quota in the held
# counters or -1, balance units per quota unit, balance name, scope key, metric).
_HeldBalance = tuple[str, int, int, int, str, str, str]
# A reservation: whom the decision was for (``quotas.owner_key``), what it holds, and
# what it holds of balances.
_Hold = tuple[str, tuple[_Held, ...], tuple[_HeldBalance, ...]]


class _Capped(TTLCache[K, V]):
    """A ``TTLCache`` that tells ``evicted`` about each entry it drops to make room.

    Entries that simply expire are not reported: only early evictions, which a cap causes.
    """

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float],
        evicted: Callable[[K, V], None],
    ) -> None:
        super().__init__(maxsize, ttl, timer=timer)
        self._evicted = evicted

    def popitem(self) -> tuple[K, V]:
        key, value = super().popitem()
        self._evicted(key, value)
        return key, value


class MemoryCounterStore:
    """A ``CounterStore`` for one process. ``clock`` is injectable for tests."""

    name = "memory"
    blocking = False
    timeout = 0.0  # nothing waits: no store budget to keep

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        hold_ttl: float = HOLD_TTL,
        report_ttl: float = REPORT_TTL,
        options: StoreOptions | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self._clock = clock
        self.options = options or StoreOptions()
        self.events = MemoryEventQueue(max_backlog)
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}
        self._balances: dict[str, _Balance] = {}
        self._balances_loaded = False
        self._credits: _Capped[str, bool] = _Capped(
            self.options.max_report_ids, report_ttl, clock, self._forget
        )
        self._hold_ttl = hold_ttl
        self._evictions = {"reservations": 0, "report_ids": 0}
        # Both caches expire on the store's clock so that tests moving time see it.
        self._holds: _Capped[str, _Hold] = _Capped(
            self.options.max_reservations, hold_ttl, clock, self._release
        )
        self._reports: _Capped[str, bool] = _Capped(
            self.options.max_report_ids, report_ttl, clock, self._forget
        )
        self._next_sweep = -math.inf

    # ------------------------------------------------------------------ protocol

    def check_and_consume(
        self,
        counters: Sequence[CounterSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        hold_owner: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,  # nothing here waits
    ) -> list[CounterState]:
        return self.check_and_spend(
            counters, (), consume=consume, hold_id=hold_id, hold_owner=hold_owner, now=now,
            event=event,
        )[0]

    def check_and_spend(
        self,
        counters: Sequence[CounterSpec],
        balances: Sequence[BalanceSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        hold_owner: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,  # nothing here waits
    ) -> tuple[list[CounterState], list[BalanceState]]:
        t = self._clock() if now is None else now
        prepared = windows.prepare_counters("", counters)
        spends = prepare_balances("", balances, prepared)
        slot = windows.slot
        slots = [slot(c.spec.window, t) for c in prepared]
        read_fields: list[dict[int | str, int]] = []
        totals: list[int] = []
        amounts = [c.amount for c in prepared]
        chained = [False] * len(prepared)
        refused = [False] * len(prepared)
        seen: list[tuple[int, int]] = []  # per balance: (balance, reserved) before
        needs: list[int] = []
        balance_refused: list[bool] = []
        with self._lock:
            if spends and not self._balances_loaded:
                raise BalancesUnloaded("balances are not loaded")
            if t >= self._next_sweep:
                self._maybe_sweep(t)
            read = self._read
            admitted = True
            for i, ((_, key, amount, limit), (field, first, _)) in enumerate(
                zip(prepared, slots, strict=True)
            ):
                fields = read(key, field, first, consume)
                read_fields.append(fields)
                used = sum(fields.values())
                totals.append(used)
                if (used >= limit) if amount == 0 else (used + amount > limit):
                    refused[i] = True
            for b in spends:
                balance, reserved = self._balance_now(b.key, t)
                seen.append((balance, reserved))
                available = balance - reserved
                covered = False
                need = b.amount
                if b.after >= 0:
                    i = b.after
                    chained[i] = True
                    room = max(0, prepared[i].limit - totals[i])
                    take, need = chain_split(prepared[i].amount, room, b.amount, b.ratio)
                    amounts[i] = take
                    covered = prepared[i].amount > 0 or totals[i] < prepared[i].limit
                ok = fits_balance(need, available, covered)
                if b.after >= 0:
                    refused[b.after] = not ok
                needs.append(need)
                balance_refused.append(not ok)
            admitted = not any(refused) and not any(balance_refused)
            if consume and admitted:
                add = self._add
                for (_, key, _, _), amount, (field, _, until) in zip(
                    prepared, amounts, slots, strict=True
                ):
                    add(key, field, until, amount)
                for b, need in zip(spends, needs, strict=True):
                    if not need:
                        continue
                    entry = self._balances.setdefault(b.key, _Balance(0, {}))
                    if hold_id is None:
                        entry.balance -= need  # nothing will settle it: spent now
                    else:
                        entry.holds[hold_id] = (need, t + self._hold_ttl)
                if hold_id is not None and (prepared or spends):
                    self._holds[hold_id] = (hold_owner, tuple(
                        (key, field, spec.metric, amount, until)
                        for (spec, key, _, _), amount, (field, _, until)
                        in zip(prepared, amounts, slots, strict=True)
                    ), tuple(
                        (b.key, need, b.after, b.ratio, b.spec.balance, b.spec.key, b.spec.metric)
                        for b, need in zip(spends, needs, strict=True)
                    ))
                if event is not None:
                    # under the store's lock: the event exists exactly when it consumed
                    self.events.append(event)
        # fields read from this store are bucket indices (or one period) holding amounts > 0
        state = windows.counter_state
        states = [
            state(spec, t, fields, amount, limit, used=used, clean=True)
            for (spec, _, amount, limit), fields, used
            in zip(prepared, read_fields, totals, strict=True)
        ]
        for i, chain in enumerate(chained):
            if chain:
                states[i] = chained_state(states[i], refused[i])
        taken = consume and admitted
        return states, [
            balance_state(b, before, need, taken, no)
            for b, before, need, no in zip(spends, seen, needs, balance_refused, strict=True)
        ]

    def record_report(
        self,
        request_id: str,
        hold_id: str | None,
        actual: Mapping[str, float],
        fallback: Sequence[CounterSpec],
        *,
        owner: str = "*",
        reporter: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,  # nothing here waits
        balances: Sequence[BalanceSpec] = (),
    ) -> ReportOutcome:
        t = self._clock() if now is None else now
        actual_units = {m: windows.amount_units(v, m, f"actual {m}") for m, v in actual.items()}
        checked = windows.prepare_counters("", fallback)
        spends = [b for b in prepare_balances("", balances, checked) if b.after < 0]
        sec = math.floor(t)
        marker = windows.report_key("", reporter, request_id)
        with self._lock:
            if marker in self._reports:
                return "duplicate"
            hold = self._holds.get(hold_id) if hold_id is not None else None
            if hold is not None and hold[0] != owner:
                raise ForeignDecision()
            if hold is None and spends and not self._balances_loaded:
                raise BalancesUnloaded("balances are not loaded")
            self._reports[marker] = True
            ledger: list[LedgerEntry] = []
            if hold is not None:
                assert hold_id is not None
                self._holds.pop(hold_id, None)
                shares = self._settle_balances(hold_id, hold[1], hold[2], actual, ledger)
                for i, (key, field, metric, units, until) in enumerate(hold[1]):
                    # A metric the report does not mention keeps its reservation.
                    if metric in actual_units and sec < until:
                        used = shares.get(i, actual_units[metric])
                        self._add(key, field, until, used - units)
                self._append(event, ledger)
                return "settled"
            for c in checked:
                field, first, until = windows.slot(c.spec.window, t)
                # counters only reports touch are pruned here
                self._read(c.key, field, first, True)
                self._add(c.key, field, until, c.amount)
            for b in spends:
                entry = self._balances.setdefault(b.key, _Balance(0, {}))
                entry.balance -= b.amount
                ledger.append(LedgerEntry.spend(b.spec.balance, b.spec.key, b.amount, marker))
            self._append(event, ledger)
            return "added"

    # ------------------------------------------------------------------ balances

    @property
    def balances_loaded(self) -> bool:
        return self._balances_loaded

    def load_balances(self, totals: Mapping[tuple[str, str], int]) -> bool:
        """Set every balance from the ledger's totals ((balance, scope key) -> units) and
        mark them loaded; False (nothing changed) when they were loaded already."""
        with self._lock:
            if self._balances_loaded:
                return False
            self._balances = {
                windows.balance_key("", name, key): _Balance(units, {})
                for (name, key), units in totals.items()
            }
            self._balances_loaded = True
            return True

    def credit(
        self, entry: LedgerEntry, metric: str, *, event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> bool:
        """Add ``entry.amount`` units to a balance, once per ``entry.ref``; its event (the
        ledger entry) is appended in the same step. False for a ref seen already."""
        key = windows.balance_key("", entry.balance, entry.key)
        marker = f"{entry.balance}:{entry.key}:{entry.ref}"
        with self._lock:
            if not self._balances_loaded:
                raise BalancesUnloaded("balances are not loaded")
            if marker in self._credits:
                return False
            self._credits[marker] = True
            self._balances.setdefault(key, _Balance(0, {})).balance += entry.amount
            if event is not None:
                self.events.append(event)
            return True

    def balance(self, balance: str, key: str) -> tuple[int, int]:
        """``(balance, reserved)`` of one balance now, in balance units."""
        with self._lock:
            if not self._balances_loaded:
                raise BalancesUnloaded("balances are not loaded")
            return self._balance_now(windows.balance_key("", balance, key), self._clock())

    def _balance_now(self, key: str, t: float) -> tuple[int, int]:
        """``(balance, reserved)``, reservations past their time dropped."""
        entry = self._balances.get(key)
        if entry is None:
            return 0, 0
        holds = entry.holds
        if holds:
            for hold_id in [h for h, (_, until) in holds.items() if until <= t]:
                del holds[hold_id]
        return entry.balance, sum(units for units, _ in holds.values())

    def _settle_balances(
        self,
        hold_id: str,
        held: tuple[_Held, ...],
        balances: tuple[_HeldBalance, ...],
        actual: Mapping[str, float],
        ledger: list[LedgerEntry],
    ) -> dict[int, int]:
        """Replace the balance reservations of a hold by their share of the actuals;
        returns the units each chained quota keeps (by position in ``held``)."""
        shares: dict[int, int] = {}
        for key, units, after, ratio, name, scope, metric in balances:
            entry = self._balances.setdefault(key, _Balance(0, {}))
            entry.holds.pop(hold_id, None)
            amount = windows.balance_units(actual.get(metric, 0.0), metric, f"actual {metric}")
            if after >= 0:
                quota_units, paid = settle_split(amount, held[after][3], units, ratio)
                shares[after] = quota_units
            else:
                paid = amount
            if paid:
                entry.balance -= paid
                ledger.append(LedgerEntry.spend(name, scope, paid, hold_id))
        return shares

    def _append(self, event: UsageEvent | None, ledger: list[LedgerEntry]) -> None:
        if event is None:
            return
        self.events.append(replace(event, ledger=tuple(ledger)) if ledger else event)

    def record_event(self, event: UsageEvent, *, deadline: float | None = None) -> None:
        # no counters change with it, so the queue's own safety is all it needs
        self.events.append(event)

    def entries(self) -> dict[str, int]:
        """What the store holds now, by kind (``tollway_store_entries``)."""
        return {
            "counters": len(self._counters),
            "reservations": len(self._holds),
            "report_ids": len(self._reports),
        }

    def evictions(self) -> dict[str, int]:
        """Entries dropped early to respect a cap, by kind (``tollway_store_evictions_total``)."""
        return dict(self._evictions)

    def close(self) -> None:
        with self._lock:
            self._counters.clear()
            self._balances.clear()
            self._balances_loaded = False
            # emptied by dropping them, not one by one (that would count as evictions)
            self._holds = _Capped(
                self.options.max_reservations, self._holds.ttl, self._clock, self._release
            )
            self._reports = _Capped(
                self.options.max_report_ids, self._reports.ttl, self._clock, self._forget
            )

    # ------------------------------------------------------------------ internals

    def _release(self, hold_id: str, hold: _Hold) -> None:
        """A reservation dropped to make room: give back what it still holds (under the
        store's lock, which the insert that caused it holds)."""
        self._evictions["reservations"] += 1
        sec = math.floor(self._clock())
        for key, field, _, units, until in hold[1]:
            if sec < until:
                self._add(key, field, until, -units)
        for held in hold[2]:
            entry = self._balances.get(held[0])
            if entry is not None:
                entry.holds.pop(hold_id, None)

    def _forget(self, request_id: str, _: bool) -> None:
        self._evictions["report_ids"] += 1

    def _read(
        self, key: str, field: int | str, first: int | None, prune: bool
    ) -> dict[int | str, int]:
        """The fields of counter ``key`` that count in the slot ``(field, first)`` now.

        With ``prune``, fields that can never count again are dropped (``Slot.stale``).
        """
        counter = self._counters.get(key)
        if counter is None:
            return {}
        fields = counter.fields
        if first is None:  # a calendar period: only its own label counts
            if prune and (len(fields) > 1 or field not in fields):
                for f in [f for f in fields if f != field]:
                    del fields[f]
            value = fields.get(field)
            return {} if value is None else {field: value}
        current = field
        if prune:
            stale = [f for f in fields if not isinstance(f, int) or f < first]
            for f in stale:
                del fields[f]
            # every field left is a bucket index >= first
            return {f: v for f, v in fields.items() if f <= current}  # type: ignore[operator]
        return {
            f: v
            for f, v in fields.items()
            if isinstance(f, int) and first <= f <= current  # type: ignore[operator]
        }

    def _add(self, key: str, field: int | str, until: int, delta: int) -> None:
        """Add ``delta`` units to one field, never below zero nor above ``MAX_UNITS``
        (where the Redis store saturates too)."""
        if delta == 0:
            return
        counter = self._counters.get(key)
        if counter is None:
            if delta < 0:
                return
            counter = self._counters[key] = _Counter({}, until)
        fields = counter.fields
        value = fields.get(field, 0) + delta
        if value > 0:
            fields[field] = value if value <= MAX_UNITS else MAX_UNITS
        else:
            fields.pop(field, None)
        if until > counter.until:
            counter.until = until

    def _maybe_sweep(self, t: float) -> None:
        """Drop whole counters whose every field has expired (at most once a minute)."""
        if t < self._next_sweep:
            return
        self._next_sweep = t + _SWEEP_EVERY
        dead = [k for k, c in self._counters.items() if c.until <= t]
        for k in dead:
            del self._counters[k]

