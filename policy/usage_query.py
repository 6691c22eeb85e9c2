"""Usage queries: the parameters of listings, series, spikes and the activity export,
validated once for every transport, and the pages they return.

Every ``parse`` takes strings (from a URL) or typed values, treats empty values as
unset, and raises ``FieldError`` (a ``ValueError``, from ``tollway.policy.validate``)
whose ``field`` names the offending parameter and whose message starts with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .usage import ListKind, Metric, UsageRecord, format_time
from .validate import (
    MAX_ID_BYTES,
    MAX_MODEL_BYTES,
    EntityKind,
    FieldError,
    need_kind,
    need_number,
    need_text,
    need_time,
    need_whole,
)

__all__ = [
    "SORT_FIELDS",
    "DEFAULT_SORT",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "METRICS",
    "Cursor",
    "UsageQuery",
    "UsagePage",
    "ActivityQuery",
    "SeriesQuery",
    "SpikeQuery",
    "parse_hours",
]

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
MAX_OFFSET = 10**9
METRICS: tuple[Metric, ...] = ("cost", "tokens", "requests")
MAX_SERIES_POINTS = 10_000


def _need_choice(value: Any, name: str, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if value not in choices:
        raise FieldError(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _span(data: Mapping[str, Any]) -> tuple[float | None, float | None]:
    start = need_time(data.get("start"), "start")
    end = need_time(data.get("end"), "end")
    if start is not None and end is not None and start > end:
        raise FieldError("end", "must not be before start")
    return start, end


def _params(
    params: Mapping[str, Any] | None, more: Mapping[str, Any], allowed: frozenset[str]
) -> dict[str, Any]:
    data = dict(params or {})
    data.update(more)
    for key in data:
        if key not in allowed:
            raise FieldError(str(key), "unknown parameter")
    return data


def _list_kind(value: Any) -> ListKind:
    """``users``/``groups`` (``user``/``group`` accepted too); empty means ``users``."""
    return "groups" if need_kind(value or "users") == "group" else "users"


_HOURS = {"h": 1, "d": 24}


def parse_hours(value: Any, name: str, default: str) -> int:
    """A duration in whole hours: ``1h``, ``6h``, ``1d``, ``7d`` -> hours."""
    text = default if value is None or value == "" else value
    if not isinstance(text, str) or len(text) < 2 or text[-1] not in _HOURS:
        raise FieldError(name, f"must be a duration such as 1h, 6h, 1d or 7d; got {value!r}")
    digits = text[:-1]
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 100_000:
        raise FieldError(name, f"must be a duration such as 1h, 6h, 1d or 7d; got {value!r}")
    return int(digits) * _HOURS[text[-1]]


# ------------------------------------------------------------------ listing


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in a listing's order: the sort value and id of one record.

    ``before`` pages backwards from it; ``inclusive`` makes the record itself part of
    the page (a page past the end points back at the last records that way). Encoded
    opaque for clients (URL-safe base64 of JSON) and bound to the sort it was made for.
    """

    sort: str
    value: int
    id: str
    before: bool = False
    inclusive: bool = False

    def encode(self) -> str:
        data = [self.sort, self.value, self.id, int(self.before), int(self.inclusive)]
        raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str, sort: str) -> Cursor:
        bad = FieldError("cursor", "is not a cursor of this listing")
        if not isinstance(text, str) or not text.isascii() or len(text) > 2048:
            raise bad
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise bad from None
        if not (
            isinstance(data, list) and len(data) == 5
            and data[0] in {f"{p}{f}" for p in ("", "-") for f in SORT_FIELDS}
            and isinstance(data[1], int) and not isinstance(data[1], bool)
            and 0 <= data[1] < 2**63
            and isinstance(data[2], str)
            and 1 <= len(data[2].encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES
            and data[3] in (0, 1) and data[4] in (0, 1)
        ):
            raise bad
        if data[0] != sort:
            raise FieldError("cursor", f"was made for sort {data[0]!r}, not {sort!r}")
        return cls(data[0], data[1], data[2], bool(data[3]), bool(data[4]))


_LIST_PARAMS = frozenset(
    {"kind", "search", "sort", "limit", "offset", "start", "end", "cursor"}
)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A validated listing query; build it with ``UsageQuery.parse``.

    Without ``start``/``end`` the records are lifetime totals. With either, they are the
    amounts used **within** ``[start, end)``, the edges rounded out to whole hours (start
    down, end up; a missing end is now), and only entities with usage in it are listed.
    ``search`` keeps ids containing it, ASCII case-insensitively. ``cursor`` (keyset
    paging) and ``offset`` are exclusive.
    """

    kind: ListKind = "users"
    search: str = ""
    sort: str = DEFAULT_SORT
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    start: float | None = None
    end: float | None = None
    cursor: Cursor | None = None

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
    def periodic(self) -> bool:
        """True when the records hold amounts within a period, not lifetime totals."""
        return self.start is not None or self.end is not None

    @property
    def filtered(self) -> bool:
        """True when not every entity is listed (a search, or a period)."""
        return bool(self.search) or self.periodic

    @classmethod
    def parse(
        cls, params: Mapping[str, Any] | UsageQuery | None = None, **more: Any
    ) -> UsageQuery:
        if isinstance(params, UsageQuery):
            if not more:
                return params
            params = params.params_dict()
        data = _params(params, more, _LIST_PARAMS)
        kind = _list_kind(data.get("kind"))
        sort = data.get("sort") or DEFAULT_SORT
        if not isinstance(sort, str) or sort.removeprefix("-") not in SORT_FIELDS:
            choices = ", ".join(SORT_FIELDS)
            raise FieldError(
                "sort", f"must be one of {choices}, with '-' for descending; got {sort!r}"
            )
        start, end = _span(data)
        offset = need_whole(data.get("offset"), "offset", 0, MAX_OFFSET, 0)
        raw_cursor = data.get("cursor")
        cursor = None
        if isinstance(raw_cursor, Cursor):
            cursor = raw_cursor
        elif raw_cursor:
            cursor = Cursor.decode(raw_cursor, sort)
        if cursor is not None and offset:
            raise FieldError("cursor", "give either cursor or offset, not both")
        return cls(
            kind=kind,
            search=need_text(data.get("search"), "search", MAX_ID_BYTES),
            sort=sort,
            limit=need_whole(data.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT),
            offset=offset,
            start=start,
            end=end,
            cursor=cursor,
        )

    def params_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "search": self.search, "sort": self.sort, "limit": self.limit,
            "offset": self.offset, "start": self.start, "end": self.end, "cursor": self.cursor,
        }

    def with_offset(self, offset: int) -> UsageQuery:
        return replace(self, offset=offset, cursor=None)

    def with_cursor(self, cursor: Cursor | None) -> UsageQuery:
        return replace(self, offset=0, cursor=cursor)


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of a listing.

    ``count`` matches in all. ``next``/``previous`` are the offsets of the neighbouring
    pages and ``next_cursor``/``previous_cursor`` the same pages as cursors (None at
    either end); a page past the end points ``previous`` at the last non-empty page.
    ``period`` is the span the amounts cover, edges rounded to the hour (None: lifetime).
    """

    results: tuple[UsageRecord, ...]
    count: int
    next: int | None
    previous: int | None
    query: UsageQuery
    next_cursor: str | None = None
    previous_cursor: str | None = None
    period: tuple[float, float] | None = None

    @staticmethod
    def offsets(query: UsageQuery, count: int) -> tuple[int | None, int | None]:
        """``(next, previous)`` offsets for an offset-paged query over ``count`` records."""
        offset, limit = query.offset, query.limit
        after = offset + limit
        following = after if after < count else None
        if offset == 0 or count == 0:
            return following, None
        if offset < count:
            return following, max(offset - limit, 0)
        # past the end: the last page of the same grid that still holds records
        steps = (offset - count) // limit + 1
        return None, max(offset - steps * limit, 0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body without the links (HTTP adds ``next``/``previous`` URLs)."""
        return {
            "count": self.count,
            "next_cursor": self.next_cursor,
            "previous_cursor": self.previous_cursor,
            "period": None if self.period is None else {
                "start": format_time(self.period[0]), "end": format_time(self.period[1])
            },
            "results": [r.to_dict() for r in self.results],
        }


# ------------------------------------------------------------------ activity

_ACTIVITY_PARAMS = frozenset({"user", "group", "model", "start", "end", "limit"})


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """Filters of the activity export: exact user, group and model; ``[start, end)``;
    at most ``limit`` reports (None: every report kept)."""

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
        if isinstance(params, ActivityQuery):
            if not more:
                return params
            params = {k: getattr(params, k) for k in _ACTIVITY_PARAMS}
        data = _params(params, more, _ACTIVITY_PARAMS)
        start, end = _span(data)
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


# ------------------------------------------------------------------ series

_SERIES_PARAMS = frozenset({"start", "end", "step", "metric"})
STEPS = {"1h": 3600, "1d": 86400}


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """One metric per ``step`` (``1h`` or ``1d``, UTC) over ``[start, end)``. Defaults:
    ``end`` now, ``start`` 24 steps before ``end``. Edges round out to the step; at most
    10,000 points."""

    metric: Metric = "cost"
    step: str = "1h"
    start: float | None = None
    end: float | None = None

    @property
    def step_seconds(self) -> int:
        return STEPS[self.step]

    @classmethod
    def parse(cls, params: Mapping[str, Any] | None = None, **more: Any) -> SeriesQuery:
        data = _params(params, more, _SERIES_PARAMS)
        start, end = _span(data)
        step = _need_choice(data.get("step"), "step", tuple(STEPS), "1h")
        metric: Metric = _need_choice(data.get("metric"), "metric", METRICS, "cost")  # type: ignore[assignment]
        if start is not None and end is not None:
            points = math.ceil(end / STEPS[step]) - math.floor(start / STEPS[step])
            if points > MAX_SERIES_POINTS:
                raise FieldError(
                    "start", f"the span holds {points} steps, over the limit of {MAX_SERIES_POINTS}"
                )
        return cls(metric=metric, step=step, start=start, end=end)

    def bounds(self, now: float) -> tuple[int, int]:
        """``[start, end)`` in unix seconds, on step edges."""
        size = self.step_seconds
        end = -int(-(now if self.end is None else self.end) // size) * size
        start = end - 24 * size if self.start is None else int(self.start // size) * size
        if start >= end:
            end = start + size
        if (end - start) // size > MAX_SERIES_POINTS:
            start = end - MAX_SERIES_POINTS * size
        return start, end


# ------------------------------------------------------------------ spikes

_SPIKE_PARAMS = frozenset({"kind", "metric", "window", "baseline", "factor", "min", "limit"})


@dataclass(frozen=True, slots=True)
class SpikeQuery:
    """Entities whose usage in the last ``window`` hours (the current hour and the ones
    before it) is more than ``factor`` times their average per window over the
    ``baseline`` hours before that, and at least ``min`` (in the metric's unit: USD,
    tokens or requests). Entities with no usage in the baseline qualify on ``min``
    alone. Defaults: ``users``, ``cost``, ``1h``, ``7d``, 5, 1, 25 results."""

    kind: ListKind = "users"
    metric: Metric = "cost"
    window_hours: int = 1
    baseline_hours: int = 168
    factor: float = 5.0
    min: float = 1.0
    limit: int = DEFAULT_LIMIT

    @property
    def entity_kind(self) -> EntityKind:
        return "user" if self.kind == "users" else "group"

    @classmethod
    def parse(cls, params: Mapping[str, Any] | None = None, **more: Any) -> SpikeQuery:
        data = _params(params, more, _SPIKE_PARAMS)
        kind = _list_kind(data.get("kind"))
        metric: Metric = _need_choice(data.get("metric"), "metric", METRICS, "cost")  # type: ignore[assignment]
        window = parse_hours(data.get("window"), "window", "1h")
        baseline = parse_hours(data.get("baseline"), "baseline", "7d")
        if window > 24 * 400 or baseline > 24 * 400:
            raise FieldError("window" if window > 24 * 400 else "baseline",
                                  "must be at most 400d")
        return cls(
            kind=kind,
            metric=metric,
            window_hours=window,
            baseline_hours=baseline,
            factor=need_number(data.get("factor"), "factor", 5.0),
            min=need_number(data.get("min"), "min", 1.0),
            limit=need_whole(data.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT),
        )
