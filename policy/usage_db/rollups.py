"""The usage rollups: newly inserted decision and report events, summed per user and per
group into every period that holds them (all time, month, day, hour), overall and per
model.

One batch becomes one row change per touched rollup row (the batch is summed here
first): the rows that exist are updated with one ``executemany`` of the driver, the rows
that did not are inserted the same way (``insert_new``), and a row another writer
inserted meanwhile is updated instead. Rows are written in key order, so two
replicas writing at once take row locks in the same order; the all-time entity rows are
written first, which serialises writers per entity before the per-model rows are decided
(the model cap needs that: an entity keeps at most ``max_models`` named models, later
ones are summed under ``other``).

Sums saturate at ``MAX_SUM`` instead of overflowing; the earliest and latest event
times are kept as ``first_seen_us``/``last_seen_us``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, case, or_, select, update

from ..usage import MAX_SUM, EntityKind
from .periods import periods_of
from .schema import AMOUNTS, SUMMED, model_periods, period_counts, periods
from .writer import StoredEvent, dialect_insert, insert_new, run_many

__all__ = ["UsageRollups", "OTHER_MODEL", "DEFAULT_MAX_MODELS", "MAX_MODELS_LIMIT"]

ROLLUP_KINDS = frozenset({"decision", "report"})
OTHER_MODEL = "other"
# Every listing page (up to 100 records with up to this many models each, model names up
# to 1 KiB) stays under the gRPC message limit of 4 MiB.
DEFAULT_MAX_MODELS = 32
MAX_MODELS_LIMIT = 32

_FIRST = len(SUMMED)  # index of first_seen_us in an amounts list
_LAST = _FIRST + 1

Key = tuple[Any, ...]


def _amounts(e: StoredEvent) -> list[int]:
    return [
        e.requests, e.input_tokens, e.output_tokens, e.input_tokens + e.output_tokens,
        e.cost_nusd, e.duration_us, e.time_us, e.time_us,
    ]


def _fold_into(into: list[int], more: list[int]) -> None:
    """Add ``more`` (Python integers do not overflow: sums are clamped when written)."""
    into[0] += more[0]
    into[1] += more[1]
    into[2] += more[2]
    into[3] += more[3]
    into[4] += more[4]
    into[5] += more[5]
    if more[_FIRST] < into[_FIRST]:
        into[_FIRST] = more[_FIRST]
    if more[_LAST] > into[_LAST]:
        into[_LAST] = more[_LAST]


def _entities(e: StoredEvent) -> Iterator[tuple[EntityKind, str]]:
    if e.user_id:
        yield "user", e.user_id
    if e.group_id:
        yield "group", e.group_id


class _Sums:
    """Amounts per rollup key, summed in memory."""

    def __init__(self) -> None:
        self.rows: dict[Key, list[int]] = {}

    def add(self, key: Key, amounts: list[int]) -> None:
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = list(amounts)
        else:
            _fold_into(row, amounts)


class UsageRollups:
    """The ``EventHandler`` that keeps ``usage_periods``, ``usage_model_periods`` and
    ``usage_period_counts``."""

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS) -> None:
        if not 1 <= max_models <= MAX_MODELS_LIMIT:
            raise ValueError(f"max_models: must be between 1 and {MAX_MODELS_LIMIT}")
        self.max_models = max_models

    def apply(self, connection: Connection, inserted: Sequence[StoredEvent]) -> None:
        rolled = [e for e in inserted if e.kind in ROLLUP_KINDS and (e.user_id or e.group_id)]
        if not rolled:
            return
        entity_sums = _Sums()
        for e in rolled:
            amounts = _amounts(e)
            spans = periods_of(e.time_us // 1_000_000)
            for kind, ident in _entities(e):
                for span, start in spans:
                    entity_sums.add((kind, span, start, ident), amounts)
        # all-time rows first: their row locks serialise writers of the same entity
        keys = sorted(entity_sums.rows, key=lambda k: (k[1] != "a", k))
        created = _write(connection, periods, keys, entity_sums.rows)
        _count_new(connection, created)

        models = self._model_names(connection, rolled)
        model_sums = _Sums()
        for e in rolled:
            amounts = _amounts(e)
            spans = periods_of(e.time_us // 1_000_000)
            for kind, ident in _entities(e):
                model = models[(kind, ident, e.model)]
                for span, start in spans:
                    model_sums.add((kind, ident, span, start, model), amounts)
        _write(connection, model_periods, sorted(model_sums.rows), model_sums.rows)

    def _model_names(
        self, connection: Connection, rolled: Sequence[StoredEvent]
    ) -> dict[tuple[str, str, str], str]:
        """(kind, id, model) -> the model name the rollups use: itself while the entity
        has fewer than ``max_models`` named models, else ``other``."""
        wanted: dict[EntityKind, set[str]] = defaultdict(set)
        for e in rolled:
            for kind, ident in _entities(e):
                wanted[kind].add(ident)
        known: dict[tuple[str, str], set[str]] = defaultdict(set)
        t = model_periods.c
        for kind, ids in wanted.items():
            for chunk in _chunks(sorted(ids), 500):
                rows = connection.execute(
                    select(t.entity_id, t.model).where(
                        t.entity_kind == kind, t.span == "a", t.period == 0,
                        t.entity_id.in_(chunk),
                    )
                )
                for ident, model in rows:
                    known[(kind, ident)].add(model)
        names: dict[tuple[str, str, str], str] = {}
        for e in rolled:
            for kind, ident in _entities(e):
                key = (kind, ident, e.model)
                if key in names:
                    continue
                seen = known[(kind, ident)]
                if e.model not in seen and len(seen - {OTHER_MODEL}) >= self.max_models:
                    names[key] = OTHER_MODEL
                else:
                    seen.add(e.model)
                    names[key] = e.model
        return names


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _existing(connection: Connection, table: Table, keys: list[Key]) -> set[Key]:
    """Which of ``keys`` (primary keys of ``table``) are rows already."""
    t = table.c
    key_names = [c.name for c in table.primary_key.columns]
    at = key_names.index("span")
    wanted: dict[str, set[str]] = defaultdict(set)
    periods_in: set[tuple[str, int]] = set()
    for key in keys:
        wanted[key[0]].add(key[key_names.index("entity_id")])
        periods_in.add((key[at], key[at + 1]))
    in_periods = or_(*(and_(t.span == span, t.period == start) for span, start in sorted(periods_in)))
    found: set[Key] = set()
    pk = [t[name] for name in key_names]
    for kind, ids in wanted.items():
        for chunk in _chunks(sorted(ids), 500):
            rows = connection.execute(
                select(*pk).where(t.entity_kind == kind, t.entity_id.in_(chunk), in_periods)
            )
            found.update(tuple(row) for row in rows)
    return found


def _write(
    connection: Connection, table: Table, keys: list[Key], sums: dict[Key, list[int]]
) -> list[Key]:
    """Insert the rows that are new, add to the rows that exist; returns the new keys."""
    key_names = [c.name for c in table.primary_key.columns]
    names = [*key_names, *AMOUNTS]
    as_keys = [f"k_{name}" for name in names]

    def values(key: Key) -> tuple[Any, ...]:
        amounts = sums[key]
        summed = [v if v <= MAX_SUM else MAX_SUM for v in amounts[:_FIRST]]
        return (*key, *summed, *amounts[_FIRST:])

    existing = _existing(connection, table, keys)
    new = [key for key in keys if key not in existing]
    created: set[Key] = set()
    if new:
        pk = [table.c[name] for name in key_names]
        found = insert_new(connection, table, [dict(zip(names, values(k), strict=True)) for k in new], pk)
        created = set(new) if found is None else {tuple(row) for row in found}
    # rows that existed, and new ones another writer inserted first
    update = [dict(zip(as_keys, values(key), strict=True)) for key in keys if key not in created]
    run_many(connection, _add_statement(table), update)
    return [key for key in keys if key in created]


_ADDS: dict[str, Any] = {}


def _add_statement(table: Table) -> Any:
    """``UPDATE`` one rollup row: sums saturate at ``MAX_SUM``, times widen (one statement
    per table, so that ``run_many`` compiles it once)."""
    found = _ADDS.get(table.name)
    if found is not None:
        return found
    key_names = [c.name for c in table.primary_key.columns]
    values: dict[str, Any] = {}
    for name in SUMMED:
        column = table.c[name]
        more: Any = bindparam(f"k_{name}")
        values[name] = case((column > MAX_SUM - more, MAX_SUM), else_=column + more)
    first, last = table.c.first_seen_us, table.c.last_seen_us
    values["first_seen_us"] = case(
        (bindparam("k_first_seen_us") < first, bindparam("k_first_seen_us")), else_=first
    )
    values["last_seen_us"] = case(
        (bindparam("k_last_seen_us") > last, bindparam("k_last_seen_us")), else_=last
    )
    where = and_(*(table.c[name] == bindparam(f"k_{name}") for name in key_names))
    stmt = _ADDS[table.name] = update(table).where(where).values(values)
    return stmt


def _count_new(connection: Connection, created: Iterable[Key]) -> None:
    """Add the entities that got their first row in a period to ``usage_period_counts``."""
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    for kind, span, start, _ in created:
        counts[(kind, span, start)] += 1
    if not counts:
        return
    t = period_counts.c
    stmt = dialect_insert(connection, period_counts)
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.entity_kind, t.span, t.period],
        set_={"entities": period_counts.c.entities + stmt.excluded.entities},
    )
    connection.execute(stmt, [
        {"entity_kind": k, "span": s, "period": p, "entities": n}
        for (k, s, p), n in sorted(counts.items())
    ])
