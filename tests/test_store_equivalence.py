"""The Redis store answers exactly as the memory store, whatever the sequence of calls.

Random sequences of decisions, dry reads, reports (settling, or adding without a
reservation) and moves of the clock run on both stores side by side; every counter state
and every report outcome must be the same. The memory store is the reference: its window
arithmetic reads every bucket, while the Redis script keeps a running total and the
oldest bucket of each sliding window (``lua/common.lua``).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.policy import windows
from tollway.policy.stores.base import CounterSpec
from tollway.policy.stores.memory import MemoryCounterStore
from tollway.policy.stores.redis_store import RedisCounterStore

T0 = 1_800_000_000
WINDOWS = {
    "m": windows.sliding(60),
    "f": windows.sliding(300),
    "h": windows.sliding(3600),
    "d": windows.calendar("day"),
}

step = st.one_of(
    st.tuples(st.just("decide"), st.sampled_from(sorted(WINDOWS)), st.integers(0, 6),
              st.integers(0, 30), st.sampled_from(["u1", "u2"])),
    st.tuples(st.just("peek"), st.sampled_from(sorted(WINDOWS)), st.integers(0, 6),
              st.integers(0, 30), st.sampled_from(["u1", "u2"])),
    st.tuples(st.just("report"), st.integers(0, 8), st.booleans(), st.sampled_from(["u1", "u2"])),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 2, 7, 29, 61, 299, 301, 3599, 86_400])),
)


def _spec(quota: str, amount: int, limit: int, user: str) -> CounterSpec:
    return CounterSpec(quota, "tokens", f"u={user}", WINDOWS[quota], limit, amount)


@pytest.fixture(scope="module")
def stores(redis_url: str) -> Iterator[tuple[RedisCounterStore, redis.Redis]]:
    store = RedisCounterStore(redis_url, honour_now=True, timeout=5.0)
    client = redis.Redis.from_url(redis_url)
    yield store, client
    store.close()
    client.close()


prefixes = count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=40))
def test_redis_and_memory_agree_on_every_state(
    stores: tuple[RedisCounterStore, redis.Redis], steps: list[tuple[object, ...]]
) -> None:
    base, _ = stores
    prefix = f"tollway-test:eq{next(prefixes)}:"
    rs = RedisCounterStore("redis://unused", client=base._client, key_prefix=prefix,
                           honour_now=True, timeout=5.0)
    ms = MemoryCounterStore(lambda: float(t))
    t = T0
    # (made at, id, counters) of reservations younger than their hour: Redis expires the
    # keys on its own clock, which ``now=`` cannot move, so older ones are left alone
    holds: list[tuple[int, str, list[CounterSpec]]] = []
    for n, op in enumerate(steps):
        kind = op[0]
        if kind == "advance":
            t += int(op[1])  # type: ignore[call-overload]
            continue
        if kind in ("decide", "peek"):
            _, quota, amount, limit, user = op
            # the same user's other windows ride along: all or nothing across them
            specs = [_spec(str(quota), int(amount), int(limit), str(user))]  # type: ignore[call-overload]
            specs += [_spec(q, 1, 1_000, str(user)) for q in sorted(WINDOWS) if q != quota]
            consume = kind == "decide"
            hold = f"d{n}" if consume else None
            got = [rs.check_and_consume(specs, consume=consume, hold_id=hold, now=t + 0.5),
                   ms.check_and_consume(specs, consume=consume, hold_id=hold, now=t + 0.5)]
            assert got[0] == got[1], (n, op)
            if consume and not any(s.exceeded for s in got[1]):
                holds.append((t, str(hold), specs))
            continue
        _, actual, settle, user = op
        holds = [h for h in holds if t - h[0] < 3_600]
        hold_id: str | None = None
        fallback = [_spec("m", 0, 1_000, str(user))]
        if holds and settle:
            _, hold_id, fallback = holds.pop(0)
        fallback = [CounterSpec(s.quota, s.metric, s.key, s.window, s.limit, int(actual))  # type: ignore[call-overload]
                    for s in fallback]
        outcomes = [store.record_report(f"r{n}", hold_id, {"tokens": int(actual)}, fallback,  # type: ignore[call-overload]
                                        now=t + 0.5)
                    for store in (rs, ms)]
        assert outcomes[0] == outcomes[1], (n, op)
    # and what both count now, read again from scratch
    for user in ("u1", "u2"):
        specs = [_spec(q, 0, 1_000, user) for q in sorted(WINDOWS)]
        assert rs.check_and_consume(specs, consume=False, now=t + 0.5) == ms.check_and_consume(
            specs, consume=False, now=t + 0.5)


def test_a_counter_written_before_the_running_total_is_read_whole(
    stores: tuple[RedisCounterStore, redis.Redis],
) -> None:
    """A sliding counter of bucket fields alone (as earlier versions wrote it) is summed
    once, its stale buckets pruned, and kept up to date from then on."""
    base, client = stores
    prefix = "tollway-test:legacy:"
    key = f"{prefix}q:m:u=u1"
    first, current = windows.covered_buckets(T0 + 0.5, 60, 1)
    client.delete(key)
    client.hset(key, mapping={str(first - 5): 9, str(first): 4, str(current - 1): 6})
    rs = RedisCounterStore("redis://unused", client=base._client, key_prefix=prefix,
                           honour_now=True, timeout=5.0)
    spec = _spec("m", 1, 100, "u1")
    [state] = rs.check_and_consume([spec], consume=True, now=T0 + 0.5)
    assert state.used == 10 and not state.exceeded
    assert state.resets_at == windows.bucket_until(first, 60, 1)
    fields = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
    assert fields == {str(first): 4, str(current - 1): 6, str(current): 1, "t": 11,
                      "lo": first}
    client.delete(key)
