"""The counter-store contract shared by the memory and Redis stores.

The engine hands a store the whole set of counters one decision touches; the store
checks and consumes them all-or-nothing. Stores differ only in where the numbers live:
key layout and window arithmetic are shared (``policy.windows``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tollway.dsl.ast import Window

from ..usage import UsageEvent
from .events import EventSource

__all__ = ["CounterSpec", "CounterState", "ReportOutcome", "StoreUnavailable", "CounterStore"]


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One counter a decision touches.

    ``key`` identifies whose counter it is inside the quota (``u=alice``,
    ``g=acme/u=alice``, ``*``, each possibly followed by ``+m=<model>``; ids are
    percent-encoded). ``amount`` is what this decision adds (the reservation).
    """

    quota: str
    metric: str
    key: str
    window: Window
    limit: float
    amount: float
    on_store_error: Literal["allow", "deny"] = "allow"


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter as seen by one decision.

    ``used`` is the usage in the window *before* this decision's amount. ``exceeded``
    means this decision's amount does not fit (``used + amount > limit``, or
    ``used >= limit`` when the amount is 0). ``retry_after`` is seconds until it would
    fit (0 when it fits), ``resets_at`` the unix time the window next frees usage
    (the calendar boundary, or when the oldest counted bucket leaves a sliding window).
    """

    used: float
    limit: float
    exceeded: bool
    retry_after: float
    resets_at: float


ReportOutcome = Literal["duplicate", "settled", "added"]


class StoreUnavailable(Exception):
    """The store could not be reached or answered too slowly; nothing was changed."""


class CounterStore(Protocol):
    name: str  # "memory" or "redis": the ``store`` label of tollway_store_* metrics
    blocking: bool  # True when calls do network I/O (the gRPC server then runs them off its loop)

    @property
    def events(self) -> EventSource:
        """Where the usage events this store accepted wait for the ingester."""
        ...

    def check_and_consume(
        self,
        counters: Sequence[CounterSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        now: float | None = None,
        event: UsageEvent | None = None,
    ) -> list[CounterState]:
        """Read every counter; if none is exceeded and ``consume`` is set, add every amount.

        All or nothing: when any counter is exceeded, nothing is added. With ``hold_id``
        the store remembers what was added (bucket by bucket) so that ``record_report``
        can later replace the reservation by the actual usage. ``now`` overrides the
        store's clock (the memory store's injected clock; Redis uses its own TIME).
        ``event``, when given, is appended to ``events`` in the same atomic step, and
        only if the amounts were added: a denied decision or a read-only call appends
        nothing. On Redis it rides the same script call. Raises ``StoreUnavailable``.
        """
        ...

    def record_event(self, event: UsageEvent) -> None:
        """Append one usage event on its own (a decision with no counters to consume);
        one round trip on Redis. Raises ``StoreUnavailable``."""
        ...

    def record_report(
        self,
        request_id: str,
        hold_id: str | None,
        actual: Mapping[str, float],
        fallback: Sequence[CounterSpec],
        *,
        now: float | None = None,
        event: UsageEvent | None = None,
    ) -> ReportOutcome:
        """Apply a usage report once per ``request_id``.

        ``actual`` maps metric -> amount actually used. If ``hold_id`` names a live
        reservation, each reserved counter is adjusted by ``actual - reserved`` in the
        bucket it was reserved in (never below zero) -> "settled". Otherwise each
        ``fallback`` counter is increased by its ``amount`` -> "added". A request_id
        already reported -> "duplicate", nothing changes. ``event``, when given, is
        appended to ``events`` in the same atomic step (so a duplicate appends
        nothing). Raises ``StoreUnavailable``.
        """
        ...

    def close(self) -> None:
        ...
