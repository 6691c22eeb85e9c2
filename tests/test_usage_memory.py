"""Usage values and query validation (pure), and what is particular to ``MemoryUsage``."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from tollway.policy.model import UsageReport
from tollway.policy.stores.usage_memory import MemoryUsage
from tollway.policy.usage import (
    ActivityQuery,
    Retention,
    UsageEvent,
    UsagePage,
    UsageQuery,
    format_time,
)
from tollway.policy.validate import FieldError
from tollway.policy.validate import need_time as parse_time

T0 = 1_800_000_000.0


# ------------------------------------------------------------------ query validation


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"sort": "cost"}, "sort"),
        ({"sort": "--total_cost"}, "sort"),
        ({"sort": "+last_seen"}, "sort"),
        ({"sort": 3}, "sort"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "1e3"}, "offset"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2027-13-01"}, "end"),
        ({"start": float("nan")}, "start"),
        ({"start": -5}, "start"),
        ({"start": "2027-01-02", "end": "2027-01-01"}, "end"),
        ({"kind": "teams"}, "kind"),
        ({"search": "x" * 257}, "search"),
        ({"search": 5}, "search"),
        ({"sort_by": "last_seen"}, "sort_by"),
    ],
)
def test_bad_listing_parameters_name_the_parameter(params: dict[str, Any], parameter: str) -> None:
    with pytest.raises(FieldError) as info:
        UsageQuery.parse(params)
    assert info.value.parameter == parameter
    assert str(info.value).startswith(f"{parameter}: ")
    assert isinstance(info.value, ValueError)


def test_listing_defaults_and_url_strings() -> None:
    assert UsageQuery.parse() == UsageQuery()
    assert UsageQuery.parse({"sort": "", "limit": "", "search": "", "start": "", "end": ""}) == (
        UsageQuery()
    )
    q = UsageQuery.parse(
        {"kind": "groups", "sort": "last_seen", "limit": "100", "offset": "7",
         "start": "2027-01-15", "end": "2027-01-15T09:00:00+01:00", "search": "ac"}
    )
    assert (q.kind, q.sort_field, q.descending, q.limit, q.offset) == (
        "groups", "last_seen", False, 100, 7)
    assert q.start == datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert q.end == q.start + 8 * 3600
    assert UsageQuery.parse(q) is q
    assert UsageQuery.parse(q, offset=10).offset == 10
    assert UsageQuery.parse(limit=1, offset=0, start=T0, end=T0).empty_span


def test_query_params_round_trip() -> None:
    q = UsageQuery.parse({"search": "a b", "sort": "first_seen", "start": T0, "limit": 10})
    assert UsageQuery.parse(dict(q.params())) == q
    assert dict(UsageQuery().params()) == {"limit": "25", "offset": "0"}


def test_page_links_are_offsets() -> None:
    q = UsageQuery(limit=10, offset=20)
    page = UsagePage.build(q, (), 35)
    assert (page.next, page.previous) == (30, 10)
    assert UsagePage.build(UsageQuery(limit=10, offset=5), (), 12).previous == 0
    assert UsagePage.build(UsageQuery(limit=10), (), 10).next is None


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"limit": 0}, "limit"), ({"start": "x"}, "start"), ({"user": 3}, "user"),
     ({"format": "csv"}, "format"), ({"start": T0 + 1, "end": T0}, "end")],
)
def test_bad_activity_parameters_name_the_parameter(
    params: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(FieldError) as info:
        ActivityQuery.parse(params)
    assert info.value.parameter == parameter


def test_times_parse_and_format() -> None:
    assert parse_time("2027-01-15T08:00:00Z", "start") == T0
    assert parse_time("2027-01-15T08:00:00", "start") == T0  # naive means UTC
    assert parse_time(datetime(2027, 1, 15, 8, tzinfo=UTC), "start") == T0
    assert parse_time("", "start") is None
    assert format_time(T0) == "2027-01-15T08:00:00Z"
    assert format_time(T0 + 0.25) == "2027-01-15T08:00:00.250000Z"


def test_retention_defaults_and_validation() -> None:
    r = Retention()
    assert (r.max_reports, r.max_age_seconds, r.recent_reports) == (100_000, 30 * 86400, 50)
    for bad in ({"max_reports": 0}, {"max_age_seconds": 0}, {"recent_reports": 0},
                {"max_age_seconds": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Retention(**bad)


def test_event_from_report_and_json_round_trip() -> None:
    report = UsageReport.parse({
        "request_id": "r1", "decision_id": "d1", "user": {"id": "alice"}, "group": "acme",
        "model": "gpt", "input_tokens": 3, "output_tokens": 4, "cost_usd": 0.01,
        "duration_seconds": 1.5, "status": "error", "attributes": {"region": "eu"},
    })
    event = UsageEvent.from_report(report, T0 + 0.123456)
    assert (event.user_id, event.group_id, event.total_tokens) == ("alice", "acme", 7)
    assert UsageEvent.from_json(event.to_json()) == event
    assert event.to_dict()["time"] == "2027-01-15T08:00:00.123456Z"
    anonymous = UsageEvent.from_report(UsageReport.parse({"request_id": "r2"}), T0)
    assert (anonymous.user_id, anonymous.group_id, anonymous.status) == ("", "", "success")


# ------------------------------------------------------------------ memory specifics


def test_sort_orders_stay_right_under_interleaved_writes() -> None:
    """The lazily repaired indexes must equal a fresh sort after any mix of writes."""
    rng = random.Random(7)
    usage = MemoryUsage()
    users = [f"u{i}" for i in range(300)]
    for step in range(40):
        for _ in range(rng.choice([1, 5, 50, 400])):  # both the repair and the re-sort paths
            usage.apply(UsageEvent(
                time=T0 + rng.random() * 1000, request_id=f"r{step}", user_id=rng.choice(users),
                input_tokens=rng.randrange(100), cost_usd=rng.randrange(5) / 10,
            ))
        sort = rng.choice(["total_cost", "-total_cost", "last_seen", "-request_count",
                           "first_seen", "-total_tokens"])
        page = usage.list(UsageQuery.parse(sort=sort, limit=100))
        field = sort.lstrip("-")
        everyone = [r for u in users if (d := usage.get("user", u)) for r in [d.usage]]
        expected = sorted(everyone, key=lambda r: (getattr(r, field), r.id),
                          reverse=sort.startswith("-"))[:100]
        assert [r.id for r in page.results] == [r.id for r in expected]


def test_reads_run_while_other_threads_apply() -> None:
    usage = MemoryUsage(Retention(max_reports=1000))
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(2000):
                usage.apply(UsageEvent(time=T0 + i, request_id=f"{n}-{i}", user_id=f"u{i % 50}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        page = usage.list(UsageQuery(sort="-request_count", limit=100))
        assert len({r.id for r in page.results}) == len(page.results)
        assert sum(1 for _ in usage.activity(ActivityQuery())) <= 1000
    for t in threads:
        t.join()
    assert not errors
    total = sum(r.request_count for r in usage.list(UsageQuery(limit=100)).results)
    assert total == 6000
    assert len(usage) == 1000
