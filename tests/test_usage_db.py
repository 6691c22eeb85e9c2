"""The usage database on SQLite and on PostgreSQL: one behaviour, checked against sums
computed here from the events themselves (so a shared arithmetic mistake cannot hide).

Events are written the way the ingester writes them (``UsageDatabase.write``); the
clock that decides "now" (periods, spikes, retention) is injected.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tollway.policy.usage import MAX_SUM, UsageEvent, UsageRecord
from tollway.policy.usage_db import OTHER_MODEL, UsageDatabase
from tollway.policy.usage_query import (
    SORT_FIELDS,
    ActivityQuery,
    SeriesQuery,
    SpikeQuery,
    UsagePage,
    UsageQuery,
)
from tollway.policy.validate import FieldError

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, on an hour edge
H = 3600.0
D = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 30 * D)


@pytest.fixture
def db(usage_url: str, clock: Clock) -> Iterator[UsageDatabase]:
    database = UsageDatabase(usage_url, clock=clock)
    database.prepare()
    yield database
    database.close()


_seq = itertools.count()


def ev(user: str = "", group: str = "", *, t: float = T0, model: str = "m", inp: int = 0,
       out: int = 0, cost: float = 0.0, dur: float = 0.0, **kw: Any) -> UsageEvent:
    kw.setdefault("request_id", f"r{next(_seq)}")
    return UsageEvent(
        time=t, user_id=user, group_id=group, model=model, input_tokens=inp,
        output_tokens=out, cost_usd=cost, duration_seconds=dur, **kw,
    )


def decision(user: str = "", group: str = "", *, t: float = T0, model: str = "m") -> UsageEvent:
    return UsageEvent.decision(t, f"d{next(_seq)}", user, group, model)


def listing(db: UsageDatabase, **params: Any) -> UsagePage:
    return db.page(UsageQuery.parse(params))


def ids(page: UsagePage) -> list[str]:
    return [r.id for r in page.results]


# ------------------------------------------------------------------ aggregates


def test_aggregates_and_per_model_breakdown(db: UsageDatabase) -> None:
    db.write([
        ev("alice", "acme", t=T0 + 5, model="gpt", inp=100, out=20, cost=0.0031, dur=1.5),
        ev("alice", "acme", t=T0, model="claude", inp=10, out=5, cost=0.01, dur=0.25),
        ev("alice", t=T0 + 9, model="gpt", inp=1, out=2, cost=0.0000002, dur=0.5),
    ])
    detail = db.detail("user", "alice")
    assert detail is not None
    rec = detail.usage
    assert (rec.user_id, rec.group_id, rec.request_count) == ("alice", "", 3)
    assert (rec.first_seen, rec.last_seen) == (T0, T0 + 9)
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens) == (111, 27, 138)
    assert rec.total_cost == pytest.approx(0.0131002, abs=1e-12)
    assert rec.total_duration == pytest.approx(2.25)
    assert [(m.model, m.request_count, m.total_tokens) for m in rec.models] == [
        ("claude", 1, 15),  # highest cost first
        ("gpt", 2, 123),
    ]
    assert detail.cost_by_model == pytest.approx({"claude": 0.01, "gpt": 0.0031002})
    assert [e.time for e in detail.recent_reports] == [T0 + 9, T0 + 5, T0]  # newest first
    group = db.detail("group", "acme")
    assert group is not None
    assert (group.usage.group_id, group.usage.user_id, group.usage.request_count) == ("acme", "", 2)


def test_costs_add_up_exactly_in_nano_usd(db: UsageDatabase) -> None:
    db.write([ev("u", cost=0.0031) for _ in range(1000)])
    db.write([ev("u", cost=0.000000001) for _ in range(7)])
    rec = listing(db).results[0]
    assert round(rec.total_cost * 1e9) == 3_100_000_007
    assert rec.total_cost == 3.100000007


def test_unknown_entity_is_none_and_bad_kind_or_id_is_an_error(db: UsageDatabase) -> None:
    db.write([ev("alice")])
    assert db.detail("user", "bob") is None
    assert db.detail("group", "alice") is None
    with pytest.raises(ValueError, match=r"^kind:"):
        db.detail("team", "alice")
    with pytest.raises(ValueError, match=r"^user_id:"):
        db.detail("user", "")
    with pytest.raises(ValueError, match=r"^group_id:"):
        db.detail("groups", "x" * 257)


def test_decisions_count_requests_and_reports_add_amounts(db: UsageDatabase) -> None:
    db.write([decision("alice", "acme", t=T0 + 3, model="gpt")])
    db.write([ev("alice", "acme", t=T0 + 5, model="gpt", inp=7, cost=0.25, counts_request=False)])
    db.write([decision("alice", t=T0 + 1, model="claude")])  # an earlier clock
    detail = db.detail("user", "alice")
    assert detail is not None
    rec = detail.usage
    assert (rec.request_count, rec.first_seen, rec.last_seen) == (2, T0 + 1, T0 + 5)
    assert (rec.input_tokens, rec.total_cost) == (7, 0.25)
    assert [(m.model, m.request_count, m.total_tokens) for m in rec.models] == [
        ("gpt", 1, 7), ("claude", 1, 0)]
    assert [e.time for e in detail.recent_reports] == [T0 + 5]  # decisions are not reports
    assert len(list(db.activity(ActivityQuery()))) == 1


def test_a_batch_written_again_adds_nothing(db: UsageDatabase) -> None:
    batch = [ev("u", "g", cost=0.5, inp=3), decision("u", "g"), ev("v", cost=1.0)]
    assert db.write(batch) == 3
    assert db.write(batch) == 0  # a redelivery: every event is already stored
    assert db.write([*batch, ev("u", cost=0.25)]) == 1  # only the new one counts
    u = db.detail("user", "u")
    assert u is not None
    assert (u.usage.request_count, u.usage.total_cost, u.usage.input_tokens) == (3, 0.75, 3)
    g = db.detail("group", "g")
    assert g is not None and (g.usage.request_count, g.usage.total_cost) == (2, 0.5)
    assert listing(db).count == 2


def test_events_are_unique_per_user_and_request_id_and_per_decision_id(db: UsageDatabase) -> None:
    db.write([
        ev("u", request_id="same", cost=1.0),
        ev("v", request_id="same", cost=2.0),  # another user may reuse a request id
        ev("u", request_id="same", cost=4.0),  # the same user may not (even within a batch)
    ])
    d = UsageEvent.decision(T0, "dec-1", "u", "", "m")
    db.write([d, d, UsageEvent.decision(T0, "dec-1", "w", "", "m")])
    u, v = db.detail("user", "u"), db.detail("user", "v")
    assert u is not None and v is not None
    assert (u.usage.total_cost, u.usage.request_count) == (1.0, 2)
    assert v.usage.total_cost == 2.0
    assert db.detail("user", "w") is None


def test_reports_without_user_or_group_only_reach_the_activity_log(db: UsageDatabase) -> None:
    db.write([ev(group="acme"), ev()])
    assert listing(db).count == 0
    assert ids(listing(db, kind="groups")) == ["acme"]
    assert len(list(db.activity(ActivityQuery()))) == 2


def test_awkward_ids_models_and_search_patterns(db: UsageDatabase) -> None:
    weird = ["a:b", "x*y", "üñï", "sp ace", "[br]", "m:x:n", "50%", "a_b", "back\\slash", "O'Brien"]
    db.write([ev(w, model="bedrock:anthropic:claude") for w in weird])
    for w in weird:
        d = db.detail("user", w)
        assert d is not None and d.usage.id == w
        assert d.usage.models[0].model == "bedrock:anthropic:claude"
    assert ids(listing(db, search="*")) == ["x*y"]
    assert ids(listing(db, search="[BR]")) == ["[br]"]
    assert ids(listing(db, search="%")) == ["50%"]  # LIKE wildcards match themselves
    assert ids(listing(db, search="_")) == ["a_b"]
    assert ids(listing(db, search="\\")) == ["back\\slash"]
    assert ids(listing(db, search="o'b")) == ["O'Brien"]
    assert ids(listing(db, search="ÜÑ")) == []  # case folding is ASCII only, everywhere


# ------------------------------------------------------------------ listings


def _population(db: UsageDatabase, base: float = T0) -> dict[str, dict[str, float]]:
    """Twelve users whose orders differ per field, with ties; returns expected values."""
    spec = {
        # id: (first offset, reports, cost each, tokens each)
        "u00": (0, 3, 0.5, 10), "u01": (7, 1, 2.0, 10), "u02": (3, 2, 0.5, 40),
        "u03": (9, 5, 0.1, 1), "u04": (1, 1, 0.5, 10), "u05": (5, 2, 1.0, 5),
        "u06": (2, 4, 0.25, 20), "u07": (8, 1, 0.0, 0), "u08": (4, 2, 0.5, 10),
        "u09": (6, 3, 0.3, 7), "u10": (10, 1, 3.0, 100), "u11": (11, 2, 0.5, 10),
    }
    expected: dict[str, dict[str, float]] = {}
    batch = []
    for uid, (first, n, cost, tokens) in spec.items():
        for k in range(n):
            batch.append(ev(uid, t=base + first + 100 * k, inp=tokens, cost=cost))
        expected[uid] = {
            "first_seen": base + first, "last_seen": base + first + 100 * (n - 1),
            "request_count": n, "total_cost": cost * n, "total_tokens": tokens * n,
        }
    db.write(batch)
    return expected


# lifetime; one calendar month (an index); a span of hours and days (summed rollups); a
# span of hours with usage in one of them only (read as that hour)
SPANS: dict[str, dict[str, Any]] = {
    "lifetime": {},
    "month": {"start": "2027-01-01", "end": "2027-02-01"},
    "summed": {"start": T0 - 2 * H, "end": T0 + 3 * D},
    "narrowed": {"start": T0 - 2 * H, "end": T0 + D},
}
LATE = T0 + D + 8 * H  # the next day: in the summed span's day rollup, not in "narrowed"


@pytest.mark.parametrize("span", SPANS)
def test_every_sort_field_both_ways_ties_by_id(db: UsageDatabase, span: str) -> None:
    expected = _population(db)
    db.write([ev("outside", t=T0 + 40 * D, cost=99.0)])  # in no listed period but lifetime
    db.write([ev("late", t=LATE, inp=30, cost=0.75)])
    if span != "narrowed":
        expected["late"] = {"first_seen": LATE, "last_seen": LATE, "request_count": 1,
                            "total_cost": 0.75, "total_tokens": 30}
    if span == "lifetime":
        expected["outside"] = {"first_seen": T0 + 40 * D, "last_seen": T0 + 40 * D,
                               "request_count": 1, "total_cost": 99.0, "total_tokens": 0}
    for sort_field in SORT_FIELDS:
        for descending in (False, True):
            order = sorted(
                expected, key=lambda i: (expected[i][sort_field], i), reverse=descending
            )
            sort = ("-" if descending else "") + sort_field
            page = listing(db, sort=sort, limit=100, **SPANS[span])
            assert ids(page) == order, sort
            assert page.count == len(order)
            for rec in page.results:
                for field, value in expected[rec.id].items():
                    assert getattr(rec, field) == pytest.approx(value), (rec.id, field)
            searched = listing(db, sort=sort, limit=100, search="u", **SPANS[span])
            assert ids(searched) == [i for i in order if "u" in i], sort
            assert searched.count == len(searched.results)


def test_default_sort_is_cost_descending(db: UsageDatabase) -> None:
    _population(db)
    assert ids(listing(db, limit=4)) == ["u10", "u05", "u01", "u00"]


def test_search_is_a_case_insensitive_substring(db: UsageDatabase) -> None:
    db.write([ev(uid) for uid in ["Alice", "alicia", "bob", "MALICE", "carol"]])
    assert sorted(ids(listing(db, search="ALI"))) == ["Alice", "MALICE", "alicia"]
    assert listing(db, search="ALI").count == 3
    assert ids(listing(db, search="nobody")) == []
    assert listing(db, search="nobody").count == 0


def test_a_period_lists_the_amounts_used_within_it(db: UsageDatabase, clock: Clock) -> None:
    march, april = 1803859200.0, 1806537600.0  # 2027-03-01 and 2027-04-01, 00:00 UTC
    db.write([
        ev("ann", "acme", t=march - 1, cost=100.0, inp=1, model="old"),  # February
        ev("ann", "acme", t=march + 10 * H + 30, cost=1.5, inp=10, model="gpt"),
        ev("ann", t=april - 1, cost=0.5, inp=5, model="mini"),
        decision("ann", t=march + 5 * D, model="gpt"),
        ev("bob", t=march + 2 * D, cost=3.0, inp=1, model="gpt"),
        ev("cat", t=april + 1, cost=50.0, model="gpt"),  # April
    ])
    clock.now = april + 10 * D
    page = listing(db, start="2027-03-01", end="2027-04-01")
    assert page.period == (march, april)
    assert ids(page) == ["bob", "ann"] and page.count == 2
    ann = page.results[1]
    assert (ann.total_cost, ann.input_tokens, ann.request_count) == (2.0, 15, 3)
    assert (ann.first_seen, ann.last_seen) == (march + 10 * H + 30, april - 1)
    assert [(m.model, m.request_count, m.total_cost) for m in ann.models] == [
        ("gpt", 2, 1.5), ("mini", 1, 0.5)]
    lifetime = listing(db)
    assert ids(lifetime) == ["ann", "cat", "bob"]
    assert lifetime.results[0].total_cost == 102.0 and lifetime.period is None
    groups = listing(db, kind="groups", start="2027-03-01", end="2027-04-01")
    assert [(r.id, r.total_cost) for r in groups.results] == [("acme", 1.5)]


def test_period_edges_round_out_to_the_hour(db: UsageDatabase, clock: Clock) -> None:
    db.write([ev("early", t=T0 + 10), ev("late", t=T0 + 2 * H + 59 * 60)])
    clock.now = T0 + 5 * H
    page = listing(db, start=T0 + 30 * 60, end=T0 + 2 * H + 1)
    assert page.period == (T0, T0 + 3 * H)
    assert sorted(ids(page)) == ["early", "late"]
    assert ids(listing(db, start=T0 + H, end=T0 + 2 * H)) == []
    assert listing(db, start=T0 + 2 * H).period == (T0 + 2 * H, T0 + 5 * H)  # end: now
    assert ids(listing(db, end=T0 + H)) == ["early"]  # no start: from the beginning
    empty = listing(db, start=T0, end=T0)
    assert (empty.results, empty.count, empty.period) == ((), 0, (T0, T0))


def test_one_month_and_summed_periods_count_alike(db: UsageDatabase) -> None:
    db.write([ev(f"u{i}", t=T0 + i * H) for i in range(30)])
    db.write([ev(f"u{i}", t=T0 + i * H + 1) for i in range(10)])  # existing rows again
    month = listing(db, start="2027-01-01", end="2027-02-01")
    summed = listing(db, start="2027-01-01", end="2027-02-01T01:00:00")
    assert month.count == summed.count == 30
    assert listing(db, start="2027-01-15", end="2027-01-16").count == 16  # 08:00 to 23:00
    assert listing(db).count == 30


@pytest.mark.parametrize("params", [{}, {"search": "user"}, {"start": T0 + H}])
def test_walking_every_page_by_offset_and_by_cursor(
    db: UsageDatabase, params: dict[str, Any]
) -> None:
    db.write([ev(f"user{i:02d}", t=T0 + (i % 7) * H, cost=(i % 5) * 0.1) for i in range(57)])
    for sort in ("-total_cost", "last_seen", "request_count"):
        _walk(db, params, sort)


def _walk(db: UsageDatabase, params: dict[str, Any], sort: str) -> None:
    expected = {f"user{i:02d}" for i in range(57) if "start" not in params or i % 7 >= 1}
    order = ids(listing(db, sort=sort, limit=100, **params))
    assert set(order) == expected and len(order) == len(expected)
    total = len(order)
    # by offset
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = listing(db, sort=sort, limit=10, offset=offset, **params)
        assert page.count == total
        assert page.previous == (None if offset == 0 else max(offset - 10, 0))
        seen += ids(page)
        offset = page.next
    assert seen == order
    # forwards by cursor
    seen, cursor, pages = [], "", 0
    while True:
        page = listing(db, sort=sort, limit=10, cursor=cursor, **params)
        assert page.count == total
        if cursor:  # offsets are unknown to a cursor page (the first page is offset 0)
            assert page.next is None and page.previous is None
        assert (page.previous_cursor is None) == (pages == 0)
        seen += ids(page)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == order and pages == -(-total // 10)
    # and back again from the last page
    back: list[str] = []
    while True:
        back = ids(page) + back
        if page.previous_cursor is None:
            break
        page = listing(db, sort=sort, limit=10, cursor=page.previous_cursor, **params)
        assert page.next_cursor is not None
    assert back[-len(order):] == order


def test_paging_past_the_end_points_back_at_the_last_records(db: UsageDatabase) -> None:
    db.write([ev(f"u{i:03d}", cost=i / 100) for i in range(30)])
    order = ids(listing(db, limit=100))
    last = listing(db, limit=25, offset=25)
    assert (len(last.results), last.next, last.previous) == (5, None, 0)
    beyond = listing(db, limit=25, offset=100)
    assert (beyond.results, beyond.count, beyond.next, beyond.previous) == ((), 30, None, 25)
    assert ids(listing(db, limit=25, offset=beyond.previous)) == order[25:]
    assert listing(db, limit=10, offset=90).previous == 20  # the same grid: 20..29
    # by cursor: once the records after a cursor moved up (they spent more), the page
    # after it is empty and points back at the last `limit` records
    first = listing(db, limit=25)
    assert ids(first) == order[:25]
    db.write([ev(uid, cost=1.0) for uid in order[25:]])
    end = listing(db, limit=25, cursor=first.next_cursor)
    assert (end.results, end.next_cursor) == ((), None) and end.previous_cursor
    assert ids(listing(db, limit=25, cursor=end.previous_cursor)) == ids(listing(db, limit=100))[5:]
    nothing = listing(db, search="nobody", offset=50)
    assert (nothing.previous, nothing.previous_cursor) == (None, None)


def test_a_cursor_belongs_to_its_sort(db: UsageDatabase) -> None:
    db.write([ev(f"u{i}", cost=i) for i in range(5)])
    cursor = listing(db, limit=2).next_cursor
    assert cursor is not None
    with pytest.raises(FieldError) as err:
        listing(db, sort="last_seen", cursor=cursor)
    assert err.value.parameter == "cursor"
    with pytest.raises(FieldError, match=r"^cursor: give either"):
        listing(db, cursor=cursor, offset=2)


def test_groups_are_listed_separately(db: UsageDatabase) -> None:
    db.write([ev("alice", "acme", cost=1.0), ev("bob", "acme", cost=2.0),
              ev("carol", "initech", cost=0.5)])
    page = listing(db, kind="groups")
    assert [(r.group_id, r.request_count, r.total_cost) for r in page.results] == [
        ("acme", 2, 3.0), ("initech", 1, 0.5)]
    assert listing(db, kind="users").count == 3


def test_records_serialise_with_spec_names(db: UsageDatabase) -> None:
    db.write([ev("alice", t=T0 + 0.5, model="gpt", inp=3, out=4, cost=0.25)])
    rec: UsageRecord = listing(db).results[0]
    assert rec.to_dict() == {
        "user_id": "alice", "request_count": 1,
        "first_seen": "2027-01-15T08:00:00.500000Z", "last_seen": "2027-01-15T08:00:00.500000Z",
        "total_tokens": 7, "input_tokens": 3, "output_tokens": 4, "total_cost": 0.25,
        "total_duration": 0.0,
        "models": [{"model": "gpt", "request_count": 1, "total_tokens": 7, "total_cost": 0.25}],
    }


# ------------------------------------------------------------------ bounds


def test_models_beyond_the_cap_are_summed_as_other(usage_url: str, clock: Clock) -> None:
    db = UsageDatabase(usage_url, clock=clock, max_models=3)
    try:
        db.write([ev("u", "g", model="a", cost=1.0), ev("u", "g", model="b", cost=1.0)])
        db.write([ev("u", "g", model=m, cost=0.5) for m in ("c", "d", "e", "a")])
        db.write([ev("u", model="f", cost=0.25), ev("v", model="f", cost=0.25)])
        detail = db.detail("user", "u")
        assert detail is not None
        assert {m.model: m.total_cost for m in detail.usage.models} == {
            "a": 1.5, "b": 1.0, "c": 0.5, OTHER_MODEL: 1.25}
        assert sum(m.request_count for m in detail.usage.models) == detail.usage.request_count
        group = db.detail("group", "g")
        assert group is not None and len(group.usage.models) == 4
        assert [m.model for m in listing(db, search="v").results[0].models] == ["f"]
        period = listing(db, start=T0 - H, end=T0 + H).results[0]
        assert {m.model for m in period.models} == {"a", "b", "c", OTHER_MODEL}
    finally:
        db.close()


def test_sums_saturate_instead_of_overflowing(db: UsageDatabase) -> None:
    huge = 2**62
    db.write([ev("u", t=T0 + i * D, inp=huge, out=huge, cost=1e9, dur=1e12) for i in range(3)])
    db.write([ev("u", t=T0 + 4 * D, inp=2**63 - 1, cost=1e300)])
    detail = db.detail("user", "u")
    assert detail is not None
    rec = detail.usage
    assert rec.input_tokens == rec.output_tokens == rec.total_tokens == MAX_SUM
    assert rec.total_cost == MAX_SUM / 1e9 and rec.request_count == 4
    for params in ({}, {"start": T0, "end": T0 + 5 * D}, {"start": "2027-01-01", "end": "2027-02-01"}):
        (summed,) = listing(db, **params).results
        assert summed.input_tokens == MAX_SUM, params
    assert len(list(db.activity(ActivityQuery()))) == 4


# ------------------------------------------------------------------ recent and activity


def test_recent_reports_keep_the_last_fifty(db: UsageDatabase) -> None:
    db.write([ev("u", "g", t=T0 + i, inp=i) for i in range(60)])
    for kind, ident in (("user", "u"), ("group", "g")):
        detail = db.detail(kind, ident)
        assert detail is not None
        assert detail.usage.request_count == 60
        assert [e.input_tokens for e in detail.recent_reports] == list(range(59, 9, -1))


def test_activity_is_newest_first_and_filtered(db: UsageDatabase) -> None:
    db.write([
        ev("a", "g1", t=T0, model="x"),
        ev("b", "g1", t=T0 + 1, model="y", attributes={"region": "eu"}),
        ev("a", "g2", t=T0 + 2, model="y", status="error"),
        ev("a", t=T0 + 3, model="x"),
        decision("a", t=T0 + 4),
    ])

    def times(**params: Any) -> list[float]:
        return [e.time - T0 for e in db.activity(ActivityQuery.parse(params))]

    assert times() == [3, 2, 1, 0]
    assert times(user="a") == [3, 2, 0]
    assert times(group="g1") == [1, 0]
    assert times(model="y") == [2, 1]
    assert times(user="a", model="x") == [3, 0]
    assert times(start=T0 + 1, end=T0 + 3) == [2, 1]
    assert times(limit=2) == [3, 2]
    assert times(user="nobody") == []
    events = list(db.activity(ActivityQuery(group="g1", model="y")))
    assert events[0].attributes == {"region": "eu"} and events[0].kind == "report"
    assert [e.status for e in db.activity(ActivityQuery(group="g2"))] == ["error"]


def test_activity_streams_past_one_fetch(db: UsageDatabase) -> None:
    db.write([ev(f"u{i % 3}", t=T0 + i / 10) for i in range(2503)])
    events = list(db.activity(ActivityQuery(user="u1")))
    assert len(events) == 834
    assert [e.time for e in events] == sorted((e.time for e in events), reverse=True)
    assert len(list(db.activity(ActivityQuery(limit=1500)))) == 1500
    stream = db.activity(ActivityQuery())
    assert next(stream).time == T0 + 250.2
    stream.close()  # an abandoned export gives its connection back
    assert db.detail("user", "u0") is not None


def test_retention_deletes_old_events_and_keeps_rollups(db: UsageDatabase, clock: Clock) -> None:
    db.write([ev("u", t=T0 + i * D, cost=1.0) for i in range(10)])
    clock.now = T0 + 8 * D + 400 * D - 1  # the last two events are younger than 400 days
    assert db.purge() == 8
    assert [e.time for e in db.activity(ActivityQuery())] == [T0 + 9 * D, T0 + 8 * D]
    detail = db.detail("user", "u")
    assert detail is not None and detail.usage.total_cost == 10.0
    assert db.horizon() == clock.now - 400 * D


# ------------------------------------------------------------------ series and spikes


def test_series_per_hour_and_per_day(db: UsageDatabase, clock: Clock) -> None:
    db.write([
        ev("u", t=T0 + 10, cost=1.0, inp=10),
        ev("u", t=T0 + 50, cost=0.5, inp=5),
        ev("u", t=T0 + 2 * H + 1, cost=2.0),
        decision("u", t=T0 + 2 * H + 2),
        ev("u", t=T0 + D, cost=4.0),
    ])
    clock.now = T0 + 3 * H - 1
    series = db.series("user", "u", SeriesQuery.parse(start=T0 - H))
    assert series is not None
    assert (series.start, series.end, series.step) == (T0 - H, T0 + 3 * H, "1h")
    assert [(p.time - T0, p.value) for p in series.points] == [
        (-H, 0.0), (0, 1.5), (H, 0.0), (2 * H, 2.0)]
    tokens = db.series("user", "u", SeriesQuery.parse(start=T0, end=T0 + H, metric="tokens"))
    assert tokens is not None and [p.value for p in tokens.points] == [15]
    requests = db.series("user", "u", SeriesQuery.parse(start=T0, end=T0 + 3 * H,
                                                         metric="requests"))
    assert requests is not None and [p.value for p in requests.points] == [2, 0, 2]
    daily = db.series("user", "u", SeriesQuery.parse(step="1d", start=T0, end=T0 + 2 * D))
    assert daily is not None
    assert [(p.time, p.value) for p in daily.points] == [  # 2027-01-15 .. 17, UTC days
        (1799971200.0, 3.5), (1800057600.0, 4.0), (1800144000.0, 0.0)]
    assert db.series("user", "nobody", SeriesQuery()) is None
    assert db.series("user", "u", SeriesQuery()).to_dict()["points"][-1]["time"].endswith("Z")


def test_spikes_compare_the_window_with_the_baseline_average(
    db: UsageDatabase, clock: Clock
) -> None:
    now = T0 + 30 * D + 20 * 60  # 20 minutes into an hour
    window = T0 + 30 * D
    clock.now = now
    batch = []
    for day in range(7):  # the baseline: seven days before the window hour
        at = window - (day + 1) * D + 5
        batch += [ev("steady", t=at, cost=24.0), ev("spiky", t=at, cost=2.4),
                  ev("quiet", t=at, cost=24.0)]
    batch += [
        ev("steady", t=window + 1, cost=1.0),   # its usual 1 USD per hour
        ev("spiky", t=window + 2, cost=3.0),    # 30x its 0.1 USD per hour
        ev("newbie", t=window + 3, cost=2.0),   # no baseline: on `min` alone
        ev("tiny", t=window + 4, cost=0.5),     # no baseline, under `min`
        ev("spiky", t=window - H - 1, cost=50.0),  # before the window: baseline-less hour
    ]
    db.write(batch)
    found = db.spikes(SpikeQuery.parse())
    assert [(s.id, s.ratio is None) for s in found] == [("newbie", True), ("spiky", False)]
    spiky = found[1]
    assert spiky.window_amount == 3.0
    assert spiky.baseline_average == pytest.approx((2.4 * 7 + 50.0) / 168)
    assert spiky.ratio == pytest.approx(3.0 / ((2.4 * 7 + 50.0) / 168))
    assert [s.id for s in db.spikes(SpikeQuery.parse(min=2.5))] == ["spiky"]
    assert [s.id for s in db.spikes(SpikeQuery.parse(factor=100))] == ["newbie"]
    wide = db.spikes(SpikeQuery.parse(window="2h", factor=1, min=0.1))
    assert [s.id for s in wide][:3] == ["newbie", "tiny", "spiky"]
    requests = db.spikes(SpikeQuery.parse(metric="requests"))
    assert [(s.id, s.window_amount, s.ratio) for s in requests] == [
        ("newbie", 1, None), ("tiny", 1, None),
        ("steady", 1, pytest.approx(24.0)), ("spiky", 1, pytest.approx(21.0))]
    assert db.spikes(SpikeQuery.parse(kind="groups")) == []


# ------------------------------------------------------------------ schema


def test_migrations_build_exactly_the_declared_schema(db: UsageDatabase) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tollway.policy.usage_db.schema import VERSION_TABLE, metadata

    def ours(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        return not (kind == "table" and name == VERSION_TABLE)

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": ours})
        diff = compare_metadata(context, metadata)
    # the trigram index is PostgreSQL-only and deliberately not declared
    diff = [d for d in diff if not (d[0] == "remove_index" and d[1].name == "ix_usage_periods_search")]
    assert diff == []


def test_a_database_migrated_by_a_newer_tollway_is_refused(usage_url: str, clock: Clock) -> None:
    from tollway.policy.usage_db import SchemaTooNew
    from tollway.policy.usage_db.migrate import head
    from tollway.policy.usage_db.schema import VERSION_TABLE

    db = UsageDatabase(usage_url, clock=clock)
    assert db.prepare() in (True, False)  # fresh (SQLite) or already current (PostgreSQL)
    assert UsageDatabase(usage_url).prepare() is False
    with db.engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    try:
        with pytest.raises(SchemaTooNew, match="newer tollway"):
            UsageDatabase(usage_url).prepare()
    finally:
        with db.engine.begin() as connection:
            connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '{head()}'"))
        db.close()


@pytest.mark.postgres
def test_postgresql_plans_every_statement_with_its_values(postgres_url: str) -> None:
    # a generic plan of a prepared statement cannot use the partial and trigram indexes
    database = UsageDatabase(postgres_url)
    try:
        with database.engine.connect() as connection:
            mode = connection.exec_driver_sql("SHOW plan_cache_mode").scalar()
        assert mode == "force_custom_plan"
    finally:
        database.close()
