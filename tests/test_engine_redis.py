"""The engine on the Redis store: the same decisions as in memory, shared state, and faults."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOMY, RedisServer

from tollway import Engine

RULES = """
quota hourly limits requests to 5 per 1h for each user
quota tok limits tokens to 1000 per 1d for each user
quota strict limits requests to 1000 per 1d for everyone on_store_error deny
rule free { when user.tier == "free" enforce hourly, tok }
rule guarded { when user.tier == "guarded" enforce strict }
rule blocked priority 10 { when user.status == "blocked" deny "blocked" }
"""


def redis_engine(url: str, prefix: str) -> Engine:
    return Engine.from_text(RULES, store=url, key_prefix=prefix, store_options=ROOMY)


def test_decisions_match_the_memory_store(redis_url: str, redis_prefix: str) -> None:
    engines = [redis_engine(redis_url, redis_prefix), Engine.from_text(RULES, store="memory")]
    try:
        for e in engines:
            assert e.blocking == (e.store.name == "redis")
            outcomes = [
                e.decide({"model": "m", "user": {"id": "u", "metadata": {"tier": "free"}}}).allowed
                for _ in range(7)
            ]
            assert outcomes == [True] * 5 + [False] * 2
            d = e.decide({"model": "m", "user": {"id": "u"}})  # metadata remembered by the entity store
            assert d.reason == "QUOTA_EXCEEDED"
            assert [q.name for q in d.quotas if q.exceeded] == ["hourly"]
    finally:
        for e in engines:
            e.close()


def test_two_engines_share_counters_and_entities(redis_url: str, redis_prefix: str) -> None:
    a, b = redis_engine(redis_url, redis_prefix), redis_engine(redis_url, redis_prefix)
    try:
        assert a.decide({"model": "m", "user": {"id": "x", "metadata": {"status": "blocked"}}}).message == "blocked"
        # the other replica sees the metadata written by the first (no cache entry yet)
        assert b.decide({"model": "m", "user": {"id": "x"}}).message == "blocked"
        user = {"id": "y", "metadata": {"tier": "free"}}
        allowed = 0
        lock = threading.Lock()

        def call(engine: Engine) -> None:
            nonlocal allowed
            if engine.decide({"model": "m", "user": user}).allowed:
                with lock:
                    allowed += 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, [a, b] * 30))
        assert allowed == 5
    finally:
        a.close()
        b.close()


def test_report_settles_once_across_replicas(redis_url: str, redis_prefix: str) -> None:
    a, b = redis_engine(redis_url, redis_prefix), redis_engine(redis_url, redis_prefix)
    try:
        u = {"id": "z", "metadata": {"tier": "free"}}
        d = a.decide({"model": "m", "user": u, "estimate": {"output_tokens": 600}})
        assert d.quotas[[q.name for q in d.quotas].index("tok")].used == 600
        report = {"request_id": "r-1", "decision_id": d.decision_id, "user": {"id": "z"},
                  "input_tokens": 10, "output_tokens": 90}
        with ThreadPoolExecutor(4) as pool:
            acks = list(pool.map(lambda e: e.report(report), [a, b, a, b]))
        assert sorted(ack.outcome for ack in acks) == ["duplicate"] * 3 + ["settled"]
        tok = next(q for q in b.explain({"model": "m", "user": {"id": "z"}}).decision.quotas if q.name == "tok")
        assert tok.used == 100
    finally:
        a.close()
        b.close()


def test_dead_redis_fails_open_or_closed_per_quota_and_recovers(
    redis_server: RedisServer,
) -> None:
    e = Engine.from_text(RULES, store=redis_server.url, key_prefix="t:")
    try:
        free = {"user": {"id": "f", "metadata": {"tier": "free"}}, "model": "m"}
        guarded = {"user": {"id": "g", "metadata": {"tier": "guarded"}}, "model": "m"}
        assert e.decide(free).allowed and e.decide(guarded).allowed
        redis_server.kill()
        d = e.decide(free)  # cached metadata; the counters are unreachable
        # the message names no host, port or driver: those go to the log
        assert d.allowed and d.message == "counter store unreachable; quotas not enforced"
        d = e.decide(guarded)
        assert (d.allowed, d.reason) == (False, "STORE_UNAVAILABLE")
        assert str(redis_server.port) not in d.message and "redis" not in d.message
        redis_server.start()
        d = e.decide(guarded)
        assert d.allowed, d.message
        # the data died with the server (no persistence): counting starts again, exactly
        assert d.quotas[0].used == 1
    finally:
        e.close()


def test_dead_redis_with_uncached_entity_is_a_store_error_not_a_crash(
    redis_server: RedisServer,
) -> None:
    e = Engine.from_text(RULES, store=redis_server.url, key_prefix="t:")
    try:
        redis_server.kill()
        d = e.decide({"model": "m", "user": {"id": "never-seen", "metadata": {"tier": "guarded"}}})
        assert (d.allowed, d.reason) == (False, "STORE_UNAVAILABLE")
    finally:
        redis_server.start()
        e.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_bad_request_touches_nothing(store: str, redis_url: str, redis_prefix: str) -> None:
    e = Engine.from_text(RULES, store=redis_url if store == "redis" else "memory", key_prefix=redis_prefix, store_options=ROOMY)
    try:
        with pytest.raises(ValueError, match=r"estimate\.cost_usd"):
            e.decide({"model": "m", "user": {"id": "b", "metadata": {"tier": "free"}}, "estimate": {"cost_usd": -1}})
        assert e.get_entity("user", "b") is None
        d = e.decide({"model": "m", "user": {"id": "b", "metadata": {"tier": "free"}}})
        assert d.quotas[0].used == 1
    finally:
        e.close()
