"""The counter-store contract shared by the memory and Redis stores.

The engine hands a store the whole set of counters one decision touches; the store
checks and consumes them all-or-nothing. Stores differ only in where the numbers live:
key layout and window arithmetic are shared (``policy.windows``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tollway.dsl.ast import CALENDARS

from ..model import REPORT_OUTCOMES, ReportOutcome
from ..usage import LedgerEntry, UsageEvent
from .events import EventSource

__all__ = [
    "BUCKETS_PER_WINDOW",
    "bucket_seconds",
    "CounterWindow",
    "CounterSpec",
    "CounterState",
    "BalanceSpec",
    "BalanceState",
    "BalancesUnloaded",
    "ReportOutcome",
    "REPORT_OUTCOMES",
    "StoreOptions",
    "StoreOutcome",
    "StoreUnavailable",
    "StoreRejected",
    "ForeignDecision",
    "CounterStore",
]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How a counter store is bounded.

    ``timeout``: seconds a decision's or report's store work may take in all, from the
    moment the call arrived (Redis; the memory store never waits). ``max_reservations``:
    open reservations the memory store keeps (a decision's reservation waits there for
    its report); ``max_report_ids``: request_ids it remembers to make reports
    idempotent. Past either cap the oldest entry is dropped early and counted. Redis
    keeps both as keys with a TTL instead. ``password``: Redis's, kept out of the URL
    (and out of ``repr``, so out of logs); a URL that carries one as well is refused.
    """

    timeout: float = 0.1
    max_reservations: int = 100_000
    max_report_ids: int = 200_000
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= 60:
            raise ValueError("timeout: must be more than 0 and at most 60 seconds")
        if self.max_reservations < 1:
            raise ValueError("max_reservations: must be at least 1")
        if self.max_report_ids < 1:
            raise ValueError("max_report_ids: must be at least 1")


BUCKETS_PER_WINDOW = 60


def bucket_seconds(window_seconds: int) -> int:
    """Bucket length of a sliding window: ``W // 60`` whole seconds, at least 1."""
    return max(1, window_seconds // BUCKETS_PER_WINDOW)


@dataclass(frozen=True, slots=True)
class CounterWindow:
    """A quota's window in the stores' terms: plain values, checked when built.

    A sliding window has ``seconds`` (at least 1); a calendar window has ``calendar``
    (``day``, ``week`` or ``month``). Derived once: ``bucket``, the bucket length in
    seconds (``bucket_seconds``; 0 for a calendar window), and ``code``, how the Redis
    scripts name the window (``"3600"``, ``"month"``). ``windows.sliding(seconds)`` and
    ``windows.calendar(kind)`` build one.
    """

    seconds: int | None = None
    calendar: str | None = None
    bucket: int = field(init=False, compare=False)
    code: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        seconds = self.seconds
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int):
                raise ValueError(f"window: seconds must be a whole number, got {seconds!r}")
            if seconds < 1:
                raise ValueError(f"window: must be at least 1s, got {seconds}s")
            if self.calendar is not None:
                raise ValueError("window: either seconds or a calendar period, not both")
            derived = (bucket_seconds(seconds), str(seconds))
        elif self.calendar in CALENDARS:
            derived = (0, str(self.calendar))
        else:
            raise ValueError(
                f"window: neither a duration nor {'/'.join(CALENDARS)}, got {self.calendar!r}"
            )
        object.__setattr__(self, "bucket", derived[0])
        object.__setattr__(self, "code", derived[1])


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One counter a decision touches.

    ``key`` identifies whose counter it is inside the quota (``u=alice``,
    ``g=acme/u=alice``, ``*``, each possibly followed by ``+m=<model>``; ids are
    percent-encoded: ``policy.quotas.scope_key``). ``amount`` is what this decision adds
    (the reservation).
    """

    quota: str
    metric: str
    key: str
    window: CounterWindow
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
    (the calendar boundary, or when the oldest counted bucket leaves a sliding window;
    for an empty sliding window, when the current bucket leaves it: what this decision
    adds counts until then). ``limit`` is the limit as enforced: rounded down to whole
    units (``50% of 5`` requests is 2).
    """

    used: float
    limit: float
    exceeded: bool
    retry_after: float
    resets_at: float


@dataclass(frozen=True, slots=True)
class BalanceSpec:
    """One balance a decision spends from.

    ``key`` is the scope key (as for counters). ``amount`` is what the decision needs
    in the balance's metric. ``after`` names the quota spent first (``enforce Q then
    B``): its counter must be among the decision's counters; the quota then takes what
    room it has and the balance the rest, and the quota alone never refuses. Empty:
    the balance alone pays.
    """

    balance: str
    metric: str
    key: str
    amount: float
    after: str = ""


@dataclass(frozen=True, slots=True)
class BalanceState:
    """A balance as seen by one decision (in the metric's unit: USD for ``cost``).

    ``available`` is what may still be spent *before* this decision (credits less
    settled spending less open reservations), ``reserved`` the open reservations before
    it, ``taken`` what this decision reserved from it (0 when refused or only read),
    and ``exceeded`` that the decision could not be covered (by the balance, or by its
    quota and the balance together).
    """

    available: float
    reserved: float
    taken: float
    exceeded: bool


class BalancesUnloaded(Exception):
    """The store holds no balances: it started empty, or lost them (Redis restarted
    without persistence). They must be loaded from the ledger before anything spends."""


StoreOutcome = Literal["not_applied", "unknown"]


class StoreUnavailable(Exception):
    """The store could not be reached, or did not answer in time.

    ``outcome`` says what is known of the call's effect: ``"not_applied"`` (nothing was
    changed: nothing was sent, or the store refused to act past its deadline) or
    ``"unknown"`` (sent, no answer: a script carrying a deadline does nothing once the
    store's clock is past it, so it applied only if it ran in time and its answer was
    lost; a report retried with the same request_id then counts once either way).
    """

    def __init__(self, message: str, *, outcome: StoreOutcome = "not_applied") -> None:
        super().__init__(message)
        self.outcome: StoreOutcome = outcome


class StoreRejected(StoreUnavailable):
    """The store refused the credentials (a wrong or missing password).

    Unlike an outage, this never heals by itself and would switch every quota off: it is
    never answered by ``on_store_error allow`` (docs/security.md).
    """


class ForeignDecision(ValueError):
    """A report quoted a decision made for another user or group; nothing was changed."""

    def __init__(self) -> None:
        super().__init__(
            "decision_id: that decision was made for another user or group; a report must "
            "name the user and group of the decision it quotes"
        )


class CounterStore(Protocol):
    name: str  # "memory" or "redis": the ``store`` label of tollway_store_* metrics
    blocking: bool  # True when calls do network I/O (the gRPC server then runs them off its loop)
    # seconds one decision's or report's store work may take in all (its deadline is the
    # time the call arrived plus this); 0 for a store that never waits
    timeout: float

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
        hold_owner: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> list[CounterState]:
        """Read every counter; if none is exceeded and ``consume`` is set, add every amount.

        All or nothing: when any counter is exceeded, nothing is added. With ``hold_id``
        the store remembers what was added (bucket by bucket), and for whom
        (``hold_owner``, ``quotas.owner_key``), so that ``record_report`` can later
        replace the reservation by the actual usage. ``now`` overrides the
        store's clock (the memory store's injected clock; Redis uses its own TIME).
        ``event``, when given, is appended to ``events`` in the same atomic step, and
        only if the amounts were added: a denied decision or a read-only call appends
        nothing. On Redis it rides the same script call. ``deadline``
        (``time.monotonic()``; None: ``timeout`` from now) bounds the wait, and a
        networked store makes sure nothing is written after it. Raises
        ``StoreUnavailable`` (its ``outcome`` says whether anything may have changed).
        """
        ...

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
        deadline: float | None = None,
    ) -> tuple[list[CounterState], list[BalanceState]]:
        """``check_and_consume`` with balances, in the same atomic step: a balance after a
        quota (``BalanceSpec.after``) takes what the quota has no room for, a balance
        alone the whole amount; the decision is admitted only when every counter and
        balance covers its part. The reservation (``hold_id``) holds the balances' parts
        until ``record_report`` settles them. Raises ``BalancesUnloaded`` when the store
        does not hold the balances (``load_balances`` first), ``StoreUnavailable``."""
        ...

    def load_balances(self, totals: Mapping[tuple[str, str], int]) -> bool:
        """Set every balance ((balance, scope key) -> units, from the ledger) and mark them
        loaded, unless they are loaded already (False then: nothing changed)."""
        ...

    def credit(
        self, entry: LedgerEntry, metric: str, *, event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> bool:
        """Add ``entry.amount`` units to the balance it names, once per ``entry.ref``
        (False when seen already); ``event`` (carrying the entry) is appended in the same
        step. Raises ``BalancesUnloaded``, ``StoreUnavailable``."""
        ...

    def balance(self, balance: str, key: str) -> tuple[int, int]:
        """``(balance, reserved)`` of one balance in units. Raises ``BalancesUnloaded``."""
        ...

    def record_event(self, event: UsageEvent, *, deadline: float | None = None) -> None:
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
        owner: str = "*",
        reporter: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,
        balances: Sequence[BalanceSpec] = (),
    ) -> ReportOutcome:
        """Apply a usage report once per ``request_id`` of its ``reporter``.

        A settled reservation replaces its balance parts by their share of the actuals
        (``stores.spending.settle_split``); without one, each ``balances`` spec not after
        a quota is charged its ``amount``. What balances were charged rides ``event``
        (``UsageEvent.ledger``).

        ``actual`` maps metric -> amount actually used. If ``hold_id`` names a live
        reservation, it must have been made for ``owner`` (else ``ForeignDecision`` is
        raised and nothing changes); each reserved counter is then adjusted by
        ``actual - reserved`` in the bucket it was reserved in (never below zero) ->
        "settled". Otherwise each ``fallback`` counter is increased by its ``amount`` ->
        "added". A request_id the same ``reporter`` (``quotas.reporter_key``) already
        reported -> "duplicate", nothing changes. ``event``, when given, is appended to
        ``events`` in the same atomic step (so a duplicate appends nothing).
        ``deadline`` as for ``check_and_consume``. Raises ``StoreUnavailable``: with
        ``outcome`` "unknown" the report may have been applied, and its retry with the same
        request_id settles it (it counts once).
        """
        ...


    def entries(self) -> Mapping[str, int]:
        """How many entries the store keeps in this process, by kind (empty for a store
        that keeps nothing here)."""
        ...

    def evictions(self) -> Mapping[str, int]:
        """Entries dropped early to respect a cap since the store opened, by kind."""
        ...

    def close(self) -> None:
        ...
