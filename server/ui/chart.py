"""The detail page's chart, drawn on the server as SVG: cost as bars, requests as a line.

No script and no chart library: the geometry is computed here and ``_chart.html`` writes
one ``<g class="point">`` per step of the series (a bar, a dot and a ``<title>`` that
browsers show on hover), axes with a few round ticks, cost on the left, requests on the
right. Coordinates are in the SVG's own units (``viewBox``); CSS scales it to the page.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["WIDTH", "HEIGHT", "Chart", "ChartPoint", "Tick", "nice_ceiling"]

WIDTH = 720
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 64, 56, 16, 36
X_TICKS = 6


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value`` (> 0)."""
    if not math.isfinite(value) or value < sys.float_info.min:
        return 1.0  # nothing (or a subnormal, whose power of ten underflows to 0) to scale
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if factor * power >= value * (1 - 1e-12):
            return factor * power
    return 10.0 * power


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """One step: its start time, amounts, and where they are drawn."""

    time: float
    cost: float
    requests: float
    x: float  # left edge of the bar
    bar_y: float  # top of the cost bar
    bar_height: float
    dot_x: float
    dot_y: float


@dataclass(frozen=True, slots=True)
class Tick:
    position: float  # x for the time axis, y for the value axes
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """The drawable chart of two series that share their steps."""

    step: str
    step_seconds: int
    points: tuple[ChartPoint, ...]
    bar_width: float
    cost_max: float
    requests_max: float
    line: str  # the requests polyline's points attribute
    x_ticks: tuple[Tick, ...]
    cost_ticks: tuple[Tick, ...]
    request_ticks: tuple[Tick, ...]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def total_cost(self) -> float:
        return math.fsum(p.cost for p in self.points)

    @property
    def total_requests(self) -> float:
        return math.fsum(p.requests for p in self.points)

    @classmethod
    def of(
        cls,
        times: Sequence[float],
        cost: Sequence[float],
        requests: Sequence[float],
        *,
        step: str,
        step_seconds: int,
    ) -> Chart:
        """The chart of ``cost`` and ``requests`` at ``times`` (the steps' start times)."""
        if not len(times) == len(cost) == len(requests):
            raise ValueError("times, cost and requests must have one value per step")
        n = len(times)
        plot_w = WIDTH - LEFT - RIGHT
        plot_h = HEIGHT - TOP - BOTTOM
        base = HEIGHT - BOTTOM
        slot = plot_w / max(n, 1)
        bar_w = max(slot * 0.7, 0.5)
        cost_max = nice_ceiling(max(cost, default=0.0))
        requests_max = nice_ceiling(max(requests, default=0.0))
        points = []
        for i in range(n):
            x = LEFT + i * slot
            bar_h = plot_h * cost[i] / cost_max
            points.append(ChartPoint(
                time=times[i], cost=cost[i], requests=requests[i],
                x=round(x + (slot - bar_w) / 2, 2), bar_y=round(base - bar_h, 2),
                bar_height=round(bar_h, 2), dot_x=round(x + slot / 2, 2),
                dot_y=round(base - plot_h * requests[i] / requests_max, 2),
            ))
        line = " ".join(f"{p.dot_x},{p.dot_y}" for p in points)
        return cls(
            step=step, step_seconds=step_seconds, points=tuple(points), bar_width=round(bar_w, 2),
            cost_max=cost_max, requests_max=requests_max, line=line,
            x_ticks=_time_ticks(times, slot, step_seconds),
            cost_ticks=_value_ticks(cost_max, plot_h, base, money=True),
            request_ticks=_value_ticks(requests_max, plot_h, base, money=False),
        )


def _value_ticks(top: float, plot_h: float, base: float, *, money: bool) -> tuple[Tick, ...]:
    ticks = []
    for k in range(5):
        value = top * k / 4
        text = _money(value) if money else f"{value:,.4g}"
        ticks.append(Tick(round(base - plot_h * k / 4, 2), text))
    return tuple(ticks)


def _money(value: float) -> str:
    if value == 0:
        return "$0"
    if value >= 100:
        return f"${value:,.0f}"
    return f"${value:.4g}"


def _time_ticks(times: Sequence[float], slot: float, step_seconds: int) -> tuple[Tick, ...]:
    n = len(times)
    if n == 0:
        return ()
    every = max(1, math.ceil(n / X_TICKS))
    fmt = "%m-%d %H:%M" if step_seconds < 86400 else "%Y-%m-%d"
    return tuple(
        Tick(round(LEFT + (i + 0.5) * slot, 2), datetime.fromtimestamp(times[i], UTC).strftime(fmt))
        for i in range(0, n, every)
    )
