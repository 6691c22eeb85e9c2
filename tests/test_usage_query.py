"""Usage values and query validation (pure): parameters, cursors, periods, events.

Decoders that read what a client or a stream hands over (cursors, stream entries) are
fuzzed with hypothesis: they accept what tollway made and reject everything else with
the documented error, never with another exception.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.policy.model import UsageReport
from tollway.policy.usage import (
    MAX_SUM,
    UsageEvent,
    clamp_units,
    cost_units,
    format_time,
    time_units,
)
from tollway.policy.usage_db.periods import HOUR, cover, next_period, period_start, periods_of
from tollway.policy.usage_query import (
    ActivityQuery,
    Cursor,
    SeriesQuery,
    SpikeQuery,
    UsagePage,
    UsageQuery,
    parse_hours,
)
from tollway.policy.validate import FieldError, need_time

T0 = 1_800_000_000.0


# ------------------------------------------------------------------ listing parameters


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
        ({"limit": "١٢"}, "limit"),  # digits, but not ASCII ones
        ({"limit": 2.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "1e3"}, "offset"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2027-13-01"}, "end"),
        ({"start": float("nan")}, "start"),
        ({"start": -5}, "start"),
        ({"start": 1e20}, "start"),
        ({"start": "2027-01-02", "end": "2027-01-01"}, "end"),
        ({"kind": "teams"}, "kind"),
        ({"search": "x" * 257}, "search"),
        ({"search": 5}, "search"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": Cursor("-total_cost", 1, "u").encode(), "offset": 5}, "cursor"),
        ({"cursor": Cursor("last_seen", 1, "u").encode()}, "cursor"),
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
    empty = {"sort": "", "limit": "", "search": "", "start": "", "end": "", "cursor": ""}
    assert UsageQuery.parse(empty) == UsageQuery()
    q = UsageQuery.parse(
        {"kind": "groups", "sort": "last_seen", "limit": "100", "offset": "7",
         "start": "2027-01-15", "end": "2027-01-15T09:00:00+01:00", "search": "ac"}
    )
    assert (q.kind, q.sort_field, q.descending, q.limit, q.offset, q.periodic) == (
        "groups", "last_seen", False, 100, 7, True)
    assert q.start == datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert q.end == q.start + 8 * 3600
    assert UsageQuery.parse(q) is q
    assert UsageQuery.parse(q, offset=10).offset == 10
    assert UsageQuery.parse(kind="group").kind == "groups"  # both spellings of a kind
    cursor = Cursor("last_seen", 5, "u")
    assert UsageQuery.parse(sort="last_seen", cursor=cursor.encode()).cursor == cursor
    assert q.with_cursor(cursor).offset == 0 and q.with_offset(3).cursor is None


@pytest.mark.parametrize(
    ("offset", "limit", "count", "expected"),
    [
        (0, 10, 35, (10, None)),
        (20, 10, 35, (30, 10)),
        (30, 10, 35, (None, 20)),
        (5, 10, 12, (None, 0)),
        (0, 10, 10, (None, None)),
        (100, 25, 30, (None, 25)),  # past the end: the last page of the grid with records
        (90, 10, 30, (None, 20)),
        (95, 10, 30, (None, 25)),
        (30, 10, 30, (None, 20)),
        (50, 10, 0, (None, None)),  # nothing at all: no previous page either
    ],
)
def test_page_offsets(offset: int, limit: int, count: int, expected: tuple[Any, Any]) -> None:
    assert UsagePage.offsets(UsageQuery(limit=limit, offset=offset), count) == expected


@given(
    st.sampled_from(["-total_cost", "last_seen", "first_seen", "request_count"]),
    st.integers(0, 2**63 - 1),
    st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 256),
    st.booleans(),
    st.booleans(),
)
def test_cursors_round_trip(sort: str, value: int, ident: str, before: bool, inclusive: bool) -> None:
    cursor = Cursor(sort, value, ident, before, inclusive)
    text = cursor.encode()
    assert text.isascii() and "=" not in text
    assert Cursor.decode(text, sort) == cursor


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))))
def test_anything_else_is_not_a_cursor(text: str) -> None:
    try:
        cursor = Cursor.decode(text, "-total_cost")
    except FieldError as exc:
        assert exc.parameter == "cursor"
    else:  # only an encoding of a well-formed cursor for that sort gets through
        assert cursor.sort == "-total_cost"
        assert Cursor.decode(cursor.encode(), "-total_cost") == cursor


# ------------------------------------------------------------------ other queries


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


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"step": "1m"}, "step"), ({"metric": "money"}, "metric"), ({"start": "x"}, "start"),
     ({"start": 0, "end": 86400 * 1000}, "start"), ({"window": 1}, "window")],
)
def test_bad_series_parameters_name_the_parameter(params: dict[str, Any], parameter: str) -> None:
    with pytest.raises(FieldError) as info:
        SeriesQuery.parse(params)
    assert info.value.parameter == parameter


def test_series_bounds_round_out_to_the_step() -> None:
    now = T0 + 1234.5
    assert SeriesQuery().bounds(now) == (T0 + 3600 - 24 * 3600, T0 + 3600)
    q = SeriesQuery.parse(step="1d", start=T0 + 10, end=T0 + 20)
    assert q.bounds(now) == (1799971200, 1800057600)
    assert SeriesQuery.parse(start=T0, end=T0).bounds(now) == (T0, T0 + 3600)  # one step at least


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"window": "30m"}, "window"), ({"window": "0h"}, "window"), ({"baseline": "7"}, "baseline"),
     ({"baseline": "401d"}, "baseline"), ({"factor": "-1"}, "factor"), ({"factor": "nan"}, "factor"),
     ({"min": "x"}, "min"), ({"kind": "teams"}, "kind"), ({"metric": "usd"}, "metric"),
     ({"limit": 101}, "limit"), ({"since": "1h"}, "since")],
)
def test_bad_spike_parameters_name_the_parameter(params: dict[str, Any], parameter: str) -> None:
    with pytest.raises(FieldError) as info:
        SpikeQuery.parse(params)
    assert info.value.parameter == parameter


def test_spike_defaults_and_durations() -> None:
    q = SpikeQuery.parse({"window": "", "factor": "", "min": ""})
    assert (q.kind, q.metric, q.window_hours, q.baseline_hours, q.factor, q.min, q.limit) == (
        "users", "cost", 1, 168, 5.0, 1.0, 25)
    assert SpikeQuery.parse(kind="group", window="6h", factor="2.5").window_hours == 6
    assert (parse_hours("1d", "w", "1h"), parse_hours(None, "w", "2h")) == (24, 2)


# ------------------------------------------------------------------ values


def test_times_parse_and_format() -> None:
    assert need_time("2027-01-15T08:00:00Z", "start") == T0
    assert need_time("2027-01-15T08:00:00", "start") == T0  # naive means UTC
    assert need_time(datetime(2027, 1, 15, 8, tzinfo=UTC), "start") == T0
    assert need_time("", "start") is None
    assert format_time(T0) == "2027-01-15T08:00:00Z"
    assert format_time(T0 + 0.25) == "2027-01-15T08:00:00.250000Z"


def test_units_are_exact_and_clamped() -> None:
    assert cost_units(0.0031) == 3_100_000 and time_units(1.5) == 1_500_000
    assert cost_units(1e300) == MAX_SUM and cost_units(float("inf")) == MAX_SUM
    assert clamp_units(-5) == 0 and clamp_units(2**70) == MAX_SUM


def test_event_from_report_and_json_round_trip() -> None:
    report = UsageReport.parse({
        "request_id": "r1", "decision_id": "d1", "user": {"id": "alice"}, "group": {"id": "acme"},
        "model": "gpt", "input_tokens": 3, "output_tokens": 4, "cost_usd": 0.01,
        "duration_seconds": 1.5, "status": "error", "attributes": {"region": "eu"},
    })
    event = UsageEvent.from_report(report, T0 + 0.123456)
    assert (event.user_id, event.group_id, event.total_tokens, event.counts_request) == (
        "alice", "acme", 7, False)
    assert UsageEvent.from_json(event.to_json()) == event
    assert event.to_dict()["time"] == "2027-01-15T08:00:00.123456Z"
    decided = UsageEvent.decision(T0, "d2", "bob", "", "m", "r2")
    assert (decided.kind, decided.counts_request) == ("decision", True)
    assert UsageEvent.from_json(decided.to_json()) == decided


@settings(max_examples=300)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.dictionaries(st.sampled_from(["time", "kind", "user_id", "input_tokens", "attributes",
                                     "cost_usd", "counts_request"]),
                    st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.booleans(),
                              st.lists(st.integers(), max_size=2)), max_size=7)
    .map(lambda d: __import__("json").dumps(d)),
))
def test_stream_entries_that_are_not_events_are_refused(raw: Any) -> None:
    with pytest.raises(ValueError):  # json's own errors are ValueErrors too
        UsageEvent.from_json(raw)


@given(st.builds(
    UsageEvent,
    time=st.floats(0, 2e9), request_id=st.text(max_size=20), user_id=st.text(max_size=20),
    input_tokens=st.integers(0, 2**63 - 1), cost_usd=st.floats(0, 1e12),
    attributes=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    kind=st.sampled_from(["report", "decision"]), counts_request=st.booleans(),
))
def test_every_event_survives_the_stream(event: UsageEvent) -> None:
    assert UsageEvent.from_json(event.to_json()) == event


# ------------------------------------------------------------------ periods

_HOURS = st.integers(0, 2_000_000)  # hours since 1970: up to the year 2198


@settings(max_examples=400)
@given(_HOURS, st.integers(0, 24 * 800))
def test_cover_is_exact_with_whole_periods(first_hour: int, length: int) -> None:
    start, end = first_hour * HOUR, (first_hour + length) * HOUR
    pieces = cover(start, end)
    assert len(pieces) <= 5
    at = start
    for piece in pieces:
        assert piece.first == at < piece.stop
        assert period_start(piece.span, piece.first) == piece.first  # on the span's edges
        walk = piece.first
        while walk < piece.stop:
            walk = next_period(piece.span, walk)
        assert walk == piece.stop
        at = piece.stop
    assert at == end


def test_cover_uses_the_coarsest_periods() -> None:
    march, april, may = 1803859200, 1806537600, 1809129600
    assert [p.span for p in cover(march, april)] == ["m"]
    assert [p.span for p in cover(march + 5 * HOUR, may + 30 * HOUR)] == ["h", "d", "m", "d", "h"]
    assert [p.span for p in cover(march + 5 * HOUR, april + 30 * HOUR)] == ["h", "d", "h"]
    assert [p.span for p in cover(0, april)] == ["m"]
    assert [p.span for p in cover(march, march + 5 * HOUR)] == ["h"]
    with pytest.raises(ValueError):
        cover(march + 1, april)


def test_every_moment_is_in_four_periods() -> None:
    t = 1803859200 + 2 * 86400 + 5 * 3600 + 17  # 2027-03-03T05:00:17Z
    assert periods_of(t) == (("a", 0), ("m", 1803859200), ("d", 1803859200 + 2 * 86400),
                             ("h", t - 17))
