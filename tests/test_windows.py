"""Window, period, unit and key arithmetic shared by the counter stores."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.policy import windows
from tollway.policy.stores.base import CounterSpec


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def spec(limit: float, amount: float, window: windows.CounterWindow, metric: str = "requests") -> CounterSpec:
    return CounterSpec("q", metric, "u=a", window, limit, amount)


HOUR = windows.sliding(3600)


@pytest.mark.parametrize(
    ("w", "b"), [(1, 1), (30, 1), (59, 1), (60, 1), (119, 1), (120, 2), (3600, 60), (86400, 1440)]
)
def test_bucket_seconds_is_w_over_60_rounded_down_at_least_1(w: int, b: int) -> None:
    assert windows.bucket_seconds(w) == b


def test_covered_buckets_count_the_oldest_partial_bucket_whole() -> None:
    t = 1_000_000.7  # bucket 16666 of a 1h window (b=60) starts at 999_960
    first, last = windows.covered_buckets(t, 3600, 60)
    assert (first, last) == ((1_000_000 - 3600) // 60, 1_000_000 // 60)
    assert last - first == 60  # 61 buckets: more than the window, never less
    assert windows.bucket_until(first, 3600, 60) > t  # the oldest still counts now
    assert windows.bucket_until(first - 1, 3600, 60) <= t  # the one before no longer does


@given(st.floats(0, 4e9), st.sampled_from([1, 5, 60, 90, 3600, 86400, 2_592_000]))
def test_bucket_index_depends_only_on_the_whole_second(t: float, w: int) -> None:
    b = windows.bucket_seconds(w)
    assert windows.bucket_index(t, b) == windows.bucket_index(math.floor(t), b)
    first, last = windows.covered_buckets(t, w, b)
    assert first == (math.floor(t) - w) // b
    assert last == windows.bucket_index(t, b)
    # every bucket in range still counts at t; the one before has left
    assert windows.bucket_until(first, w, b) > t >= windows.bucket_until(first - 1, w, b)


@pytest.mark.parametrize(
    ("kind", "at", "label", "start", "end"),
    [
        ("day", "2026-11-23T13:45:00", "2026-11-23", "2026-11-23T00:00:00", "2026-11-24T00:00:00"),
        ("day", "2026-11-23T23:59:59", "2026-11-23", "2026-11-23T00:00:00", "2026-11-24T00:00:00"),
        ("day", "2026-11-24T00:00:00", "2026-11-24", "2026-11-24T00:00:00", "2026-11-25T00:00:00"),
        ("week", "2026-11-23T00:00:00", "2026-W48", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),
        ("week", "2026-11-29T23:59:59", "2026-W48", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),
        ("week", "2027-01-01T12:00:00", "2026-W53", "2026-12-28T00:00:00", "2027-01-04T00:00:00"),
        ("week", "2027-01-04T00:00:00", "2027-W01", "2027-01-04T00:00:00", "2027-01-11T00:00:00"),
        ("week", "2025-12-29T00:00:00", "2026-W01", "2025-12-29T00:00:00", "2026-01-05T00:00:00"),
        ("month", "2026-11-30T23:59:59", "2026-11", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
        ("month", "2026-12-31T23:59:59", "2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2024-02-29T12:00:00", "2024-02", "2024-02-01T00:00:00", "2024-03-01T00:00:00"),
    ],
)
def test_calendar_periods_are_utc(kind: str, at: str, label: str, start: str, end: str) -> None:
    p = windows.calendar_period(kind, ts(at) + 0.999)
    assert (p.label, p.start, p.end) == (label, ts(start), ts(end))


def test_unknown_calendar_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown calendar window 'year'"):
        windows.calendar_period("year", 0)


def test_slot_counts_and_prunes() -> None:
    s = windows.slot(HOUR, 1_000_000)
    assert isinstance(s.field, int) and s.first is not None
    assert s.counts(s.first) and s.counts(s.field) and not s.counts(s.first - 1)
    assert not s.counts(s.field + 1)  # a future bucket is ignored, not deleted
    assert s.stale(s.first - 1) and not s.stale(s.field + 1) and s.stale("2026-11")
    m = windows.slot(windows.calendar("month"), ts("2026-11-23T00:00:00"))
    assert m.field == "2026-11" and m.counts("2026-11") and m.stale("2026-10")
    assert m.until == ts("2026-12-01T00:00:00")


def test_units_are_exact_integers_rounded_safely() -> None:
    assert windows.amount_units(0.0031, "cost") == 3100
    assert windows.amount_units(1, "requests") == 1
    assert windows.amount_units(0.5, "tokens") == 1  # partial units round up
    assert windows.limit_units(3.7, "tokens") == 3  # limits round down
    assert windows.limit_units(0.0031, "cost") == 3100
    assert windows.limit_units(-5, "cost") == 0
    assert windows.limit_units(math.inf, "cost") == windows.MAX_UNITS
    assert windows.from_units(3100, "cost") == 0.0031
    # sums of micro-units do not drift the way float sums do
    total = sum(windows.amount_units(0.1, "cost") for _ in range(10))
    assert windows.from_units(total, "cost") == 1.0


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf, 1e300])
def test_bad_amounts_are_rejected_with_the_field(bad: float) -> None:
    with pytest.raises(ValueError, match="quota q: amount"):
        windows.prepare_counters("p:", [spec(10, bad, HOUR)])


def test_bad_limit_and_window_and_duplicates_are_rejected() -> None:
    with pytest.raises(ValueError, match="limit: must be a number"):
        windows.prepare_counters("p:", [spec(math.nan, 1, HOUR)])
    with pytest.raises(ValueError, match="at least 1s"):
        windows.prepare_counters("p:", [spec(1, 1, windows.sliding(0))])
    with pytest.raises(ValueError, match="appears twice"):
        windows.prepare_counters("p:", [spec(1, 1, HOUR), spec(2, 1, HOUR)])


def test_fits_follows_the_zero_amount_rule() -> None:
    assert windows.fits(99, 1, 100) and not windows.fits(100, 1, 100)
    assert windows.fits(99, 0, 100) and not windows.fits(100, 0, 100)


def test_key_layout() -> None:
    assert windows.counter_key("tollway:", "free_hourly", "u=alice") == "tollway:q:free_hourly:u=alice"
    assert windows.hold_key("tollway:", "d1") == "tollway:h:d1"
    assert windows.report_key("tollway:", "u=alice", "r1") == "tollway:r:u=alice:r1"
    assert HOUR.code == "3600" and HOUR.bucket == 60
    assert windows.calendar("week").code == "week" and windows.calendar("week").bucket == 0


@pytest.mark.parametrize(
    ("seconds", "calendar", "problem"),
    [(0, None, "at least 1s"), (-5, None, "at least 1s"), (True, None, "whole number"),
     (1.5, None, "whole number"), (None, "year", "neither a duration"),
     (None, None, "neither a duration"), (60, "day", "not both")],
)
def test_a_window_is_checked_when_it_is_built(
    seconds: object, calendar: object, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        windows.CounterWindow(seconds, calendar)  # type: ignore[arg-type]


def test_a_rule_files_window_becomes_the_same_value() -> None:
    from tollway.dsl.ast import Window

    assert windows.window_of(Window(seconds=3600, text="1h")) == HOUR
    assert windows.window_of(Window(calendar="month", text="month")) == windows.calendar("month")


def test_sliding_state_walks_the_oldest_buckets_forward() -> None:
    w = windows.sliding(60)  # b = 1
    t = 1000.5
    buckets = {941: 3, 950: 4, 1000: 2}  # 941 is the oldest counted bucket at t=1000
    state = windows.counter_state(spec(10, 2, w), t, buckets, 2, 10)
    assert state.used == 9 and state.exceeded
    # dropping bucket 941 (3) leaves 6 + 2 <= 10: it leaves the window at 942 + 60
    assert state.retry_after == pytest.approx(1002 - t)
    assert state.resets_at == 1002
    state = windows.counter_state(spec(10, 7, w), t, buckets, 7, 10)
    assert state.retry_after == pytest.approx(1011 - t)  # both 941 and 950 must go
    never = windows.counter_state(spec(10, 11, w), t, buckets, 11, 10)
    assert never.exceeded and never.retry_after == 60  # more than the limit: never fits
    fine = windows.counter_state(spec(10, 1, w), t, buckets, 1, 10)
    assert not fine.exceeded and fine.retry_after == 0


def test_empty_sliding_state_resets_when_the_current_bucket_leaves_the_window() -> None:
    """What a request adds to an empty window at t=500 lands in bucket 8 ([480, 540)) and
    counts until that bucket leaves the 1h window: at 540 + 3600, at least t + window."""
    state = windows.counter_state(spec(10, 1, HOUR), 500.0, {}, 1, 10)
    assert (state.used, state.exceeded, state.resets_at) == (0, False, 4140.0)
    assert state.resets_at >= 500.0 + 3600


def test_calendar_state_retries_at_the_period_end() -> None:
    month = windows.calendar("month")
    t = ts("2026-11-23T00:00:00")
    end = ts("2026-12-01T00:00:00")
    state = windows.counter_state(spec(1, 0.5, month, "cost"), t, {"2026-11": 800_000}, 500_000, 1_000_000)
    assert state.exceeded and state.used == 0.8
    assert state.retry_after == end - t and state.resets_at == end
