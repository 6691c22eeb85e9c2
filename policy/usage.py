"""Per-user and per-group usage: the values, the query rules and the store contract.

Requests are counted where they are admitted: an allowed, consumed ``Decide`` is a
``RequestSeen`` that the counter store applies in the same atomic step as the decision's
counters. Amounts come from reports: a usage event is recorded in the same atomic step
as the report's counter update and its ``request_id`` check, so a report repeated (even
racing on two replicas) is counted once; it counts a request too only when no decision
counted it (a report without ``decision_id``). This module is the pure part: what an
event and an aggregate are, how a listing query is validated (once, for every
transport), and the reader and writer protocols the memory and Redis implementations
share.

Amounts are aggregated as integers so that both implementations, and any order of
concurrent updates, give exactly the same totals: cost in nano-USD (1e-9; a single
token of a cheap model costs ~1e-7 USD), durations and times in microseconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from .model import UsageReport
from .validate import (
    MAX_ID_BYTES,
    MAX_MODEL_BYTES,
    EntityKind,
    FieldError,
    need_kind,
    need_text,
    need_time,
    need_whole,
)

__all__ = [
    "EntityKind",
    "ListKind",
    "SORT_FIELDS",
    "DEFAULT_SORT",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "RECENT_REPORTS",
    "UsageEvent",
    "RequestSeen",
    "ModelUsage",
    "UsageRecord",
    "UsageDetail",
    "UsageQuery",
    "UsagePage",
    "ActivityQuery",
    "Retention",
    "Totals",
    "UsageReader",
    "UsageWriter",
    "format_time",
    "fold",
    "cost_units",
    "time_units",
    "duration_units",
]

ListKind = Literal["users", "groups"]

SORT_FIELDS: tuple[str, ...] = (
    "last_seen",
    "first_seen",
    "request_count",
    "total_cost",
    "total_tokens",
)
DEFAULT_SORT = "-total_cost"
DEFAULT_LIMIT = 25
MAX_LIMIT = 100
RECENT_REPORTS = 50
MAX_OFFSET = 10**9

_COST_SCALE = 1_000_000_000  # nano-USD
_TIME_SCALE = 1_000_000  # microseconds


def cost_units(usd: float) -> int:
    """USD as integer nano-USD (rounded to nearest: usage is an account, not a limit)."""
    return round(usd * _COST_SCALE)


def time_units(seconds: float) -> int:
    """A unix time or a duration as integer microseconds."""
    return round(seconds * _TIME_SCALE)


duration_units = time_units


_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Lower-case ASCII letters only: what Redis' Lua ``string.lower`` does, so that
    ``search`` matches the same ids on every store."""
    return text.translate(_FOLD)


def format_time(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z`` (microseconds only when there are some)."""
    dt = datetime.fromtimestamp(t, UTC)
    spec = "seconds" if dt.microsecond == 0 else "microseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")


def _check_span(start: float | None, end: float | None) -> None:
    if start is not None and end is not None and start > end:
        raise FieldError("end", "must not be before start")


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One report as usage records it; field names are the proto's ``UsageEvent``.

    ``time`` is when tollway received the report (unix seconds). ``counts_request`` says
    whether the event adds one to ``request_count``: False for a report that carries a
    ``decision_id`` (its ``Decide`` counted the request), so it only adds amounts.
    ``kind`` names the kind of record ("report"), for the activity export.
    """

    time: float
    request_id: str
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-shaped, ``time`` as unix seconds (the stored form)."""
        return {
            "time": self.time,
            "kind": self.kind,
            "request_id": self.request_id,
            "decision_id": self.decision_id,
            "user_id": self.user_id,
            "group_id": self.group_id,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "duration_seconds": self.duration_seconds,
            "status": self.status,
            "attributes": dict(self.attributes),
            "counts_request": self.counts_request,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped for readers: ``time`` as ISO 8601 UTC."""
        out = self.as_dict()
        out["time"] = format_time(self.time)
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> UsageEvent:
        data = json.loads(text)
        data.pop("total_tokens", None)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """One admitted, consumed decision as usage counts it: one request at ``time`` (unix
    seconds) for the user and the group (each when named) and the served ``model``.

    It adds no amounts, no recent report and no activity entry: those come from reports.
    """

    time: float
    user_id: str = ""
    group_id: str = ""
    model: str = ""


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
    """A user's or group's aggregates; ``models`` is highest cost first."""

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
    """``GetUsage``: the aggregates, USD per model and the latest reports, newest first."""

    usage: UsageRecord
    cost_by_model: dict[str, float]
    recent_reports: tuple[UsageEvent, ...]

    def to_dict(self) -> dict[str, Any]:
        out = self.usage.to_dict()
        out["cost_by_model"] = dict(self.cost_by_model)
        out["recent_reports"] = [e.to_dict() for e in self.recent_reports]
        return out


@dataclass(slots=True)
class Totals:
    """An entity's aggregates in integer units, shared by both stores so that they agree.

    ``models`` maps model -> [request_count, total_tokens, cost_nusd]. ``sort_value`` is
    exactly the score the Redis indexes hold.
    """

    request_count: int = 0
    first_seen_us: int = -1  # -1: nothing seen yet
    last_seen_us: int = -1
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nusd: int = 0
    duration_us: int = 0
    models: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, event: UsageEvent) -> None:
        """A report: its amounts, and one request when ``event.counts_request``."""
        m = self._touch(time_units(event.time), event.model)
        cost = cost_units(event.cost_usd)
        if event.counts_request:
            self.request_count += 1
            m[0] += 1
        self.input_tokens += event.input_tokens
        self.output_tokens += event.output_tokens
        self.cost_nusd += cost
        self.duration_us += duration_units(event.duration_seconds)
        m[1] += event.total_tokens
        m[2] += cost

    def count(self, seen: RequestSeen) -> None:
        """A decision: one request for ``seen.model``, no amounts."""
        self._touch(time_units(seen.time), seen.model)[0] += 1
        self.request_count += 1

    def _touch(self, t: int, model: str) -> list[int]:
        """Widen first/last seen to ``t``; the model's slot (created when new)."""
        if self.first_seen_us < 0:
            self.first_seen_us = self.last_seen_us = t
        else:
            if t < self.first_seen_us:
                self.first_seen_us = t
            if t > self.last_seen_us:
                self.last_seen_us = t
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = [0, 0, 0]
        return m

    def sort_value(self, sort_field: str) -> int:
        if sort_field == "last_seen":
            return self.last_seen_us
        if sort_field == "first_seen":
            return self.first_seen_us
        if sort_field == "request_count":
            return self.request_count
        if sort_field == "total_cost":
            return self.cost_nusd
        return self.total_tokens

    def record(self, kind: EntityKind, ident: str) -> UsageRecord:
        models = sorted(self.models.items(), key=lambda kv: (-kv[1][2], kv[0]))
        return UsageRecord(
            kind=kind,
            id=ident,
            request_count=self.request_count,
            first_seen=self.first_seen_us / _TIME_SCALE,
            last_seen=self.last_seen_us / _TIME_SCALE,
            total_tokens=self.total_tokens,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_cost=self.cost_nusd / _COST_SCALE,
            total_duration=self.duration_us / _TIME_SCALE,
            models=tuple(
                ModelUsage(name, v[0], v[1], v[2] / _COST_SCALE) for name, v in models
            ),
        )

    def detail(
        self, kind: EntityKind, ident: str, recent: tuple[UsageEvent, ...]
    ) -> UsageDetail:
        rec = self.record(kind, ident)
        return UsageDetail(rec, {m.model: m.total_cost for m in rec.models}, recent)


# ------------------------------------------------------------------ queries

_LIST_PARAMS = frozenset({"kind", "search", "sort", "limit", "offset", "start", "end"})


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A validated listing query; build it with ``UsageQuery.parse``.

    ``start``/``end`` (unix seconds) keep the entities *seen in* ``[start, end)``: those
    whose span of activity overlaps it, ``first_seen < end and last_seen >= start``.
    The records keep their lifetime totals (per-period amounts come from the activity
    export). ``search`` keeps ids containing it, ASCII case-insensitively.
    """

    kind: ListKind = "users"
    search: str = ""
    sort: str = DEFAULT_SORT
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    start: float | None = None
    end: float | None = None

    @property
    def sort_field(self) -> str:
        return self.sort.lstrip("-")

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    @property
    def entity_kind(self) -> EntityKind:
        return "user" if self.kind == "users" else "group"

    @property
    def filtered(self) -> bool:
        return bool(self.search) or self.start is not None or self.end is not None

    @property
    def empty_span(self) -> bool:
        """``start == end``: an empty span, in which nothing can have been seen."""
        return self.start is not None and self.end is not None and self.start >= self.end

    @classmethod
    def parse(
        cls, params: Mapping[str, Any] | UsageQuery | None = None, **more: Any
    ) -> UsageQuery:
        """Validate listing parameters (strings from a URL or typed values).

        Empty values mean "unset". Raises ``FieldError`` (a ``ValueError``) whose
        message starts with, and whose ``field`` is, the offending name.
        """
        if isinstance(params, UsageQuery) and not more:
            return params
        data: dict[str, Any] = {}
        if isinstance(params, UsageQuery):
            data = {k: getattr(params, k) for k in _LIST_PARAMS}
        elif params is not None:
            data = dict(params)
        data.update(more)
        for key in data:
            if key not in _LIST_PARAMS:
                raise FieldError(str(key), "unknown parameter")
        kind: ListKind = "groups" if need_kind(data.get("kind") or "users") == "group" else "users"
        sort = data.get("sort") or DEFAULT_SORT
        if not isinstance(sort, str) or sort.removeprefix("-") not in SORT_FIELDS:
            choices = ", ".join(SORT_FIELDS)
            raise FieldError(
                "sort", f"must be one of {choices}, with '-' for descending; got {sort!r}"
            )
        start = need_time(data.get("start"), "start")
        end = need_time(data.get("end"), "end")
        _check_span(start, end)
        return cls(
            kind=kind,
            search=need_text(data.get("search"), "search", MAX_ID_BYTES),
            sort=sort,
            limit=need_whole(data.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT),
            offset=need_whole(data.get("offset"), "offset", 0, MAX_OFFSET, 0),
            start=start,
            end=end,
        )

    def with_offset(self, offset: int) -> UsageQuery:
        return UsageQuery(
            self.kind, self.search, self.sort, self.limit, offset, self.start, self.end
        )

    def params(self) -> list[tuple[str, str]]:
        """The query as URL parameters (non-default ones, plus limit and offset)."""
        out: list[tuple[str, str]] = []
        if self.search:
            out.append(("search", self.search))
        if self.sort != DEFAULT_SORT:
            out.append(("sort", self.sort))
        if self.start is not None:
            out.append(("start", format_time(self.start)))
        if self.end is not None:
            out.append(("end", format_time(self.end)))
        out.append(("limit", str(self.limit)))
        out.append(("offset", str(self.offset)))
        return out

    def matcher(self) -> Callable[[str, int, int], bool]:
        """The filter every store applies, as ``(id, first_seen_us, last_seen_us) -> bool``
        (Redis runs the same test in Lua)."""
        needle = fold(self.search)
        start = -1 if self.start is None else time_units(self.start)
        end = None if self.end is None else time_units(self.end)

        def matches(ident: str, first_seen_us: int, last_seen_us: int) -> bool:
            if needle and needle not in ident.translate(_FOLD):
                return False
            if last_seen_us < start:
                return False
            return end is None or first_seen_us < end

        return matches


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of a listing: ``count`` matches in all; ``next``/``previous`` are offsets."""

    results: tuple[UsageRecord, ...]
    count: int
    next: int | None
    previous: int | None
    query: UsageQuery

    @classmethod
    def build(cls, query: UsageQuery, results: tuple[UsageRecord, ...], count: int) -> UsagePage:
        after = query.offset + query.limit
        return cls(
            results=results,
            count=count,
            next=after if after < count else None,
            previous=max(query.offset - query.limit, 0) if query.offset > 0 else None,
            query=query,
        )


_ACTIVITY_PARAMS = frozenset({"user", "group", "model", "start", "end", "limit"})


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """Filters of the activity export: exact user, group and model; ``[start, end)``;
    at most ``limit`` events (None: every event kept)."""

    user: str = ""
    group: str = ""
    model: str = ""
    start: float | None = None
    end: float | None = None
    limit: int | None = None

    @classmethod
    def parse(
        cls, params: Mapping[str, Any] | ActivityQuery | None = None, **more: Any
    ) -> ActivityQuery:
        if isinstance(params, ActivityQuery) and not more:
            return params
        data: dict[str, Any] = {}
        if isinstance(params, ActivityQuery):
            data = {k: getattr(params, k) for k in _ACTIVITY_PARAMS}
        elif params is not None:
            data = dict(params)
        data.update(more)
        for key in data:
            if key not in _ACTIVITY_PARAMS:
                raise FieldError(str(key), "unknown parameter")
        start = need_time(data.get("start"), "start")
        end = need_time(data.get("end"), "end")
        _check_span(start, end)
        raw_limit = data.get("limit")
        limit = (
            None
            if raw_limit is None or raw_limit == ""
            else need_whole(raw_limit, "limit", 1, MAX_OFFSET, 1)
        )
        return cls(
            user=need_text(data.get("user"), "user", MAX_ID_BYTES),
            group=need_text(data.get("group"), "group", MAX_ID_BYTES),
            model=need_text(data.get("model"), "model", MAX_MODEL_BYTES),
            start=start,
            end=end,
            limit=limit,
        )

    def matches(self, event: UsageEvent) -> bool:
        if self.user and event.user_id != self.user:
            return False
        if self.group and event.group_id != self.group:
            return False
        if self.model and event.model != self.model:
            return False
        if self.start is not None and event.time < self.start:
            return False
        return not (self.end is not None and event.time >= self.end)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of the activity log is kept: at most ``max_reports`` events, none older
    than ``max_age_seconds`` (trimmed on write); and the last ``recent_reports`` reports
    per user and per group. Aggregates are kept for good.

    Defaults: 100,000 events, 30 days, 50 recent reports.
    """

    max_reports: int = 100_000
    max_age_seconds: float = 30 * 86400.0
    recent_reports: int = RECENT_REPORTS

    def __post_init__(self) -> None:
        if self.max_reports < 1:
            raise ValueError("max_reports: must be at least 1")
        if not (math.isfinite(self.max_age_seconds) and self.max_age_seconds > 0):
            raise ValueError("max_age_seconds: must be a positive number")
        if not 1 <= self.recent_reports <= 1000:
            raise ValueError("recent_reports: must be between 1 and 1000")


# ------------------------------------------------------------------ protocols


class UsageWriter(Protocol):
    def apply(self, event: UsageEvent) -> None:
        """Add one event to the aggregates, the recent reports and the activity log.

        Called by a counter store inside its own atomic step, only for a report that is
        not a duplicate.
        """
        ...

    def count_request(self, seen: RequestSeen) -> None:
        """Count one admitted request: ``request_count`` (entity and model), first and
        last seen. Called by a counter store inside the decision's atomic step."""
        ...


class UsageReader(Protocol):
    def get(self, kind: EntityKind, ident: str) -> UsageDetail | None:
        """One user's or group's detail, or None when nothing was recorded for it (both
        validated by the caller)."""
        ...

    def list(self, query: UsageQuery) -> UsagePage:
        """A page of records matching ``query``, in its sort order (ties by id)."""
        ...

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]:
        """The events kept in the activity log that match, newest first, streamed."""
        ...
