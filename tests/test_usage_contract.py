"""One usage behaviour, two implementations: every expectation runs on memory and Redis.

Expected aggregates are computed here from the events themselves, independently of
``Totals``, so a shared arithmetic mistake cannot hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis
from backends import Backend

from tollway.policy.stores.usage_memory import MemoryUsage
from tollway.policy.stores.usage_redis import RedisUsage
from tollway.policy.usage import (
    SORT_FIELDS,
    ActivityQuery,
    RequestSeen,
    Retention,
    UsageEvent,
    UsagePage,
    UsageQuery,
    UsageReader,
    UsageRecord,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Usage(UsageReader, Protocol):
    def apply(self, event: UsageEvent) -> None: ...

    def count_request(self, seen: RequestSeen) -> None: ...


Factory = Callable[..., Usage]


@pytest.fixture
def make(backend: Backend) -> Iterator[Factory]:
    made: list[Any] = []

    def factory(retention: Retention | None = None) -> Usage:
        if backend.name == "memory":
            return MemoryUsage(retention)
        client = redis.Redis.from_url(backend.store)
        store = RedisUsage(client, key_prefix=backend.prefix(), retention=retention)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def usage(make: Factory) -> Usage:
    return make()


_seq = iter(range(10**9))


def ev(user: str = "", group: str = "", *, t: float = T0, model: str = "m", inp: int = 0,
       out: int = 0, cost: float = 0.0, dur: float = 0.0, **kw: Any) -> UsageEvent:
    return UsageEvent(
        time=t, request_id=f"r{next(_seq)}", user_id=user, group_id=group, model=model,
        input_tokens=inp, output_tokens=out, cost_usd=cost, duration_seconds=dur, **kw,
    )


def listing(usage: Usage, **params: Any) -> UsagePage:
    return usage.list(UsageQuery.parse(params))


def ids(page: UsagePage) -> list[str]:
    return [r.id for r in page.results]


# ------------------------------------------------------------------ aggregates


def test_aggregates_and_per_model_breakdown(usage: Usage) -> None:
    usage.apply(ev("alice", "acme", t=T0 + 5, model="gpt", inp=100, out=20, cost=0.0031, dur=1.5))
    usage.apply(ev("alice", "acme", t=T0, model="claude", inp=10, out=5, cost=0.01, dur=0.25))
    usage.apply(ev("alice", t=T0 + 9, model="gpt", inp=1, out=2, cost=0.0000002, dur=0.5))
    detail = usage.get("user", "alice")
    assert detail is not None
    rec = detail.usage
    assert (rec.user_id, rec.group_id, rec.request_count) == ("alice", "", 3)
    assert (rec.first_seen, rec.last_seen) == (T0, T0 + 9)  # out-of-order times: min and max
    assert (rec.input_tokens, rec.output_tokens, rec.total_tokens) == (111, 27, 138)
    assert rec.total_cost == pytest.approx(0.0131002, abs=1e-12)
    assert rec.total_duration == pytest.approx(2.25)
    assert [(m.model, m.request_count, m.total_tokens) for m in rec.models] == [
        ("claude", 1, 15),  # highest cost first
        ("gpt", 2, 123),
    ]
    assert detail.cost_by_model == pytest.approx({"claude": 0.01, "gpt": 0.0031002})
    assert [e.time for e in detail.recent_reports] == [T0 + 9, T0, T0 + 5]  # newest applied first
    group = usage.get("group", "acme")
    assert group is not None
    assert (group.usage.group_id, group.usage.user_id) == ("acme", "")
    assert group.usage.request_count == 2


def test_costs_add_up_exactly(usage: Usage) -> None:
    for _ in range(1000):
        usage.apply(ev("u", cost=0.0031))
    page = listing(usage)
    assert page.results[0].total_cost == 3.1  # integer nano-USD: no float drift


def test_unknown_entity_is_none(usage: Usage) -> None:
    usage.apply(ev("alice"))
    assert usage.get("user", "bob") is None
    assert usage.get("group", "alice") is None


def test_counts_request_false_adds_amounts_only(usage: Usage) -> None:
    usage.apply(ev("u", inp=10, cost=0.5))
    usage.apply(ev("u", inp=5, cost=0.25, counts_request=False))
    rec = listing(usage).results[0]
    assert (rec.request_count, rec.input_tokens, rec.total_cost) == (1, 15, 0.75)
    assert rec.models[0].request_count == 1


def test_a_counted_request_adds_the_request_side_only(usage: Usage) -> None:
    usage.count_request(RequestSeen(T0 + 3, "alice", "acme", "gpt"))
    usage.apply(ev("alice", "acme", t=T0 + 5, model="gpt", inp=7, cost=0.25,
                   counts_request=False))
    usage.count_request(RequestSeen(T0 + 1, "alice", "", "claude"))  # an earlier clock
    detail = usage.get("user", "alice")
    assert detail is not None
    rec = detail.usage
    assert (rec.request_count, rec.first_seen, rec.last_seen) == (2, T0 + 1, T0 + 5)
    assert (rec.input_tokens, rec.total_cost) == (7, 0.25)
    assert [(m.model, m.request_count, m.total_tokens) for m in rec.models] == [
        ("gpt", 1, 7), ("claude", 1, 0),
    ]
    assert [e.time for e in detail.recent_reports] == [T0 + 5]  # requests are not reports
    assert len(list(usage.activity(ActivityQuery()))) == 1
    group = usage.get("group", "acme")
    assert group is not None
    assert (group.usage.request_count, group.usage.first_seen) == (1, T0 + 3)


def test_entities_known_from_requests_alone_are_in_every_listing(usage: Usage) -> None:
    usage.apply(ev("ann", t=T0, cost=0.5, inp=3))
    usage.count_request(RequestSeen(T0 + 2, "bob", "", "m"))
    usage.count_request(RequestSeen(T0 + 4, "bob", "", "m"))
    usage.apply(ev("cat", t=T0 + 1, cost=0.1, counts_request=False))
    for field in SORT_FIELDS:
        page = listing(usage, sort=field)
        assert sorted(ids(page)) == ["ann", "bob", "cat"] and page.count == 3, field
    assert ids(listing(usage, sort="-request_count")) == ["bob", "ann", "cat"]
    assert ids(listing(usage, sort="-total_cost")) == ["ann", "cat", "bob"]
    assert ids(listing(usage, sort="-last_seen")) == ["bob", "cat", "ann"]
    assert ids(listing(usage, start=T0 + 3)) == ["bob"]
    bob = usage.get("user", "bob")
    assert bob is not None and bob.usage.request_count == 2 and bob.usage.total_cost == 0


def test_reports_without_user_or_group_only_reach_the_activity_log(usage: Usage) -> None:
    usage.apply(ev(group="acme"))
    usage.apply(ev())
    assert listing(usage).count == 0
    assert ids(listing(usage, kind="groups")) == ["acme"]
    assert len(list(usage.activity(ActivityQuery()))) == 2


def test_awkward_ids_and_models(usage: Usage) -> None:
    weird = ["a:b", "x*y", "üñï", "sp ace", "[br]", "m:x:n"]
    for w in weird:
        usage.apply(ev(w, model="bedrock:anthropic:claude"))
    for w in weird:
        d = usage.get("user", w)
        assert d is not None and d.usage.id == w
        assert d.usage.models[0].model == "bedrock:anthropic:claude"
    assert ids(listing(usage, search="*")) == ["x*y"]
    assert ids(listing(usage, search="[BR]")) == ["[br]"]


# ------------------------------------------------------------------ listing


def _population(usage: Usage) -> dict[str, dict[str, float]]:
    """Twelve users whose orders differ per field, with ties; returns expected values."""
    spec = {
        # id: (first offset, reports, cost each, tokens each)
        "u00": (0, 3, 0.5, 10), "u01": (7, 1, 2.0, 10), "u02": (3, 2, 0.5, 40),
        "u03": (9, 5, 0.1, 1), "u04": (1, 1, 0.5, 10), "u05": (5, 2, 1.0, 5),
        "u06": (2, 4, 0.25, 20), "u07": (8, 1, 0.0, 0), "u08": (4, 2, 0.5, 10),
        "u09": (6, 3, 0.3, 7), "u10": (10, 1, 3.0, 100), "u11": (11, 2, 0.5, 10),
    }
    expected: dict[str, dict[str, float]] = {}
    for uid, (first, n, cost, tokens) in spec.items():
        for k in range(n):
            usage.apply(ev(uid, t=T0 + first + 100 * k, inp=tokens, cost=cost))
        expected[uid] = {
            "first_seen": T0 + first, "last_seen": T0 + first + 100 * (n - 1),
            "request_count": n, "total_cost": cost * n, "total_tokens": tokens * n,
        }
    return expected


@pytest.mark.parametrize("sort_field", SORT_FIELDS)
@pytest.mark.parametrize("descending", [False, True])
def test_every_sort_field_both_ways_ties_by_id(
    usage: Usage, sort_field: str, descending: bool
) -> None:
    expected = _population(usage)
    order = sorted(expected, key=lambda i: (expected[i][sort_field], i), reverse=descending)
    sort = ("-" if descending else "") + sort_field
    page = listing(usage, sort=sort, limit=100)
    assert ids(page) == order
    assert page.count == 12
    values = [getattr(r, sort_field) for r in page.results]
    assert values == sorted(values, reverse=descending)
    # the same order survives filtering (the filtered path is a different code path)
    assert ids(listing(usage, sort=sort, limit=100, search="u")) == order


def test_default_sort_is_cost_descending(usage: Usage) -> None:
    _population(usage)
    assert ids(listing(usage, limit=4)) == ["u10", "u05", "u01", "u00"]


def test_search_is_a_case_insensitive_substring(usage: Usage) -> None:
    for uid in ["Alice", "alicia", "bob", "MALICE", "carol"]:
        usage.apply(ev(uid))
    assert sorted(ids(listing(usage, search="ALI"))) == ["Alice", "MALICE", "alicia"]
    assert listing(usage, search="ALI").count == 3
    assert ids(listing(usage, search="nobody")) == []
    assert listing(usage, search="nobody").count == 0


def test_start_end_keep_entities_seen_in_the_span(usage: Usage) -> None:
    # active spans: early [0, 10], late [100, 110], long [0, 110], mid [50, 50]
    for uid, times in {"early": [0, 10], "late": [100, 110], "long": [0, 110],
                       "mid": [50]}.items():
        for t in times:
            usage.apply(ev(uid, t=T0 + t))

    def seen(start: float | None, end: float | None) -> list[str]:
        page = listing(usage, sort="first_seen", limit=100,
                       start=None if start is None else T0 + start,
                       end=None if end is None else T0 + end)
        assert page.count == len(page.results)
        return sorted(ids(page))

    assert seen(None, None) == ["early", "late", "long", "mid"]
    assert seen(20, 60) == ["long", "mid"]  # long spans the gap: its activity overlaps
    assert seen(10, None) == ["early", "late", "long", "mid"]  # start inclusive
    assert seen(None, 50) == ["early", "long"]  # end exclusive
    assert seen(111, None) == []
    assert seen(50, 50) == []  # an empty span
    assert seen(0, 0.5) == ["early", "long"]


def test_start_end_accept_iso_8601(usage: Usage) -> None:
    usage.apply(ev("a", t=T0))
    page = listing(usage, start="2027-01-15T07:59:59Z", end="2027-01-15T08:00:01+00:00")
    assert ids(page) == ["a"]
    assert ids(listing(usage, start="2027-01-15T08:00:00.000001Z")) == []


@pytest.mark.parametrize("params", [{}, {"search": "user"}, {"start": T0 + 3}])
@pytest.mark.parametrize("sort", ["-total_cost", "last_seen", "request_count"])
def test_walking_every_page_sees_each_entity_once(
    usage: Usage, params: dict[str, Any], sort: str
) -> None:
    for i in range(57):
        usage.apply(ev(f"user{i:02d}", t=T0 + i % 7, cost=(i % 5) * 0.1))
    total = listing(usage, **params).count
    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = listing(usage, sort=sort, limit=10, offset=offset, **params)
        assert page.count == total
        assert page.previous == (None if offset == 0 else max(offset - 10, 0))
        seen += ids(page)
        offset = page.next
        pages += 1
    assert len(seen) == len(set(seen)) == total
    assert pages == -(-total // 10)
    expected = {f"user{i:02d}" for i in range(57)}
    if "start" in params:
        expected = {f"user{i:02d}" for i in range(57) if i % 7 >= 3}
    assert set(seen) == expected


def test_limit_and_offset_edges(usage: Usage) -> None:
    for i in range(120):
        usage.apply(ev(f"u{i:03d}"))
    assert len(listing(usage, limit=100).results) == 100
    assert len(listing(usage).results) == 25
    last = listing(usage, limit=100, offset=100)
    assert (len(last.results), last.next, last.previous) == (20, None, 0)
    beyond = listing(usage, offset=500)
    assert (beyond.results, beyond.count, beyond.next) == ((), 120, None)


def test_groups_are_listed_separately(usage: Usage) -> None:
    usage.apply(ev("alice", "acme", cost=1.0))
    usage.apply(ev("bob", "acme", cost=2.0))
    usage.apply(ev("carol", "initech", cost=0.5))
    page = listing(usage, kind="groups")
    assert [(r.group_id, r.request_count, r.total_cost) for r in page.results] == [
        ("acme", 2, 3.0), ("initech", 1, 0.5)]
    assert listing(usage, kind="users").count == 3


# ------------------------------------------------------------------ recent and activity


def test_recent_reports_keep_the_last_fifty(usage: Usage) -> None:
    for i in range(60):
        usage.apply(ev("u", "g", t=T0 + i, inp=i))
    for kind, ident in (("user", "u"), ("group", "g")):
        detail = usage.get(kind, ident)
        assert detail is not None
        assert detail.usage.request_count == 60
        assert [e.input_tokens for e in detail.recent_reports] == list(range(59, 9, -1))


def test_activity_is_newest_first_and_filtered(usage: Usage) -> None:
    usage.apply(ev("a", "g1", t=T0, model="x"))
    usage.apply(ev("b", "g1", t=T0 + 1, model="y", attributes={"region": "eu"}))
    usage.apply(ev("a", "g2", t=T0 + 2, model="y", status="error"))
    usage.apply(ev("a", t=T0 + 3, model="x"))

    def times(**params: Any) -> list[float]:
        return [e.time - T0 for e in usage.activity(ActivityQuery.parse(params))]

    assert times() == [3, 2, 1, 0]
    assert times(user="a") == [3, 2, 0]
    assert times(group="g1") == [1, 0]
    assert times(model="y") == [2, 1]
    assert times(user="a", model="x") == [3, 0]
    assert times(start=T0 + 1, end=T0 + 3) == [2, 1]
    assert times(limit=2) == [3, 2]
    assert times(user="nobody") == []
    events = list(usage.activity(ActivityQuery(group="g1", model="y")))
    assert events[0].attributes == {"region": "eu"}
    assert events[0].request_id.startswith("r")
    assert [e.status for e in usage.activity(ActivityQuery(group="g2"))] == ["error"]


def test_activity_streams_past_one_chunk(usage: Usage) -> None:
    for i in range(1203):
        usage.apply(ev(f"u{i % 3}", t=T0 + i / 10))
    events = list(usage.activity(ActivityQuery(user="u1")))
    assert len(events) == 401
    assert [e.time for e in events] == sorted((e.time for e in events), reverse=True)
    assert len(list(usage.activity(ActivityQuery(limit=1000)))) == 1000


def test_retention_trims_by_count(make: Factory) -> None:
    usage = make(Retention(max_reports=5))
    for i in range(12):
        usage.apply(ev("u", t=T0 + i))
    assert [e.time - T0 for e in usage.activity(ActivityQuery())] == [11, 10, 9, 8, 7]
    detail = usage.get("user", "u")
    assert detail is not None and detail.usage.request_count == 12  # aggregates stay


def test_retention_trims_by_age(make: Factory) -> None:
    usage = make(Retention(max_age_seconds=60))
    for t in (0, 10, 30, 60, 65):
        usage.apply(ev("u", t=T0 + t))
    # at t=65 the horizon is t=5: the event at 0 is gone, the rest stay
    assert [e.time - T0 for e in usage.activity(ActivityQuery())] == [65, 60, 30, 10]
    usage.apply(ev("v", t=T0 + 200))
    assert [e.time - T0 for e in usage.activity(ActivityQuery())] == [200]
    assert usage.get("user", "u") is not None


def test_records_serialise_with_spec_names(usage: Usage) -> None:
    usage.apply(ev("alice", t=T0 + 0.5, model="gpt", inp=3, out=4, cost=0.25))
    rec: UsageRecord = listing(usage).results[0]
    data = rec.to_dict()
    assert data == {
        "user_id": "alice", "request_count": 1,
        "first_seen": "2027-01-15T08:00:00.500000Z", "last_seen": "2027-01-15T08:00:00.500000Z",
        "total_tokens": 7, "input_tokens": 3, "output_tokens": 4, "total_cost": 0.25,
        "total_duration": 0.0,
        "models": [{"model": "gpt", "request_count": 1, "total_tokens": 7, "total_cost": 0.25}],
    }
