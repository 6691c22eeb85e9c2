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

from tollway.dsl.ast import Window
from tollway.policy import validate, windows
from tollway.policy.engine import _new_decision_id
from tollway.policy.quotas import _enc
from tollway.policy.stores.base import CounterSpec
from tollway.policy.stores.memory import MemoryCounterStore
from tollway.policy.stores.redis_store import RedisCounterStore

HOUR = Window(seconds=3600, text="1h")
MINUTE = Window(seconds=60, text="1m")


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
        [(_, key, got_amount, got_limit, plan)] = windows.prepare_counters("p:", [spec])
        got: Any = (got_amount, got_limit)
        assert key == "p:q:q:u=a" and plan.bucket == 60
    except ValueError as exc:
        got = str(exc)
    assert got == want


def test_window_plans_are_validated_and_shared() -> None:
    assert windows.window_plan(HOUR) is windows.window_plan(HOUR)
    assert windows.window_plan(Window(calendar="month", text="month")).code == "month"
    with pytest.raises(ValueError, match="at least 1s"):
        windows.window_plan(Window(seconds=0, text="0s"))
    with pytest.raises(ValueError, match="at least 1s"):  # errors are never cached away
        windows.window_plan(Window(seconds=0, text="0s"))


@given(st.integers(0, 4_000_000_000), st.sampled_from([1, 30, 119, 3600, 86400]))
def test_slot_parts_match_the_bucket_arithmetic(sec: int, w: int) -> None:
    window = Window(seconds=w, text=f"{w}s")
    b = windows.bucket_seconds(w)
    first, current = windows.covered_buckets(sec + 0.5, w, b)
    assert windows.slot(window, sec + 0.5) == windows.Slot(
        current, first, windows.bucket_until(current, w, b)
    )


def test_state_of_with_clean_fields_matches_counter_state() -> None:
    spec = CounterSpec("q", "requests", "u=a", MINUTE, 10, 1)
    t = 1_000_000.5
    first, current = windows.covered_buckets(t, 60, 1)
    cases: list[dict[int | str, int]] = [
        {}, {first: 2, current: 3}, {first + 5: 9}, {first: 4, first + 1: 6}
    ]
    for buckets in cases:
        plan = windows.window_plan(MINUTE)
        fast = windows.state_of(spec, plan, t, buckets, 1, 10, used=sum(buckets.values()),
                                clean=True)
        assert fast == windows.counter_state(spec, t, buckets, 1, 10)


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
             CounterSpec("d", "cost", "u=a", Window(calendar="day", text="day"), 2, 0.1)]
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
    fields = [int(f) for f in client.hkeys(f"{redis_prefix}q:q:u=a")]
    assert fields and min(fields) >= first  # stale buckets were pruned
    client.close()
