"""Redis faults with exact semantics: an answer and its effect agree.

A script carries a deadline on Redis's own clock and writes nothing past it, so a call
that timed out while Redis was stalled (SIGSTOP) cannot apply later, when Redis resumes
and runs what was queued on its sockets. The offset between this host's clock and
Redis's is measured, so a skewed local clock changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from conftest import RedisServer

from tollway.policy import windows
from tollway.policy.stores.base import CounterSpec, StoreUnavailable
from tollway.policy.stores.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

HOUR = windows.sliding(3600)
TIMEOUT = 0.2


def tokens(amount: float) -> CounterSpec:
    return CounterSpec("t", "tokens", "u=a", HOUR, 1_000_000, amount)


@pytest.fixture(params=[0.0, -3600.0, 3600.0], ids=["in-sync", "host-behind", "host-ahead"])
def skew(request: pytest.FixtureRequest) -> float:
    return float(request.param)


@pytest.fixture
def make_store(
    redis_server: RedisServer,
) -> Iterator[Callable[[float], RedisCounterStore]]:
    made: list[RedisCounterStore] = []

    def make(skew: float) -> RedisCounterStore:
        store = RedisCounterStore(
            redis_server.url, key_prefix="dl:", timeout=TIMEOUT,
            wall=lambda: time.time() + skew,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def used(store: RedisCounterStore) -> float:
    return store.check_and_consume([tokens(0)], consume=False)[0].used


def test_a_skewed_host_clock_is_measured_away(
    make_store: Callable[[float], RedisCounterStore], skew: float
) -> None:
    """An hour of skew either way: the deadlines sent still fall within the budget."""
    store = make_store(skew)
    for i in range(20):
        assert not store.check_and_consume([tokens(5)], consume=True, hold_id=f"d{i}")[0].exceeded
        assert store.record_report(f"r{i}", None, {"tokens": 1}, [tokens(1)]) == "added"
    assert used(store) == 20 * 5 + 20


def test_calls_stalled_by_sigstop_never_apply_late(
    make_store: Callable[[float], RedisCounterStore],
    redis_server: RedisServer,
    skew: float,
) -> None:
    store = make_store(skew)
    assert not store.check_and_consume([tokens(7)], consume=True)[0].exceeded  # learns the clock
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as consume:
            store.check_and_consume([tokens(100)], consume=True, hold_id="stalled")
        with pytest.raises(StoreUnavailable) as report:
            store.record_report("r-stalled", None, {"tokens": 1000}, [tokens(1000)])
        waited = time.monotonic() - started
    finally:
        redis_server.resume()
    # both were sent and got no answer: their effect is unknown to the caller...
    assert consume.value.outcome == "unknown" and report.value.outcome == "unknown"
    assert waited < 2 * TIMEOUT + 1.0  # each waited for its own budget, no longer
    # ...and Redis, running them now, found its clock past their deadlines: nothing written
    redis_server.client().ping()
    assert used(store) == 7
    # the report's request_id was not used up: its retry counts, once
    assert store.record_report("r-stalled", None, {"tokens": 1000}, [tokens(1000)]) == "added"
    assert store.record_report("r-stalled", None, {"tokens": 1000}, [tokens(1000)]) == (
        "duplicate"
    )
    assert used(store) == 1007


def test_no_time_left_sends_nothing(make_store: Callable[[float], RedisCounterStore]) -> None:
    store = make_store(0.0)
    past = time.monotonic() - 1
    with pytest.raises(StoreUnavailable) as err:
        store.check_and_consume([tokens(1)], consume=True, deadline=past)
    assert err.value.outcome == "not_applied"
    with pytest.raises(StoreUnavailable) as err:
        store.record_report("r1", None, {"tokens": 1}, [tokens(1)], deadline=past)
    assert err.value.outcome == "not_applied"
    assert used(store) == 0
    assert store.record_report("r1", None, {"tokens": 1}, [tokens(1)]) == "added"


def test_a_script_given_a_past_deadline_writes_nothing(redis_server: RedisServer) -> None:
    """What a stalled Redis sees when it resumes, played directly: the deadline in the
    script's clock argument is behind Redis TIME."""
    from tollway.policy.stores.redis_calls import RedisCalls, Script
    from tollway.policy.stores.redis_store import load_script, redis_client

    client = redis_client(redis_server.url, timeout=2)
    calls = RedisCalls(client)
    deadline = time.monotonic() + 2
    late = "D1000000"  # one second after the epoch
    consume = Script.of(load_script("consume"))
    reply = calls.script(consume, ["late:q:t:u=a"], [late, "1", "0", "3600", "60", "10", "1",
                                                      "requests"], deadline)
    assert reply == [reply[0], reply[1], -1, 0]  # too late: nothing done, no event
    report = Script.of(load_script("report"))
    answer = calls.script(report, ["late:r:r1"], [late, "86400", "0", "0"], deadline)
    assert answer == [b"late", 0]  # nothing done, no event
    assert client.keys("late:*") == []
    client.close()
