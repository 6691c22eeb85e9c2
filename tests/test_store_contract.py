"""One behaviour, three stores: every expectation here runs against memory, Redis and a
Redis Cluster.

Time is moved with ``now=`` (the Redis store is built with ``honour_now=True``, its
test-only switch), so windows and periods are exercised without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from backends import Backend
from conftest import WITH_CLUSTER, backend_of

from tollway.policy import windows
from tollway.policy.stores import parse_store_url
from tollway.policy.stores.base import CounterSpec, CounterStore
from tollway.policy.stores.memory import MemoryCounterStore
from tollway.policy.stores.redis_cluster import RedisClusterCounterStore
from tollway.policy.stores.redis_store import RedisCounterStore
from tollway.policy.windows import MAX_UNITS

HOUR = windows.sliding(3600)
MINUTE = windows.sliding(60)
MONTH = windows.calendar("month")
T0 = 1_800_000_000.25  # 2027-01-15T08:00:00.25Z


# On a Redis Cluster a report settles the reservations it finds in the shards of its
# counters (``redis_cluster``): the tests of a report that names none do not apply there.
NAMES_NO_COUNTERS = "a cluster report reaches only the shards of the counters it names"


def settles_without_counters(backend: Backend) -> None:
    if backend.name == "cluster":
        pytest.skip(NAMES_NO_COUNTERS)


@pytest.fixture(params=WITH_CLUSTER)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_of(request)


@pytest.fixture
def store(backend: Backend) -> Iterator[CounterStore]:
    s: CounterStore
    if backend.name == "memory":
        s = MemoryCounterStore(clock=lambda: T0)
    elif backend.name == "cluster":
        s = RedisClusterCounterStore(
            parse_store_url(backend.store), key_prefix=backend.prefix(), honour_now=True,
            timeout=2.0,
        )
    else:
        s = RedisCounterStore(
            backend.store, key_prefix=backend.prefix(), honour_now=True, timeout=2.0
        )
    yield s
    s.close()


def req(limit: float, amount: float = 1, *, quota: str = "q", key: str = "u=a",
        window: windows.CounterWindow = HOUR) -> CounterSpec:
    return CounterSpec(quota, "requests", key, window, limit, amount)


def cost(limit: float, amount: float, *, quota: str = "c", window: windows.CounterWindow = HOUR) -> CounterSpec:
    return CounterSpec(quota, "cost", "u=a", window, limit, amount)


def admitted(store: CounterStore, specs: list[CounterSpec], now: float, **kw: object) -> bool:
    states = store.check_and_consume(specs, consume=True, now=now, **kw)  # type: ignore[arg-type]
    return not any(s.exceeded for s in states)


def used(store: CounterStore, spec: CounterSpec, now: float) -> float:
    return store.check_and_consume([spec], consume=False, now=now)[0].used


def test_admits_up_to_the_limit_and_not_one_more(store: CounterStore) -> None:
    results = [admitted(store, [req(3)], T0 + i) for i in range(5)]
    assert results == [True, True, True, False, False]
    state = store.check_and_consume([req(3)], consume=False, now=T0 + 5)[0]
    assert (state.used, state.limit, state.exceeded) == (3, 3, True)
    assert state.retry_after > 0


def test_all_or_nothing_when_one_counter_is_exceeded(store: CounterStore) -> None:
    assert admitted(store, [req(1, quota="tight")], T0)
    states = store.check_and_consume(
        [req(10, quota="roomy"), req(1, quota="tight")], consume=True, now=T0 + 1
    )
    assert [s.exceeded for s in states] == [False, True]
    assert used(store, req(10, quota="roomy"), T0 + 2) == 0  # nothing was added


def test_consume_false_changes_nothing(store: CounterStore) -> None:
    for i in range(5):
        state = store.check_and_consume([req(2)], consume=False, now=T0 + i)[0]
        assert state.used == 0 and not state.exceeded
    assert admitted(store, [req(2)], T0 + 6) and admitted(store, [req(2)], T0 + 7)


def test_zero_amount_admits_while_used_is_below_the_limit(store: CounterStore) -> None:
    assert admitted(store, [cost(0.01, 0.006)], T0)
    assert admitted(store, [cost(0.01, 0)], T0 + 1)  # 0.006 < 0.01
    assert admitted(store, [cost(0.01, 0.004)], T0 + 2)  # exactly the limit fits
    assert not admitted(store, [cost(0.01, 0)], T0 + 3)  # used == limit


def test_zero_limit_never_admits(store: CounterStore) -> None:
    assert not admitted(store, [req(0, 0)], T0)
    assert not admitted(store, [req(0, 1)], T0)


def test_sliding_window_frees_usage_at_retry_after(store: CounterStore) -> None:
    spec = req(2, window=MINUTE)  # b = 1 s
    assert admitted(store, [spec], T0)
    assert admitted(store, [spec], T0 + 30)
    denied = store.check_and_consume([spec], consume=True, now=T0 + 40)[0]
    assert denied.exceeded
    # the first request's bucket leaves the window at floor(T0) + 1 + 60
    assert denied.retry_after == pytest.approx(math.floor(T0) + 61 - (T0 + 40))
    assert denied.resets_at == math.floor(T0) + 61
    assert not admitted(store, [spec], T0 + 40 + denied.retry_after - 1)
    assert admitted(store, [spec], T0 + 40 + denied.retry_after)


def test_calendar_month_resets_at_the_boundary(store: CounterStore) -> None:
    end = datetime(2027, 2, 1, tzinfo=UTC).timestamp()
    spec = cost(1.0, 0.6, window=MONTH)
    assert admitted(store, [spec], end - 100)
    state = store.check_and_consume([spec], consume=True, now=end - 1)[0]
    assert state.exceeded and state.retry_after == 1 and state.resets_at == end
    assert admitted(store, [spec], end)
    assert used(store, spec, end + 1) == 0.6


def test_cost_sums_exactly(store: CounterStore) -> None:
    results = [admitted(store, [cost(1.0, 0.1)], T0 + i) for i in range(11)]
    assert results == [True] * 10 + [False]
    assert used(store, cost(1.0, 0.1), T0 + 20) == 1.0


def test_report_settles_the_reservation_by_the_difference(store: CounterStore) -> None:
    specs = [req(100), cost(1.0, 0.01)]
    assert admitted(store, specs, T0, hold_id="d1")
    assert store.record_report("r1", "d1", {"requests": 1, "cost": 0.0031}, specs, now=T0 + 5) == "settled"
    assert used(store, specs[1], T0 + 6) == 0.0031
    assert used(store, specs[0], T0 + 6) == 1
    # same request_id again: counted once
    assert store.record_report("r1", "d1", {"cost": 0.5}, specs, now=T0 + 7) == "duplicate"
    assert used(store, specs[1], T0 + 8) == 0.0031


def test_a_reservation_settles_only_once(store: CounterStore) -> None:
    spec = cost(1.0, 0.01)
    assert admitted(store, [spec], T0, hold_id="d1")
    assert store.record_report("r1", "d1", {"cost": 0.02}, [cost(1, 0.02)], now=T0 + 1) == "settled"
    assert used(store, spec, T0 + 2) == 0.02
    # a second report naming the same decision falls back to adding its actuals
    assert store.record_report("r2", "d1", {"cost": 0.03}, [cost(1, 0.03)], now=T0 + 3) == "added"
    assert used(store, spec, T0 + 4) == 0.05


def test_settling_never_goes_below_zero(store: CounterStore, backend: Backend) -> None:
    settles_without_counters(backend)
    spec = cost(1.0, 0.01)
    assert admitted(store, [spec], T0, hold_id="d1")
    assert store.record_report("r1", "d1", {"cost": 0}, [], now=T0 + 1) == "settled"
    assert used(store, spec, T0 + 2) == 0
    assert admitted(store, [spec], T0 + 3, hold_id="d2")
    assert store.record_report("r2", "d2", {"cost": 0}, [], now=T0 + 4) == "settled"
    assert used(store, spec, T0 + 5) == 0  # not -0.01 carried over


def test_a_metric_the_report_omits_keeps_its_reservation(store: CounterStore, backend: Backend) -> None:
    settles_without_counters(backend)
    specs = [req(100), cost(1.0, 0.01)]
    assert admitted(store, specs, T0, hold_id="d1")
    assert store.record_report("r1", "d1", {"cost": 0.002}, [], now=T0 + 1) == "settled"
    assert used(store, specs[0], T0 + 2) == 1 and used(store, specs[1], T0 + 2) == 0.002


def test_report_without_a_live_reservation_adds_the_fallback(store: CounterStore) -> None:
    assert store.record_report("r1", None, {"cost": 0.2}, [cost(1, 0.2)], now=T0) == "added"
    assert store.record_report("r2", "nope", {"cost": 0.3}, [cost(1, 0.3)], now=T0 + 1) == "added"
    assert used(store, cost(1, 0), T0 + 2) == 0.5


def test_a_refused_decision_reserves_nothing(store: CounterStore) -> None:
    assert admitted(store, [req(1)], T0)
    assert not admitted(store, [req(1)], T0 + 1, hold_id="d-refused")
    assert store.record_report("r1", "d-refused", {"requests": 1}, [req(1)], now=T0 + 2) == "added"


def test_settling_into_a_bucket_that_left_the_window_changes_nothing(store: CounterStore, backend: Backend) -> None:
    settles_without_counters(backend)
    spec = req(10, window=MINUTE)
    assert admitted(store, [spec], T0, hold_id="d1")
    later = T0 + 120
    assert store.record_report("r1", "d1", {"requests": 5}, [], now=later) == "settled"
    assert used(store, spec, later) == 0


def test_bad_input_is_rejected_before_anything_changes(store: CounterStore) -> None:
    good = req(10)
    with pytest.raises(ValueError, match="amount"):
        store.check_and_consume([good, cost(1, math.nan)], consume=True, now=T0)
    with pytest.raises(ValueError, match="amount"):
        store.check_and_consume([good, cost(1, -0.5)], consume=True, now=T0)
    with pytest.raises(ValueError, match="appears twice"):
        store.check_and_consume([good, good], consume=True, now=T0)
    assert used(store, good, T0) == 0
    with pytest.raises(ValueError, match="actual cost"):
        store.record_report("r1", None, {"cost": math.nan}, [good], now=T0)
    # the rejected report did not burn its request_id
    assert store.record_report("r1", None, {"requests": 1}, [good], now=T0) == "added"
    assert used(store, good, T0 + 1) == 1


def test_no_counters_is_a_no_op(store: CounterStore) -> None:
    assert store.check_and_consume([], consume=True, hold_id="d1", now=T0) == []


def test_counters_are_separate_per_key_and_quota(store: CounterStore) -> None:
    assert admitted(store, [req(1, key="u=a")], T0)
    assert admitted(store, [req(1, key="u=b")], T0)
    assert admitted(store, [req(1, key="u=a", quota="other")], T0)
    assert not admitted(store, [req(1, key="u=a")], T0)


def test_a_counter_saturates_where_it_would_stop_being_exact(store: CounterStore) -> None:
    """Reports add without a limit; a field stops at MAX_UNITS (2**53 - 1), exact in Lua."""
    big = float(MAX_UNITS - 10)
    assert store.record_report("r1", None, {"tokens": big}, [tok(big)], now=T0) == "added"
    for i in range(3):
        assert store.record_report(f"r{i + 2}", None, {"tokens": 7}, [tok(7)], now=T0) == "added"
    assert used(store, tok(0), T0) == MAX_UNITS
    state = store.check_and_consume([tok(1)], consume=True, now=T0)[0]
    assert state.exceeded  # a saturated counter is over any limit a store keeps


def tok(amount: float) -> CounterSpec:
    return CounterSpec("t", "tokens", "u=a", HOUR, MAX_UNITS, amount)


# ------------------------------------------------ reports bound to their decision


def test_a_report_must_name_the_owner_of_the_reservation(
    store: CounterStore, backend: Backend
) -> None:
    from tollway.policy.stores.base import ForeignDecision

    settles_without_counters(backend)
    assert admitted(store, [req(10, amount=1)], T0, hold_id="d1", hold_owner="g=acme/u=a")
    for owner in ("u=a", "g=acme/u=b", "g=other/u=a", "*"):
        with pytest.raises(ForeignDecision, match="another user or group"):
            store.record_report("r1", "d1", {"requests": 5}, [req(10, amount=5)],
                                owner=owner, reporter=owner, now=T0 + 1)
    assert used(store, req(10), T0 + 2) == 1  # nothing changed, the reservation is intact
    outcome = store.record_report("r1", "d1", {"requests": 3}, [], owner="g=acme/u=a",
                                  reporter="u=a", now=T0 + 3)
    assert outcome == "settled" and used(store, req(10), T0 + 4) == 3


def test_report_idempotency_is_per_reporter(store: CounterStore) -> None:
    first = store.record_report("same", None, {}, [req(10, amount=2)], reporter="u=a", now=T0)
    again = store.record_report("same", None, {}, [req(10, amount=2)], reporter="u=a", now=T0)
    other = store.record_report("same", None, {}, [req(10, amount=2)], reporter="u=b", now=T0)
    assert (first, again, other) == ("added", "duplicate", "added")
    assert used(store, req(10), T0 + 1) == 4
