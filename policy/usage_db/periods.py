"""Rollup periods: which hour, day and month a moment falls in, and how a span of time is
covered by the fewest whole periods.

Rollups are kept per **span**: ``a`` (all time, one period starting at 0), ``m``
(calendar month, UTC), ``d`` (UTC day) and ``h`` (hour). A period is named by its span
and the unix second it starts at. Pure arithmetic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "Span",
    "SPANS",
    "HOUR",
    "DAY",
    "Piece",
    "period_start",
    "next_period",
    "periods_of",
    "cover",
    "floor_hour",
    "ceil_hour",
]

Span = Literal["a", "m", "d", "h"]
SPANS: tuple[Span, ...] = ("a", "m", "d", "h")
HOUR = 3600
DAY = 86400


def _month_start(t: int) -> int:
    d = datetime.fromtimestamp(t, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def _month_after(start: int) -> int:
    d = datetime.fromtimestamp(start, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def period_start(span: Span, t: int) -> int:
    """The start of the period of ``span`` that holds unix second ``t``."""
    if span == "h":
        return t - t % HOUR
    if span == "d":
        return t - t % DAY
    if span == "m":
        return _month_start(t)
    return 0


def next_period(span: Span, start: int) -> int:
    """The start of the period after the one starting at ``start``."""
    if span == "h":
        return start + HOUR
    if span == "d":
        return start + DAY
    if span == "m":
        return _month_after(start)
    raise ValueError("the all-time span has no next period")


def periods_of(t: int) -> tuple[tuple[Span, int], ...]:
    """Every period that holds unix second ``t``: all time, its month, day and hour."""
    return (("a", 0), ("m", _month_start(t)), ("d", t - t % DAY), ("h", t - t % HOUR))


def floor_hour(t: float) -> int:
    return int(t // HOUR) * HOUR


def ceil_hour(t: float) -> int:
    return -int(-t // HOUR) * HOUR


@dataclass(frozen=True, slots=True)
class Piece:
    """The periods of one span whose starts lie in ``[first, stop)``."""

    span: Span
    first: int
    stop: int


def cover(start: int, end: int) -> tuple[Piece, ...]:
    """The fewest whole periods that exactly cover ``[start, end)`` (both on hour edges):
    hours up to the first day edge, days up to the first month edge, whole months, then
    days and hours again. At most five pieces, whatever the length."""
    if start % HOUR or end % HOUR:
        raise ValueError("cover: start and end must be on hour edges")
    pieces: list[Piece] = []

    def add(span: Span, first: int, stop: int) -> None:
        if first < stop:
            pieces.append(Piece(span, first, stop))

    day_in = min(-(-start // DAY) * DAY, end)
    day_out = max(end - end % DAY, day_in)
    month_in = _month_start(day_in)
    if month_in < day_in:
        month_in = _month_after(month_in)
    month_out = _month_start(day_out) if day_out > 0 else 0
    if month_in >= month_out:  # no whole month inside: days only
        month_in = month_out = day_out
    add("h", start, day_in)
    add("d", day_in, month_in)
    add("m", month_in, month_out)
    add("d", month_out, day_out)
    add("h", day_out, end)
    return tuple(pieces)
