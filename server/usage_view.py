"""What ``tollway usage`` shows: a page of users or groups, or one's detail, as lines.

Two forms of the same content. For a terminal (``width`` set): readable values
(``$41.27``, ``3,120,044``, ``2026-01-15 11:59:01Z``) in columns fitted to the width by
``text_table``. For a pipe (``width=None``): raw values (``41.2733``, ``3120044``, ISO 8601
times), tab-separated, no padding. Each line comes with a style ("", "bold", "dim") that
only a terminal shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tollway.policy.usage import Spike, UsageDetail, UsageRecord, format_time
from tollway.policy.usage_query import SpikeQuery, UsagePage

from .text_table import Column, plain, printable, render

__all__ = ["Line", "page_lines", "detail_lines", "page_summary", "spike_lines", "spike_summary"]

Line = tuple[str, str]  # (style, text)


def _when(t: float, width: int | None) -> str:
    if t <= 0:
        return "-"
    if width is None:
        return format_time(t)
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _usd(amount: float, width: int | None) -> str:
    if width is None:
        return repr(amount)
    return f"${amount:,.2f}" if amount >= 100 else f"${amount:,.4f}"


def _int(n: int, width: int | None) -> str:
    return str(n) if width is None else f"{n:,}"


def _num(x: float, width: int | None, unit: str = "") -> str:
    return repr(x) if width is None else f"{x:,.1f}{unit}"


def _table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None
) -> list[Line]:
    lines = plain(columns, rows) if width is None else render(columns, rows, width)
    return [("bold", lines[0]), *(("", line) for line in lines[1:])]


def page_summary(page: UsagePage) -> str:
    """``users 1-25 of 312, sorted by -total_cost`` (or why the page is empty)."""
    query = page.query
    if not page.results:
        if page.count and query.offset:
            return f"no {query.kind} at offset {query.offset} ({page.count} in all)"
        return f"no {query.kind} match" if query.filtered else f"no {query.kind} yet"
    first, last = query.offset + 1, query.offset + len(page.results)
    search = f", matching {query.search!r}" if query.search else ""
    period = ""
    if page.period is not None:
        period = f", used from {format_time(page.period[0])} to {format_time(page.period[1])}"
    return f"{query.kind} {first}-{last} of {page.count}, sorted by {query.sort}{search}{period}"


def page_lines(page: UsagePage, width: int | None) -> list[Line]:
    """The listing: one row per entity; the sort field's column is kept longest."""
    query = page.query
    if not page.results:
        return []
    sorted_by = query.sort_field

    def weight(field: str, base: int) -> int:
        return 95 if field == sorted_by else base

    columns = [
        Column("#", 30, "right"),
        Column("User" if query.kind == "users" else "Group", 100, cut_to=16),
        Column("Cost (USD)", weight("total_cost", 90), "right"),
        Column("Requests", weight("request_count", 80), "right"),
        Column("Tokens", weight("total_tokens", 60), "right"),
        Column("Last seen (UTC)", weight("last_seen", 50)),
        Column("Top model", 40, cut_to=12),
    ]
    if sorted_by == "first_seen":
        columns.insert(5, Column("First seen (UTC)", 95))

    def row(rank: int, rec: UsageRecord) -> list[str]:
        cells = [
            str(rank), rec.id, _usd(rec.total_cost, width), _int(rec.request_count, width),
            _int(rec.total_tokens, width), _when(rec.last_seen, width),
            (rec.models[0].model or "(none)") if rec.models else "",
        ]
        if sorted_by == "first_seen":
            cells.insert(5, _when(rec.first_seen, width))
        return cells

    rows = [row(rank, rec) for rank, rec in enumerate(page.results, start=query.offset + 1)]
    return _table(columns, rows, width)


def detail_lines(detail: UsageDetail, width: int | None) -> list[Line]:
    """One entity: its aggregates, cost by model, and its latest reports."""
    rec = detail.usage
    lines: list[Line] = [("bold", printable(f"{rec.kind} {rec.id}"))]
    summary = [
        ("cost", _usd(rec.total_cost, width)),
        ("requests", _int(rec.request_count, width)),
        ("tokens", _int(rec.total_tokens, width)),
        ("input tokens", _int(rec.input_tokens, width)),
        ("output tokens", _int(rec.output_tokens, width)),
        ("model time", _num(rec.total_duration, width, " s")),
        ("first seen", _when(rec.first_seen, width)),
        ("last seen", _when(rec.last_seen, width)),
    ]
    if width is None:
        lines.extend(("", f"{key}\t{value}") for key, value in summary)
    else:
        lines.extend(("", f"  {key:<15}{value}") for key, value in summary)

    lines += [("", ""), ("bold", "Cost by model")]
    models = [
        Column("Model", 100, cut_to=16), Column("Cost (USD)", 90, "right"),
        Column("Share", 50, "right"), Column("Tokens", 60, "right"),
        Column("Requests", 80, "right"),
    ]
    lines += _table(models, [
        [
            m.model or "(none)", _usd(m.total_cost, width),
            f"{m.total_cost / rec.total_cost:.0%}" if rec.total_cost else "-",
            _int(m.total_tokens, width), _int(m.request_count, width),
        ]
        for m in rec.models
    ], width)

    count = len(detail.recent_reports)
    lines += [("", ""), ("bold", f"Latest {count} report{'' if count == 1 else 's'}")]
    reports = [
        Column("Time (UTC)", 100), Column("Model", 90, cut_to=12),
        Column("Tokens", 70, "right"), Column("Cost (USD)", 80, "right"),
        Column("Seconds", 30, "right"), Column("Status", 50), Column("Request", 40, cut_to=8),
    ]
    lines += _table(reports, [
        [
            _when(e.time, width), e.model, _int(e.total_tokens, width),
            _usd(e.cost_usd, width), f"{e.duration_seconds:.2f}", e.status, e.request_id,
        ]
        for e in detail.recent_reports
    ], width)
    return lines


def _amount(metric: str, value: float, width: int | None) -> str:
    if metric == "cost":
        return _usd(value, width)
    return repr(value) if width is None else f"{value:,.0f}"


def spike_lines(query: SpikeQuery, spikes: list[Spike], width: int | None) -> list[Line]:
    """Who spiked: the window's amount, the baseline's average and their ratio."""
    if not spikes:
        return []
    columns = [
        Column("User" if query.kind == "users" else "Group", 100, cut_to=16),
        Column(f"Last {query.window_hours}h", 90, "right"),
        Column(f"Average per {query.window_hours}h", 80, "right"),
        Column("Ratio", 95, "right"),
    ]
    rows = [
        [
            s.id, _amount(query.metric, s.window_amount, width),
            _amount(query.metric, s.baseline_average, width),
            "new" if s.ratio is None else (repr(s.ratio) if width is None else f"{s.ratio:,.1f}x"),
        ]
        for s in spikes
    ]
    return _table(columns, rows, width)


def spike_summary(query: SpikeQuery, spikes: list[Spike]) -> str:
    """``2 users spiking on cost in the last 1h (over 5x …)``."""
    rule = (
        f"over {query.factor:g}x their average per {query.window_hours}h of the "
        f"{query.baseline_hours}h before, at least {query.min:g}"
    )
    count = f"{len(spikes)} {query.kind}" if spikes else f"no {query.kind}"
    return f"{count} spiking on {query.metric} in the last {query.window_hours}h ({rule})"
