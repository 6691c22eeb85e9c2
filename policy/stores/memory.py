"""Counters in this process's memory: the default store, nothing to install.

One lock makes check-and-consume atomic. Expired buckets and periods are pruned when a
counter is touched, and a sweep once a minute (of the store's clock) drops counters no
one touches any more, so memory follows the set of *active* counters.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cachetools import TTLCache

from .. import windows
from ..usage import Retention, UsageEvent
from ..windows import Slot
from .base import CounterSpec, CounterState, ReportOutcome
from .usage_memory import MemoryUsage

__all__ = ["MemoryCounterStore", "HOLD_TTL", "REPORT_TTL"]

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


@dataclass(frozen=True, slots=True)
class _Held:
    """One reserved amount: which counter, which bucket or period, until when it counts."""

    key: str
    field: int | str
    metric: str
    units: int
    until: int


class MemoryCounterStore:
    """A ``CounterStore`` for one process. ``clock`` is injectable for tests."""

    name = "memory"
    blocking = False

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        hold_ttl: float = HOLD_TTL,
        max_holds: int = 100_000,
        report_ttl: float = REPORT_TTL,
        max_reports: int = 200_000,
        retention: Retention | None = None,
    ) -> None:
        self._clock = clock
        self.retention = retention or Retention()
        self.usage = MemoryUsage(self.retention)
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}
        # Both caches expire on the store's clock so that tests moving time see it.
        self._holds: TTLCache[str, tuple[_Held, ...]] = TTLCache(max_holds, hold_ttl, timer=clock)
        self._reports: TTLCache[str, bool] = TTLCache(max_reports, report_ttl, timer=clock)
        self._next_sweep = -math.inf

    # ------------------------------------------------------------------ protocol

    def check_and_consume(
        self,
        counters: Sequence[CounterSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        now: float | None = None,
    ) -> list[CounterState]:
        t = self._clock() if now is None else now
        checked = windows.check_counters("", counters)
        slots = [windows.slot(c.spec.window, t) for c in checked]
        with self._lock:
            self._maybe_sweep(t)
            seen = [self._read(c.key, s, prune=consume) for c, s in zip(checked, slots, strict=True)]
            admitted = all(
                windows.fits(sum(fields.values()), c.amount, c.limit)
                for c, fields in zip(checked, seen, strict=True)
            )
            if consume and admitted:
                for c, s in zip(checked, slots, strict=True):
                    self._add(c.key, s.field, s.until, c.amount)
                if hold_id is not None and checked:
                    self._holds[hold_id] = tuple(
                        _Held(c.key, s.field, c.spec.metric, c.amount, s.until)
                        for c, s in zip(checked, slots, strict=True)
                    )
        return [
            windows.counter_state(c.spec, t, fields, c.amount, c.limit)
            for c, fields in zip(checked, seen, strict=True)
        ]

    def record_report(
        self,
        request_id: str,
        hold_id: str | None,
        actual: Mapping[str, float],
        fallback: Sequence[CounterSpec],
        *,
        now: float | None = None,
        usage: UsageEvent | None = None,
    ) -> ReportOutcome:
        t = self._clock() if now is None else now
        actual_units = {m: windows.amount_units(v, m, f"actual {m}") for m, v in actual.items()}
        checked = windows.check_counters("", fallback)
        sec = math.floor(t)
        with self._lock:
            if request_id in self._reports:
                return "duplicate"
            self._reports[request_id] = True
            if usage is not None:
                # under the store's lock: a report and its usage count once, together
                self.usage.apply(usage)
            held = self._holds.pop(hold_id, None) if hold_id is not None else None
            if held is not None:
                for h in held:
                    # A metric the report does not mention keeps its reservation.
                    if h.metric in actual_units and sec < h.until:
                        self._add(h.key, h.field, h.until, actual_units[h.metric] - h.units)
                return "settled"
            for c in checked:
                s = windows.slot(c.spec.window, t)
                self._read(c.key, s, prune=True)  # counters only reports touch are pruned here
                self._add(c.key, s.field, s.until, c.amount)
            return "added"

    def close(self) -> None:
        with self._lock:
            self._counters.clear()
            self._holds.clear()
            self._reports.clear()

    # ------------------------------------------------------------------ internals

    def _read(self, key: str, slot: Slot, *, prune: bool) -> dict[int | str, int]:
        """The fields of counter ``key`` that count now; with ``prune``, drop dead ones."""
        counter = self._counters.get(key)
        if counter is None:
            return {}
        if prune:
            for f in [f for f in counter.fields if slot.stale(f)]:
                del counter.fields[f]
        return {f: v for f, v in counter.fields.items() if slot.counts(f)}

    def _add(self, key: str, field: int | str, until: int, delta: int) -> None:
        """Add ``delta`` units to one field, never going below zero."""
        if delta == 0:
            return
        counter = self._counters.get(key)
        if counter is None:
            if delta < 0:
                return
            counter = self._counters[key] = _Counter({}, until)
        value = counter.fields.get(field, 0) + delta
        if value > 0:
            counter.fields[field] = value
        else:
            counter.fields.pop(field, None)
        counter.until = max(counter.until, until)

    def _maybe_sweep(self, t: float) -> None:
        """Drop whole counters whose every field has expired (at most once a minute)."""
        if t < self._next_sweep:
            return
        self._next_sweep = t + _SWEEP_EVERY
        dead = [k for k, c in self._counters.items() if c.until <= t]
        for k in dead:
            del self._counters[k]
