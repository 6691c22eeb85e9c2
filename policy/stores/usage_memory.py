"""Usage aggregates, recent reports and the activity log in this process's memory.

Thread safety: ``MemoryUsage`` has a lock of its own, taken by ``apply``,
``count_request`` and every read. The counter store calls the writers while holding
*its* lock (so that the duplicate check or the decision's counters and the usage change
together); reads never take the store's lock, so the order is always store -> usage and
cannot deadlock. ``activity`` copies the log under the lock and streams the copy, so a
long export never blocks reports.

Listing sorts lazily: the writers only mark an entity as changed; a listing repairs each
sort order it uses by re-inserting the changed entities (or re-sorts when many changed),
so reports and counted decisions stay O(1) and a listing with few changes since the last
one costs O(changes x n) memmove plus the page.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator

from ..usage import (
    SORT_FIELDS,
    ActivityQuery,
    EntityKind,
    RequestSeen,
    Retention,
    Totals,
    UsageDetail,
    UsageEvent,
    UsagePage,
    UsageQuery,
)

__all__ = ["MemoryUsage"]

_KINDS: tuple[EntityKind, ...] = ("user", "group")
# The sort fields a counted request can change (amounts are left to reports).
_REQUEST_FIELDS: tuple[str, ...] = ("request_count", "first_seen", "last_seen")


class _Index:
    """The ids of one kind in ascending ``(value, id)`` order for one sort field.

    Ties order by id, as Redis sorted sets do, so both stores page identically.
    """

    __slots__ = ("dirty", "field", "order", "values")

    def __init__(self, field: str) -> None:
        self.field = field
        self.order: list[tuple[int, str]] = []
        self.values: dict[str, int] = {}
        self.dirty: set[str] = set()

    def refresh(self, totals: dict[str, Totals]) -> list[tuple[int, str]]:
        if not self.dirty:
            return self.order
        # each re-insertion moves up to n pointers; past this many a full sort is cheaper
        if len(self.dirty) > max(64, len(totals) // 200):
            self.order = sorted((t.sort_value(self.field), i) for i, t in totals.items())
            self.values = {i: v for v, i in self.order}
        else:
            for ident in self.dirty:
                new = totals[ident].sort_value(self.field)
                old = self.values.get(ident)
                if old == new:
                    continue
                if old is not None:
                    del self.order[bisect_left(self.order, (old, ident))]
                insort(self.order, (new, ident))
                self.values[ident] = new
        self.dirty.clear()
        return self.order


class MemoryUsage:
    """``UsageWriter`` and ``UsageReader`` for one process."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self._totals: dict[EntityKind, dict[str, Totals]] = {k: {} for k in _KINDS}
        self._indexes: dict[EntityKind, dict[str, _Index]] = {
            k: {f: _Index(f) for f in SORT_FIELDS} for k in _KINDS
        }
        self._recent: dict[EntityKind, dict[str, deque[UsageEvent]]] = {k: {} for k in _KINDS}
        self._log: deque[UsageEvent] = deque(maxlen=self.retention.max_reports)

    # ------------------------------------------------------------------ writer

    def apply(self, event: UsageEvent) -> None:
        with self._lock:
            named: tuple[tuple[EntityKind, str], ...] = (
                ("user", event.user_id),
                ("group", event.group_id),
            )
            for kind, ident in named:
                if ident:
                    self._apply_entity(kind, ident, event)
            self._log.append(event)  # maxlen drops the oldest past max_reports
            horizon = event.time - self.retention.max_age_seconds
            log = self._log
            while log and log[0].time < horizon:
                log.popleft()

    def _apply_entity(self, kind: EntityKind, ident: str, event: UsageEvent) -> None:
        self._entity(kind, ident).add(event)
        self._recent[kind][ident].append(event)
        for index in self._indexes[kind].values():
            index.dirty.add(ident)

    def count_request(self, seen: RequestSeen) -> None:
        with self._lock:
            if seen.user_id:
                self._count_entity("user", seen.user_id, seen)
            if seen.group_id:
                self._count_entity("group", seen.group_id, seen)

    def _count_entity(self, kind: EntityKind, ident: str, seen: RequestSeen) -> None:
        new = ident not in self._totals[kind]
        self._entity(kind, ident).count(seen)
        indexes = self._indexes[kind]
        # a new entity enters every sort order; else only the request side can move
        for name in SORT_FIELDS if new else _REQUEST_FIELDS:
            indexes[name].dirty.add(ident)

    def _entity(self, kind: EntityKind, ident: str) -> Totals:
        """The entity's totals, created (with its empty recent list) when first seen."""
        totals = self._totals[kind].get(ident)
        if totals is None:
            totals = self._totals[kind][ident] = Totals()
            self._recent[kind][ident] = deque(maxlen=self.retention.recent_reports)
        return totals

    def clear(self) -> None:
        with self._lock:
            for k in _KINDS:
                self._totals[k].clear()
                self._recent[k].clear()
                self._indexes[k] = {f: _Index(f) for f in SORT_FIELDS}
            self._log.clear()

    # ------------------------------------------------------------------ reader

    def get(self, kind: EntityKind, ident: str) -> UsageDetail | None:
        entity = kind
        with self._lock:
            totals = self._totals[entity].get(ident)
            if totals is None:
                return None
            recent = tuple(reversed(self._recent[entity][ident]))
            return totals.detail(entity, ident, recent)

    def list(self, query: UsageQuery) -> UsagePage:
        kind = query.entity_kind
        offset, limit = query.offset, query.limit
        if query.empty_span:
            return UsagePage.build(query, (), 0)
        with self._lock:
            totals = self._totals[kind]
            order = self._indexes[kind][query.sort_field].refresh(totals)
            page: list[str] = []
            if not query.filtered:
                count = len(order)
                if query.descending:
                    first = count - 1 - offset
                    page = [order[i][1] for i in range(first, max(first - limit, -1), -1)]
                else:
                    page = [order[i][1] for i in range(offset, min(offset + limit, count))]
            else:
                count = 0
                matches = query.matcher()
                for _, ident in reversed(order) if query.descending else order:
                    t = totals[ident]
                    if matches(ident, t.first_seen_us, t.last_seen_us):
                        if offset <= count < offset + limit:
                            page.append(ident)
                        count += 1
            results = tuple(totals[i].record(kind, i) for i in page)
        return UsagePage.build(query, results, count)

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]:
        with self._lock:
            snapshot = list(self._log)
        return _newest_first(snapshot, query)

    def __len__(self) -> int:
        """How many events the activity log holds."""
        with self._lock:
            return len(self._log)


def _newest_first(events: list[UsageEvent], query: ActivityQuery) -> Iterator[UsageEvent]:
    left = query.limit
    for event in reversed(events):
        if left is not None and left <= 0:
            return
        if query.matches(event):
            yield event
            if left is not None:
                left -= 1
