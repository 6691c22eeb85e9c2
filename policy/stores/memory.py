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
from dataclasses import dataclass
from typing import TypeVar

from cachetools import TTLCache

from .. import windows
from ..usage import UsageEvent
from ..windows import MAX_UNITS
from .base import CounterSpec, CounterState, ForeignDecision, ReportOutcome, StoreOptions
from .events import DEFAULT_MAX_BACKLOG, MemoryEventQueue

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
class _Counter:
    fields: dict[int | str, int]
    until: int  # unix second after which nothing stored here counts


# One reserved amount: (counter key, bucket or period, metric, units, until when it counts).
# A plain tuple of strings and ints: the cyclic GC stops tracking such tuples, and up to
# ``max_holds`` of them wait for their reports, so full collections need not walk them.
_Held = tuple[str, int | str, str, int, int]
# A reservation: whom the decision was for (``quotas.owner_key``), and what it holds.
_Hold = tuple[str, tuple[_Held, ...]]


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
        t = self._clock() if now is None else now
        prepared = windows.prepare_counters("", counters)
        slot = windows.slot
        slots = [slot(c.spec.window, t) for c in prepared]
        read_fields: list[dict[int | str, int]] = []
        totals: list[int] = []
        with self._lock:
            if t >= self._next_sweep:
                self._maybe_sweep(t)
            read = self._read
            admitted = True
            for (_, key, amount, limit), (field, first, _) in zip(prepared, slots, strict=True):
                fields = read(key, field, first, consume)
                read_fields.append(fields)
                used = sum(fields.values())
                totals.append(used)
                if (used >= limit) if amount == 0 else (used + amount > limit):
                    admitted = False
            if consume and admitted:
                add = self._add
                for (_, key, amount, _), (field, _, until) in zip(prepared, slots, strict=True):
                    add(key, field, until, amount)
                if hold_id is not None and prepared:
                    self._holds[hold_id] = (hold_owner, tuple(
                        (key, field, spec.metric, amount, until)
                        for (spec, key, amount, _), (field, _, until)
                        in zip(prepared, slots, strict=True)
                    ))
                if event is not None:
                    # under the store's lock: the event exists exactly when it consumed
                    self.events.append(event)
        # fields read from this store are bucket indices (or one period) holding amounts > 0
        state = windows.counter_state
        return [
            state(spec, t, fields, amount, limit, used=used, clean=True)
            for (spec, _, amount, limit), fields, used
            in zip(prepared, read_fields, totals, strict=True)
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
    ) -> ReportOutcome:
        t = self._clock() if now is None else now
        actual_units = {m: windows.amount_units(v, m, f"actual {m}") for m, v in actual.items()}
        checked = windows.prepare_counters("", fallback)
        sec = math.floor(t)
        marker = windows.report_key("", reporter, request_id)
        with self._lock:
            if marker in self._reports:
                return "duplicate"
            hold = self._holds.get(hold_id) if hold_id is not None else None
            if hold is not None and hold[0] != owner:
                raise ForeignDecision()
            self._reports[marker] = True
            if event is not None:
                # under the store's lock: a report and its event count once, together
                self.events.append(event)
            if hold is not None:
                assert hold_id is not None
                self._holds.pop(hold_id, None)
                for key, field, metric, units, until in hold[1]:
                    # A metric the report does not mention keeps its reservation.
                    if metric in actual_units and sec < until:
                        self._add(key, field, until, actual_units[metric] - units)
                return "settled"
            for c in checked:
                field, first, until = windows.slot(c.spec.window, t)
                # counters only reports touch are pruned here
                self._read(c.key, field, first, True)
                self._add(c.key, field, until, c.amount)
            return "added"

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
