"""Usage values: events, records, series and spikes, and the units they are summed in.

A **usage event** is one fact the counter store accepted: an admitted, consumed decision
(kind ``decision``: one request, no amounts) or a report that was not a duplicate (kind
``report``: the amounts, and one request when no decision counted it). Events travel
from the counter store to the usage database (``tollway.policy.usage_db``) through the
ingester (``tollway.policy.ingest``); queries read only the database.

Amounts are summed as integers so that every backend, and any order of concurrent
writes, gives exactly the same totals: cost in nano-USD (1e-9; a single token of a
cheap model costs ~1e-7 USD), durations and times in microseconds. Every stored number
is clamped to ``MAX_SUM`` (the largest signed 64-bit integer), and sums saturate
there, so no aggregate can overflow a database column or an int64 proto field (with the
per-report ranges of ``tollway.policy.validate`` an entity needs at least 920,000
maximal reports, 9.2 billion USD, before a sum saturates).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .model import UsageReport
from .validate import EntityKind

__all__ = [
    "EntityKind",
    "ListKind",
    "EventKind",
    "Metric",
    "MAX_SUM",
    "RECENT_REPORTS",
    "UsageUnavailable",
    "UsageEvent",
    "LedgerEntry",
    "LEDGER_KIND",
    "ModelUsage",
    "UsageRecord",
    "UsageDetail",
    "SeriesPoint",
    "UsageSeries",
    "Spike",
    "format_time",
    "fold",
    "clamp_units",
    "cost_units",
    "time_units",
    "from_cost_units",
    "from_time_units",
]

ListKind = Literal["users", "groups"]
EventKind = Literal["decision", "report"]
Metric = Literal["cost", "tokens", "requests"]

MAX_SUM = 2**63 - 1  # the largest BIGINT / int64: every stored amount and sum stays below
RECENT_REPORTS = 50

_COST_SCALE = 1_000_000_000  # nano-USD
_TIME_SCALE = 1_000_000  # microseconds


def clamp_units(value: int) -> int:
    """``value`` within ``0..MAX_SUM`` (a sum saturates instead of overflowing)."""
    return 0 if value < 0 else MAX_SUM if value > MAX_SUM else value


def _scaled(value: float, scale: int) -> int:
    scaled = value * scale
    if not math.isfinite(scaled) or scaled >= MAX_SUM:
        return MAX_SUM
    return clamp_units(round(scaled))


def cost_units(usd: float) -> int:
    """USD as integer nano-USD (rounded to nearest: usage is an account, not a limit)."""
    return _scaled(usd, _COST_SCALE)


def time_units(seconds: float) -> int:
    """A unix time or a duration as integer microseconds."""
    return _scaled(seconds, _TIME_SCALE)


def from_cost_units(units: float) -> float:
    return units / _COST_SCALE


def from_time_units(units: int) -> float:
    return units / _TIME_SCALE


class UsageUnavailable(Exception):
    """The usage database cannot answer now (down, unreachable, or not enabled)."""


_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Lower-case ASCII letters only: what ``search`` compares, on every database."""
    return text.translate(_FOLD)


def format_time(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z`` (microseconds only when there are some)."""
    dt = datetime.fromtimestamp(t, UTC)
    spec = "seconds" if dt.microsecond == 0 else "microseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")


# ------------------------------------------------------------------ ledger

LedgerKind = Literal["credit", "spend"]
LEDGER_KIND = "ledger"  # the kind of an event that carries ledger entries only (a credit)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One change of a balance: a credit (a top-up, or a correction when negative) or
    what a request spent from it (negative). ``key`` is the balance's scope key
    (``g=acme``), ``amount`` in balance units (nano-USD for cost), ``ref`` what makes
    it unique: a credit's idempotency key, or the decision (or request) that spent.
    """

    balance: str
    key: str
    amount: int
    kind: LedgerKind = "spend"
    reason: str = ""
    ref: str = ""

    @classmethod
    def spend(cls, balance: str, key: str, units: int, ref: str) -> LedgerEntry:
        return cls(balance, key, -units, "spend", "", ref)

    def as_list(self) -> list[Any]:
        # the amount as text: JSON readers (Lua's cjson among them) lose digits past 2**53
        return [self.balance, self.key, str(self.amount), self.kind, self.reason, self.ref]

    @classmethod
    def from_list(cls, data: Any) -> LedgerEntry:
        if not isinstance(data, list) or len(data) != 6 or not all(
            isinstance(v, str) for v in data
        ):
            raise ValueError("ledger entry: expected 6 strings")
        balance, key, amount, kind, reason, ref = data
        if kind not in ("credit", "spend"):
            raise ValueError(f"ledger entry: unknown kind {kind!r}")
        return cls(balance, key, int(amount), kind, reason, ref)


# ------------------------------------------------------------------ events

_EVENT_FIELDS = (
    "kind", "time", "request_id", "decision_id", "user_id", "group_id", "model",
    "input_tokens", "output_tokens", "cost_usd", "duration_seconds", "status",
    "attributes", "counts_request",
)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One usage event; field names are the proto's ``UsageEvent``.

    ``kind`` is ``report`` or ``decision`` (the database keeps any kind, so that other
    records can share the pipeline). ``time`` is when tollway accepted it (unix
    seconds). ``counts_request`` says whether the event adds one to ``request_count``:
    always for a decision; for a report only when it carries no ``decision_id`` (its
    ``Decide`` counted the request otherwise).
    """

    time: float
    request_id: str = ""
    decision_id: str = ""
    user_id: str = ""
    group_id: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    duration_seconds: float = 0.0
    status: str = "success"
    attributes: Mapping[str, str] = field(default_factory=dict)
    kind: str = "report"
    counts_request: bool = True
    # balance changes that rode this event (kind ``ledger``: a credit alone)
    ledger: tuple[LedgerEntry, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_report(
        cls, report: UsageReport, time: float, *, counts_request: bool | None = None
    ) -> UsageEvent:
        """The event for a validated report received at ``time`` (unix seconds).

        ``counts_request`` defaults to "no ``decision_id``": a decided request was counted
        by its ``Decide``; a report alone (a gateway that only tracks) counts its own.
        """
        if counts_request is None:
            counts_request = not report.decision_id
        return cls(
            time=time,
            request_id=report.request_id,
            decision_id=report.decision_id,
            user_id=report.user.id if report.user is not None else "",
            group_id=report.group.id if report.group is not None else "",
            model=report.model,
            input_tokens=report.input_tokens,
            output_tokens=report.output_tokens,
            cost_usd=report.cost_usd,
            duration_seconds=report.duration_seconds,
            status=report.status,
            attributes=dict(report.attributes),
            counts_request=counts_request,
        )

    @classmethod
    def decision(
        cls, time: float, decision_id: str, user_id: str, group_id: str, model: str,
        request_id: str = "",
    ) -> UsageEvent:
        """An admitted, consumed decision: one request for the served ``model``."""
        return cls(
            time=time, request_id=request_id, decision_id=decision_id, user_id=user_id,
            group_id=group_id, model=model, status="", kind="decision",
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-shaped, ``time`` as unix seconds (the form the event travels in)."""
        out = {name: getattr(self, name) for name in _EVENT_FIELDS} | {
            "attributes": dict(self.attributes)
        }
        if self.ledger:
            out["ledger"] = [e.as_list() for e in self.ledger]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped for readers: ``time`` as ISO 8601 UTC, ``total_tokens`` added."""
        out = self.as_dict()
        out["time"] = format_time(self.time)
        out["total_tokens"] = self.total_tokens
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> UsageEvent:
        """Decode ``to_json``'s output; raises ``ValueError`` for anything else."""
        data = json.loads(text)
        ledger = data.pop("ledger", None) if isinstance(data, dict) else None
        if not isinstance(data, dict) or set(data) != set(_EVENT_FIELDS):
            raise ValueError("usage event: unexpected fields")
        if ledger is not None:
            if not isinstance(ledger, list):
                raise ValueError("usage event: ledger must be a list")
            data["ledger"] = tuple(LedgerEntry.from_list(e) for e in ledger)
        event = cls(**data)
        _check_event(event)
        return event


def _check_event(e: UsageEvent) -> None:
    """The types a decoded event must have (an entry of a stream is not trusted blindly)."""
    texts = (e.kind, e.request_id, e.decision_id, e.user_id, e.group_id, e.model, e.status)
    counts = (e.input_tokens, e.output_tokens)
    amounts = (e.time, e.cost_usd, e.duration_seconds)
    if (
        not all(isinstance(v, str) for v in texts)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts)
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0
            for v in amounts
        )
        or not isinstance(e.counts_request, bool)
        or not isinstance(e.attributes, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in e.attributes.items())
    ):
        raise ValueError("usage event: a field has the wrong type")


# ------------------------------------------------------------------ aggregates


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """One model's share of an entity's usage."""

    model: str
    request_count: int
    total_tokens: int
    total_cost: float


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """A user's or group's aggregates (lifetime, or within a listing's period);
    ``models`` is highest cost first."""

    kind: EntityKind
    id: str
    request_count: int
    first_seen: float
    last_seen: float
    total_tokens: int
    input_tokens: int
    output_tokens: int
    total_cost: float
    total_duration: float
    models: tuple[ModelUsage, ...] = ()

    @property
    def user_id(self) -> str:
        return self.id if self.kind == "user" else ""

    @property
    def group_id(self) -> str:
        return self.id if self.kind == "group" else ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of a listing: ``user_id`` (or ``group_id``) and the aggregates."""
        return {
            f"{self.kind}_id": self.id,
            "request_count": self.request_count,
            "first_seen": format_time(self.first_seen),
            "last_seen": format_time(self.last_seen),
            "total_tokens": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_cost": self.total_cost,
            "total_duration": self.total_duration,
            "models": [
                {
                    "model": m.model,
                    "request_count": m.request_count,
                    "total_tokens": m.total_tokens,
                    "total_cost": m.total_cost,
                }
                for m in self.models
            ],
        }


@dataclass(frozen=True, slots=True)
class UsageDetail:
    """``GetUsage``: the lifetime aggregates, USD per model and the latest reports, newest
    first."""

    usage: UsageRecord
    cost_by_model: dict[str, float]
    recent_reports: tuple[UsageEvent, ...]

    def to_dict(self) -> dict[str, Any]:
        out = self.usage.to_dict()
        out["cost_by_model"] = dict(self.cost_by_model)
        out["recent_reports"] = [e.to_dict() for e in self.recent_reports]
        return out


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """The amount of one step that starts at ``time`` (unix seconds)."""

    time: float
    value: float


@dataclass(frozen=True, slots=True)
class UsageSeries:
    """One entity's metric per step over ``[start, end)`` (edges rounded to the step);
    every step is present, zero when nothing was used."""

    kind: EntityKind
    id: str
    metric: Metric
    step: str
    start: float
    end: float
    points: tuple[SeriesPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            f"{self.kind}_id": self.id,
            "metric": self.metric,
            "step": self.step,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "points": [{"time": format_time(p.time), "value": p.value} for p in self.points],
        }


@dataclass(frozen=True, slots=True)
class Spike:
    """An entity whose usage in the window is over ``factor`` times its average per window
    over the baseline. ``ratio`` is None when there was no usage in the baseline."""

    kind: EntityKind
    id: str
    window_amount: float
    baseline_average: float
    ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            f"{self.kind}_id": self.id,
            "window_amount": self.window_amount,
            "baseline_average": self.baseline_average,
            "ratio": self.ratio,
        }
