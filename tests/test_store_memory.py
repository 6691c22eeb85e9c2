"""The memory counter store: injected clock, bounded memory, thread safety, properties."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.policy import windows
from tollway.policy.stores.base import CounterSpec, StoreOptions
from tollway.policy.stores.memory import MemoryCounterStore
from tollway.policy.stores.redis_store import RedisCounterStore


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def req(limit: float, amount: float = 1, key: str = "u=a", seconds: int = 60) -> CounterSpec:
    return CounterSpec("q", "requests", key, windows.sliding(seconds), limit, amount)


def test_store_identity() -> None:
    s = MemoryCounterStore()
    assert (s.name, s.blocking) == ("memory", False)


def test_the_injected_clock_moves_windows() -> None:
    clock = Clock()
    s = MemoryCounterStore(clock)
    assert not s.check_and_consume([req(1)], consume=True)[0].exceeded
    assert s.check_and_consume([req(1)], consume=True)[0].exceeded
    clock.t += 61
    assert not s.check_and_consume([req(1)], consume=True)[0].exceeded


def test_expired_buckets_and_idle_counters_are_dropped() -> None:
    clock = Clock()
    s = MemoryCounterStore(clock)
    for i in range(1000):
        s.check_and_consume([req(10_000, key=f"u={i}")], consume=True)
    for _ in range(200):  # one busy counter across many buckets
        clock.t += 1
        s.check_and_consume([req(10_000, key="u=busy")], consume=True)
    assert len(s._counters["q:q:u=busy"].fields) <= 62
    clock.t += 3 * 60
    s.check_and_consume([req(1, key="u=other")], consume=True)
    assert set(s._counters) == {"q:q:u=other"}  # idle counters swept


def test_reservations_expire_and_are_bounded() -> None:
    clock = Clock()
    s = MemoryCounterStore(clock, hold_ttl=10, options=StoreOptions(max_reservations=3))
    for i in range(5):
        s.check_and_consume([req(100)], consume=True, hold_id=f"d{i}")
    assert s.entries()["reservations"] == 3
    assert s.evictions()["reservations"] == 2
    clock.t += 11
    assert s.record_report("r1", "d4", {"requests": 1}, [req(100)]) == "added"


def test_reported_ids_are_remembered_for_their_ttl() -> None:
    clock = Clock()
    s = MemoryCounterStore(clock, report_ttl=100)
    assert s.record_report("r1", None, {}, [req(100)]) == "added"
    assert s.record_report("r1", None, {}, [req(100)]) == "duplicate"
    clock.t += 101
    assert s.record_report("r1", None, {}, [req(100)]) == "added"


def test_threads_admit_exactly_the_limit() -> None:
    s = MemoryCounterStore()
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            ok = not s.check_and_consume([req(150, seconds=3600)], consume=True)[0].exceeded
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 150


# ------------------------------------------------------------------ properties

_ops = st.lists(
    st.tuples(st.floats(0, 40, allow_nan=False), st.integers(0, 4)), min_size=1, max_size=60
)


@settings(max_examples=150, deadline=None)
@given(_ops, st.integers(1, 6), st.sampled_from([5, 10, 60, 120]))
def test_admitted_total_in_any_window_never_exceeds_the_limit(
    ops: list[tuple[float, int]], limit: int, seconds: int
) -> None:
    clock = Clock(1_000_000.0)
    s = MemoryCounterStore(clock)
    log: list[tuple[float, int]] = []
    for advance, amount in ops:
        clock.t += advance
        if not s.check_and_consume([req(limit, amount, seconds=seconds)], consume=True)[0].exceeded:
            log.append((clock.t, amount))
    for t, _ in log:
        inside = sum(a for u, a in log if t - seconds < u <= t)
        assert inside <= limit


@pytest.fixture(scope="module")
def parity_store(redis_url: str) -> Iterator[RedisCounterStore]:
    s = RedisCounterStore(redis_url, key_prefix=f"tollway-test:parity-{uuid.uuid4().hex[:8]}:", honour_now=True, timeout=2)
    yield s
    s.close()


@pytest.mark.redis
@settings(max_examples=30, deadline=None)
@given(_ops, st.integers(1, 6), st.sampled_from([5, 60, 120]))
def test_memory_and_redis_agree_on_every_step(
    parity_store: RedisCounterStore, ops: list[tuple[float, int]], limit: int, seconds: int
) -> None:

    key = f"u={uuid.uuid4().hex}"  # fresh counter per example
    clock = Clock(1_000_000.0)
    memory = MemoryCounterStore(clock)
    for advance, amount in ops:
        clock.t += advance
        spec = req(limit, amount, key=key, seconds=seconds)
        a = memory.check_and_consume([spec], consume=True)[0]
        b = parity_store.check_and_consume([spec], consume=True, now=clock.t)[0]
        assert a == b
