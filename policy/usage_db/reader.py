"""Reading usage: details, listings (lifetime or per period), series, spikes, activity.

Every function takes an open connection and a validated query. Listings of all time or
of exactly one calendar month are read in the order of an index; other periods are
summed from the fewest hour, day and month rollups that cover them (``periods.cover``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    distinct,
    false,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import BigInteger

from ..usage import (
    MAX_SUM,
    EntityKind,
    Metric,
    ModelUsage,
    SeriesPoint,
    Spike,
    UsageDetail,
    UsageEvent,
    UsageRecord,
    UsageSeries,
    cost_units,
    fold,
    from_cost_units,
    from_time_units,
)
from ..usage_query import ActivityQuery, Cursor, SeriesQuery, SpikeQuery, UsagePage, UsageQuery
from .periods import HOUR, Piece, ceil_hour, cover, floor_hour, next_period
from .schema import (
    AMOUNTS,
    SORT_COLUMNS,
    events,
    folded,
    model_periods,
    period_counts,
    sort_index,
)
from .schema import periods as periods_table

__all__ = ["get_detail", "list_usage", "series", "spikes", "activity", "period_of"]

_METRIC_COLUMNS: dict[Metric, str] = {
    "cost": "cost_nusd",
    "tokens": "total_tokens",
    "requests": "request_count",
}


class clamped_sum(GenericFunction[int]):
    """``SUM`` that never overflows: PostgreSQL sums exactly (numeric) then caps at
    ``MAX_SUM``; SQLite, whose ``sum()`` raises on overflow, uses ``total()`` (a
    double, exact up to 2**53 units) capped the same way."""

    type = BigInteger()
    inherit_cache = True


@compiles(clamped_sum)
def _clamped_sum_sqlite(element: clamped_sum, compiler: Any, **kw: Any) -> str:
    inner = compiler.process(element.clauses, **kw)
    return f"CAST(min(total({inner}), {MAX_SUM}.0) AS INTEGER)"


@compiles(clamped_sum, "postgresql")
def _clamped_sum_postgresql(element: clamped_sum, compiler: Any, **kw: Any) -> str:
    inner = compiler.process(element.clauses, **kw)
    return f"CAST(LEAST(SUM({inner}), {MAX_SUM}) AS BIGINT)"


# ------------------------------------------------------------------ records


def _record(kind: EntityKind, ident: str, row: Any, models: Sequence[ModelUsage]) -> UsageRecord:
    return UsageRecord(
        kind=kind,
        id=ident,
        request_count=row.request_count,
        first_seen=from_time_units(row.first_seen_us),
        last_seen=from_time_units(row.last_seen_us),
        total_tokens=row.total_tokens,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        total_cost=from_cost_units(row.cost_nusd),
        total_duration=from_time_units(row.duration_us),
        models=tuple(models),
    )


def _in_pieces(table: Any, pieces: Sequence[Piece]) -> ColumnElement[bool]:
    """Rows of ``table`` in any of ``pieces``."""
    if not pieces:
        return false()
    return or_(*(
        and_(table.c.span == p.span, table.c.period >= p.first, table.c.period < p.stop)
        for p in pieces
    ))


def _models(
    connection: Connection, kind: EntityKind, ids: Sequence[str], pieces: Sequence[Piece]
) -> dict[str, list[ModelUsage]]:
    """Per entity of ``ids``, its models within ``pieces``, highest cost first."""
    out: dict[str, list[ModelUsage]] = defaultdict(list)
    if not ids or not pieces:
        return out
    t = model_periods
    cost = clamped_sum(t.c.cost_nusd)
    rows = connection.execute(
        select(
            t.c.entity_id, t.c.model, clamped_sum(t.c.request_count),
            clamped_sum(t.c.total_tokens), cost,
        )
        .where(t.c.entity_kind == kind, t.c.entity_id.in_(list(ids)), _in_pieces(t, pieces))
        .group_by(t.c.entity_id, t.c.model)
        .order_by(t.c.entity_id, cost.desc(), t.c.model)
    )
    for ident, model, requests, tokens, nusd in rows:
        out[ident].append(ModelUsage(model, requests, tokens, from_cost_units(nusd)))
    return out


ALL_TIME = (Piece("a", 0, 1),)


def get_detail(
    connection: Connection, kind: EntityKind, ident: str, recent: int
) -> UsageDetail | None:
    """Lifetime aggregates, cost per model and the latest ``recent`` reports."""
    t = periods_table
    row = connection.execute(
        select(*(t.c[name] for name in AMOUNTS)).where(
            t.c.entity_kind == kind, t.c.span == "a", t.c.period == 0, t.c.entity_id == ident
        )
    ).first()
    if row is None:
        return None
    models = _models(connection, kind, [ident], ALL_TIME)[ident]
    record = _record(kind, ident, row, models)
    e = events.c
    who = e.user_id if kind == "user" else e.group_id
    reports = connection.execute(
        select(events)
        .where(who == ident, e.kind == "report")
        .order_by(e.time_us.desc(), e.id.desc())
        .limit(recent)
    )
    return UsageDetail(
        record, {m.model: m.total_cost for m in models}, tuple(_event(r) for r in reports)
    )


def _event(row: Any) -> UsageEvent:
    return UsageEvent(
        time=from_time_units(row.time_us),
        request_id=row.request_id,
        decision_id=row.decision_id,
        user_id=row.user_id,
        group_id=row.group_id,
        model=row.model,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost_usd=from_cost_units(row.cost_nusd),
        duration_seconds=from_time_units(row.duration_us),
        status=row.status,
        attributes=json.loads(row.attributes),
        kind=row.kind,
        counts_request=bool(row.requests),
    )


# ------------------------------------------------------------------ listings


def period_of(query: UsageQuery, now: float) -> tuple[int, int] | None:
    """The listing's ``[start, end)`` rounded out to hours, or None for lifetime."""
    if not query.periodic:
        return None
    start = floor_hour(query.start or 0.0)
    end = ceil_hour(now if query.end is None else query.end)
    return start, max(start, end)


def _one_period(pieces: Sequence[Piece]) -> Piece | None:
    """The piece when ``pieces`` is exactly one period (all time, a month, a day, an hour)."""
    if len(pieces) != 1:
        return None
    p = pieces[0]
    if p.span == "a" or next_period(p.span, p.first) == p.stop:
        return p
    return None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _folded(column: ColumnElement[str], dialect: str) -> ColumnElement[str]:
    """``column`` as ``search`` compares it: folded; as it is on SQLite, whose ``LIKE``
    already ignores ASCII case (tollway never sets ``case_sensitive_like``), so the
    matches are the same without a ``lower()`` per row (half a search's time)."""
    return column if dialect == "sqlite" else folded(column)


def _where(
    kind: EntityKind, pieces: Sequence[Piece], search: str, dialect: str
) -> list[ColumnElement[bool]]:
    """The rollup rows a listing reads: the entity kind, the id search, the periods."""
    t = periods_table
    conditions: list[ColumnElement[bool]] = [t.c.entity_kind == kind]
    if search:
        pattern = f"%{_escape_like(fold(search))}%"
        conditions.append(_folded(t.c.entity_id, dialect).like(pattern, escape="\\"))
    one = _one_period(pieces)
    if one is not None:
        conditions += [t.c.span == one.span, t.c.period == one.first]
    else:
        conditions.append(_in_pieces(t, pieces))
    return conditions


def _live(connection: Connection, kind: EntityKind, pieces: Sequence[Piece]) -> tuple[Piece, ...]:
    """``pieces`` narrowed to the periods that hold usage of ``kind`` (read from the
    per-period counts, a few rows): a span whose usage lies in one period is listed
    along that period's index instead of being summed."""
    if _one_period(pieces) is not None:
        return tuple(pieces)
    c = period_counts.c
    rows = connection.execute(
        select(c.span, func.min(c.period), func.max(c.period))
        .where(c.entity_kind == kind, c.entities > 0, _in_pieces(period_counts, pieces))
        .group_by(c.span)
    ).all()
    found = {span: (low, high) for span, low, high in rows}
    live = []
    for p in pieces:
        low, high = found.get(p.span, (p.stop, p.first))
        low, high = max(low, p.first), min(high, p.stop - 1)
        if low <= high:
            live.append(Piece(p.span, low, next_period(p.span, high)))
    return tuple(live)


def _source(
    kind: EntityKind, pieces: Sequence[Piece], search: str, dialect: str, sort_field: str
) -> tuple[FromClause, bool]:
    """The rows to list, one per entity: the rollup rows of one period as they are, or the
    covered periods summed. Returns the relation and whether it is one period. Summed,
    the relation holds the sort column only (``_amounts`` sums the rest for a page's
    entities: summing every column of every entity took twice as long).

    SQLite is told to read one period along its sort index (``_indexed``)."""
    t = periods_table
    conditions = _where(kind, pieces, search, dialect)
    one = _one_period(pieces)
    if one is not None:
        index = sort_index(one.span, sort_field)
        if dialect == "sqlite" and index is not None and not search:
            return _indexed(kind, one, index), True
        columns = [t.c.entity_id, *(t.c[name] for name in AMOUNTS)]
        return select(*columns).where(*conditions).subquery("listed"), True
    sort_column = SORT_COLUMNS[sort_field]
    query = select(t.c.entity_id, _summed(sort_column)).where(*conditions).group_by(t.c.entity_id)
    return query.subquery("listed"), False


def _indexed(kind: EntityKind, piece: Piece, index: str) -> FromClause:
    """The rollup rows of one period, read along ``index`` on SQLite (``INDEXED BY``,
    which SQLAlchemy cannot say): once ``ANALYZE`` has run, SQLite's planner prefers the
    primary key and a sort of every row (0.1 ms became 50 ms at 100,000 users). The span
    is written into the statement: a partial index is usable only when its ``WHERE``
    visibly holds."""
    t = periods_table
    names = ["entity_id", *AMOUNTS]
    rows = text(
        f"SELECT {', '.join(names)} FROM {t.name} INDEXED BY {index} "
        f"WHERE entity_kind = :kind AND span = '{piece.span}' AND period = :period"
    ).bindparams(kind=kind, period=piece.first)
    return rows.columns(*(t.c[name] for name in names)).subquery("listed")


def _summed(name: str) -> ColumnElement[int]:
    """Rollup column ``name`` over several periods."""
    t = periods_table
    if name == "first_seen_us":
        return func.min(t.c[name]).label(name)
    if name == "last_seen_us":
        return func.max(t.c[name]).label(name)
    return clamped_sum(t.c[name]).label(name)


def _amounts(
    connection: Connection, kind: EntityKind, ids: Sequence[str], pieces: Sequence[Piece]
) -> dict[str, Any]:
    """Per entity of ``ids``, its amounts summed over ``pieces``."""
    if not ids:
        return {}
    t = periods_table
    rows = connection.execute(
        select(t.c.entity_id, *(_summed(name) for name in AMOUNTS))
        .where(t.c.entity_kind == kind, t.c.entity_id.in_(list(ids)), _in_pieces(t, pieces))
        .group_by(t.c.entity_id)
    )
    return {row.entity_id: row for row in rows}


def _count(
    connection: Connection, kind: EntityKind, pieces: Sequence[Piece], one: bool, search: str
) -> int:
    """How many entities the listing holds: kept per period, else the distinct ids of the
    rows it reads (never the summed rows: summing every entity only to count them costs
    as much again as the page itself)."""
    t = periods_table
    if one and not search:
        p = pieces[0]
        c = period_counts.c
        found = connection.execute(
            select(c.entities).where(c.entity_kind == kind, c.span == p.span, c.period == p.first)
        ).scalar()
        return int(found or 0)
    counted = func.count() if one else func.count(distinct(t.c.entity_id))
    return int(connection.execute(
        select(counted).where(*_where(kind, pieces, search, connection.dialect.name))
    ).scalar() or 0)


def list_usage(connection: Connection, query: UsageQuery, now: float) -> UsagePage:
    kind = query.entity_kind
    span = period_of(query, now)
    pieces = ALL_TIME if span is None else _live(connection, kind, cover(*span))
    sort_column = SORT_COLUMNS[query.sort_field]
    source, one = _source(kind, pieces, query.search, connection.dialect.name, query.sort_field)
    count = _count(connection, kind, pieces, one, query.search)
    column = source.c[sort_column]
    ident = source.c.entity_id
    position = tuple_(column, ident)

    def ordered(backwards: bool) -> Select[Any]:
        down = query.descending != backwards
        return select(source).order_by(
            column.desc() if down else column.asc(), ident.desc() if down else ident.asc()
        )

    cursor = query.cursor
    limit = query.limit
    if count == 0:
        rows: list[Any] = []
        more_after = more_before = False
    elif cursor is None:
        rows = list(connection.execute(ordered(False).limit(limit).offset(query.offset)))
        more_after = query.offset + len(rows) < count
        more_before = query.offset > 0
    else:
        mark = tuple_(literal(cursor.value), literal(cursor.id))
        above = query.descending == cursor.before  # the page lies above the mark
        if above:
            cond = position >= mark if cursor.inclusive else position > mark
        else:
            cond = position <= mark if cursor.inclusive else position < mark
        fetched = list(connection.execute(ordered(cursor.before).where(cond).limit(limit + 1)))
        extra = len(fetched) > limit
        rows = fetched[:limit]
        if cursor.before:
            rows.reverse()
            more_before, more_after = extra, True
        else:
            more_before, more_after = not cursor.inclusive or bool(rows), extra

    def at(row: Any, before: bool, inclusive: bool = False) -> str:
        return Cursor(query.sort, getattr(row, sort_column), row.entity_id, before,
                      inclusive).encode()

    next_cursor = at(rows[-1], False) if rows and more_after else None
    previous_cursor = at(rows[0], True) if rows and more_before else None
    if not rows and count > 0:
        # past the end: point back at the last records (or, before the start, the first)
        if cursor is not None and cursor.before:
            next_cursor = Cursor(query.sort, cursor.value, cursor.id, False, True).encode()
        else:
            last = connection.execute(ordered(True).limit(1)).first()
            previous_cursor = at(last, True, inclusive=True)
    ids = [r.entity_id for r in rows]
    models = _models(connection, kind, ids, pieces)
    amounts = {r.entity_id: r for r in rows} if one else _amounts(connection, kind, ids, pieces)
    results = tuple(_record(kind, i, amounts[i], models[i]) for i in ids)
    next_offset, previous_offset = (
        UsagePage.offsets(query, count) if cursor is None else (None, None)
    )
    return UsagePage(
        results=results,
        count=count,
        next=next_offset,
        previous=previous_offset,
        query=query,
        next_cursor=next_cursor,
        previous_cursor=previous_cursor,
        period=None if span is None else (float(span[0]), float(span[1])),
    )


# ------------------------------------------------------------------ series and spikes


def series(
    connection: Connection, kind: EntityKind, ident: str, query: SeriesQuery, now: float
) -> UsageSeries | None:
    """``query.metric`` per step for one entity; None when it has no usage at all."""
    t = periods_table
    known = connection.execute(
        select(t.c.entity_id).where(
            t.c.entity_kind == kind, t.c.span == "a", t.c.period == 0, t.c.entity_id == ident
        )
    ).first()
    if known is None:
        return None
    start, end = query.bounds(now)
    span = "h" if query.step == "1h" else "d"
    column = t.c[_METRIC_COLUMNS[query.metric]]
    values = dict(
        connection.execute(
            select(t.c.period, column).where(
                t.c.entity_kind == kind, t.c.entity_id == ident, t.c.span == span,
                t.c.period >= start, t.c.period < end,
            )
        ).all()
    )
    scale = from_cost_units if query.metric == "cost" else float
    points = tuple(
        SeriesPoint(float(at), scale(values.get(at, 0)))
        for at in range(start, end, query.step_seconds)
    )
    return UsageSeries(kind, ident, query.metric, query.step, float(start), float(end), points)


def spikes(connection: Connection, query: SpikeQuery, now: float) -> list[Spike]:
    """Entities over ``factor`` times their baseline average, highest ratio first (no
    baseline first of all), then by window amount."""
    t = periods_table
    kind = query.entity_kind
    column = t.c[_METRIC_COLUMNS[query.metric]]
    window_end = floor_hour(now) + HOUR
    window_start = window_end - query.window_hours * HOUR
    baseline_start = window_start - query.baseline_hours * HOUR
    minimum = cost_units(query.min) if query.metric == "cost" else query.min
    amount = clamped_sum(column)
    window = (
        select(t.c.entity_id, amount.label("amount"))
        .where(t.c.entity_kind == kind, t.c.span == "h", t.c.period >= window_start,
               t.c.period < window_end)
        .group_by(t.c.entity_id)
        .having(amount >= minimum)
    )
    in_window: dict[str, int] = {ident: int(units) for ident, units in connection.execute(window)}
    if not in_window:
        return []
    baseline: dict[str, int] = {}
    ids = sorted(in_window)
    pieces = cover(max(baseline_start, 0), window_start)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        baseline.update(connection.execute(
            select(t.c.entity_id, clamped_sum(column))
            .where(t.c.entity_kind == kind, t.c.entity_id.in_(chunk), _in_pieces(t, pieces))
            .group_by(t.c.entity_id)
        ).all())
    found: list[Spike] = []

    def scale(units: float) -> float:
        return from_cost_units(units) if query.metric == "cost" else float(units)

    for ident, units in in_window.items():
        base = baseline.get(ident, 0)
        # average per window = base * window / baseline; compared without dividing
        if base and units * query.baseline_hours <= query.factor * base * query.window_hours:
            continue
        average = base * query.window_hours / query.baseline_hours
        ratio = None if base == 0 else units / average
        found.append(Spike(kind, ident, scale(units), scale(average), ratio))
    found.sort(key=lambda s: (s.ratio is not None, -(s.ratio or 0.0), -s.window_amount, s.id))
    return found[: query.limit]


# ------------------------------------------------------------------ activity


def activity(connection: Connection, query: ActivityQuery, chunk: int = 1000) -> Iterator[UsageEvent]:
    """Reports matching ``query``, newest first, streamed from a server-side cursor."""
    e = events.c
    stmt = select(events).where(e.kind == "report")
    if query.user:
        stmt = stmt.where(e.user_id == query.user)
    if query.group:
        stmt = stmt.where(e.group_id == query.group)
    if query.model:
        stmt = stmt.where(e.model == query.model)
    if query.start is not None:
        stmt = stmt.where(e.time_us >= round(query.start * 1_000_000))
    if query.end is not None:
        stmt = stmt.where(e.time_us < round(query.end * 1_000_000))
    stmt = stmt.order_by(e.time_us.desc(), e.id.desc())
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    result = connection.execution_options(stream_results=True, yield_per=chunk).execute(stmt)
    for row in result:
        yield _event(row)
