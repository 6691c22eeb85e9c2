"""The decision hot path's shortcuts give exactly what the general code gives."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from tollway.policy import validate, windows
from tollway.policy.engine import _new_decision_id
from tollway.policy.quotas import _enc
from tollway.policy.stores.base import CounterSpec
from tollway.policy.stores.memory import MemoryCounterStore
from tollway.policy.stores.redis_store import RedisCounterStore

HOUR = windows.sliding(3600)
MINUTE = windows.sliding(60)


def test_decision_ids_are_uuid4_hex() -> None:
    ids = {_new_decision_id() for _ in range(500)}
    assert len(ids) == 500
    for text in ids:
        parsed = uuid.UUID(hex=text)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, text)


def test_encoded_ids_are_percent_encoded_and_cached() -> None:
    assert _enc("a b/c+d=é") == "a%20b%2Fc%2Bd%3D%C3%A9"
    before = _enc.cache_info()
    assert _enc("a b/c+d=é") == "a%20b%2Fc%2Bd%3D%C3%A9"
    assert _enc.cache_info().hits == before.hits + 1  # the second call came from the cache


@given(st.text())
def test_encoded_ids_keep_the_key_separators_unambiguous(ident: str) -> None:
    encoded = _enc(ident)
    assert not set(encoded) & set("=/+:*")
    assert unquote(encoded, errors="surrogatepass") == ident


# ------------------------------------------------------------ units fast path


amounts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 2e9),
    st.integers(0, 10**10),
    st.sampled_from([0.0, 1.0, 0.0031, 999_999_999.9, 1e9, 5e15, -0.0, -1.0]),
)


@given(amounts, amounts, st.sampled_from(["requests", "tokens", "cost"]))
def test_prepared_units_equal_amount_units_and_limit_units(
    amount: float, limit: float, metric: str
) -> None:
    spec = CounterSpec("q", metric, "u=a", HOUR, limit, amount)
    try:
        want: Any = (
            windows.amount_units(amount, metric, "quota q: amount"),
            windows.limit_units(limit, metric, "quota q: limit"),
        )
    except ValueError as exc:
        want = str(exc)
    try:
        [(_, key, got_amount, got_limit)] = windows.prepare_counters("p:", [spec])
        got: Any = (got_amount, got_limit)
        assert key == "p:q:q:u=a"
    except ValueError as exc:
        got = str(exc)
    assert got == want


@given(st.integers(0, 4_000_000_000), st.sampled_from([1, 30, 119, 3600, 86400]))
def test_slots_match_the_bucket_arithmetic(sec: int, w: int) -> None:
    window = windows.sliding(w)
    b = windows.bucket_seconds(w)
    first, current = windows.covered_buckets(sec + 0.5, w, b)
    assert windows.slot(window, sec + 0.5) == windows.Slot(
        current, first, windows.bucket_until(current, w, b)
    )


def _state_oracle(
    window: int, t: float, buckets: dict[int, int], amount: int, limit: int
) -> tuple[int, bool, float, float]:
    """``counter_state`` of a sliding window the slow way: used, exceeded, retry_after and
    resets_at from the definitions (a bucket counts until ``bucket_until``)."""
    b = windows.bucket_seconds(window)
    until = {i: windows.bucket_until(i, window, b) for i in buckets}
    live = {i: v for i, v in buckets.items() if v > 0 and until[i] > t and i <= t // b}
    used = sum(live.values())
    exceeded = not windows.fits(used, amount, limit)
    current_until = windows.bucket_until(math.floor(t) // b, window, b)
    resets_at = float(min((until[i] for i in live), default=current_until))
    retry_after = 0.0
    if exceeded:
        retry_after = float(window)
        for moment in sorted({until[i] for i in live}):
            left = sum(v for i, v in live.items() if until[i] > moment)
            if amount <= limit and not (amount == limit == 0) and windows.fits(left, amount, limit):
                retry_after = moment - t
                break
    return used, exceeded, retry_after, resets_at


@given(
    st.sampled_from([60, 119, 3600]),
    st.floats(1_000_000, 1_000_100),
    st.dictionaries(st.integers(-70, 0), st.integers(1, 50), max_size=12),
    st.integers(0, 60),
    st.integers(0, 200),
)
def test_counter_state_agrees_with_the_definitions(
    window: int, t: float, offsets: dict[int, int], amount: int, limit: int
) -> None:
    w = windows.sliding(window)
    first, current = windows.covered_buckets(t, window, w.bucket)
    # what a store reads back: live buckets of the window, each > 0
    buckets = {current + k: v for k, v in offsets.items() if current + k >= first}
    spec = CounterSpec("q", "requests", "u=a", w, limit, amount)
    got = windows.counter_state(spec, t, dict(buckets), amount, limit)
    clean = windows.counter_state(spec, t, dict(buckets), amount, limit, used=sum(buckets.values()),
                                  clean=True)
    assert got == clean
    used, exceeded, retry_after, resets_at = _state_oracle(window, t, buckets, amount, limit)
    assert (got.used, got.exceeded, got.resets_at) == (used, exceeded, resets_at)
    assert got.retry_after == pytest.approx(retry_after)


# --------------------------------------------------------- metadata fast path


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
metadata = st.dictionaries(
    st.text(max_size=10),
    st.one_of(json_leaf, st.lists(st.text(max_size=8), max_size=4),
              st.lists(json_leaf, max_size=3), st.dictionaries(st.text(max_size=4), json_leaf)),
    max_size=6,
)


def _full_check(value: Any) -> Any:
    """What ``need_metadata`` answers without its fast path."""
    try:
        validate._check_json(value, "m", 1)
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > validate.MAX_METADATA_BYTES:
            raise ValueError(f"m: {size} bytes is over the limit of {validate.MAX_METADATA_BYTES}")
        return dict(value)
    except ValueError:
        return ValueError


def _answer(value: Any) -> Any:
    try:
        return validate.need_metadata(value, "m")
    except ValueError:
        return ValueError


@given(metadata)
def test_metadata_fast_path_agrees_with_the_full_check(value: dict[str, Any]) -> None:
    assert _answer(value) == _full_check(value)


@pytest.mark.parametrize(
    "value",
    [
        {"big": "x" * (validate.MAX_METADATA_BYTES // 6)},  # the bound says unsure, JSON says fine
        {"big": "x" * validate.MAX_METADATA_BYTES},  # over the limit
        {"s": "\ud800"},  # a lone surrogate cannot be encoded
        {"n": 10**5000},  # too many digits for JSON
        {"n": math.inf},
        {"l": ["a", "\x00" * 100]},
    ],
)
def test_metadata_edge_cases_agree_with_the_full_check(value: dict[str, Any]) -> None:
    assert _answer(value) == _full_check(value)


# ----------------------------------------------------------- Redis script reads


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisCounterStore]:
    s = RedisCounterStore(redis_url, key_prefix=redis_prefix, honour_now=True, timeout=2)
    yield s
    s.close()


@pytest.mark.redis
def test_redis_keeps_the_expiry_long_enough_without_resetting_it(
    store: RedisCounterStore, redis_url: str, redis_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    spec = CounterSpec("q", "requests", "u=a", HOUR, 100, 1)
    key = f"{redis_prefix}q:q:u=a"
    t = 1_000_000.0
    store.check_and_consume([spec], consume=True, now=t)
    assert 3600 < client.ttl(key) <= 3660
    client.expire(key, 5)  # as if something had shortened it
    store.check_and_consume([spec], consume=True, now=t)  # same bucket: the field exists
    assert 3600 < client.ttl(key) <= 3660
    client.expire(key, 100_000)  # longer than needed: left alone
    store.check_and_consume([spec], consume=True, now=t)
    assert client.ttl(key) > 3660
    client.close()


@pytest.mark.redis
def test_redis_and_memory_agree_on_exceeded_and_fitting_counters_with_stale_fields(
    store: RedisCounterStore, redis_url: str, redis_prefix: str
) -> None:
    memory = MemoryCounterStore()
    specs = [CounterSpec("q", "requests", "u=a", MINUTE, 5, 1),
             CounterSpec("d", "cost", "u=a", windows.calendar("day"), 2, 0.1)]
    t = 2_000_000.0
    exceeded = 0
    for step in range(16):
        now = t + step * 7  # buckets go stale as the minute slides
        want = memory.check_and_consume(specs, consume=True, now=now)
        got = store.check_and_consume(specs, consume=True, now=now)
        assert got == want, step
        exceeded += any(s.exceeded for s in got)
    assert 0 < exceeded < 16  # both paths of the script's reply were taken
    client = redis.Redis.from_url(redis_url)
    first, _ = windows.covered_buckets(t + 15 * 7, 60, 1)
    stored = client.hgetall(f"{redis_prefix}q:q:u=a")
    buckets = {int(f): int(v) for f, v in stored.items() if f not in (b"t", b"lo")}
    assert buckets and min(buckets) >= first  # stale buckets were pruned
    # the running total and the oldest bucket follow the buckets
    assert int(stored[b"t"]) == sum(buckets.values()) and int(stored[b"lo"]) == min(buckets)
    client.close()
