"""Usage recorded through ``Engine.report`` on both stores: once per request_id, with the counters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tollway import Engine

RULES = """
quota tok limits tokens to 1_000_000 per 1d for each user
rule all { enforce tok }
"""


@pytest.fixture(params=["memory", "redis"])
def engines(request: pytest.FixtureRequest) -> Iterator[list[Engine]]:
    """Two engines on one store: two replicas on Redis, the same engine twice in memory."""
    if request.param == "memory":
        e = Engine.from_text(RULES, store="memory")
        yield [e, e]
        e.close()
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    pair = [Engine.from_text(RULES, store=url, key_prefix=prefix) for _ in range(2)]
    yield pair
    for e in pair:
        e.close()


def test_reports_build_per_user_and_group_usage(engines: list[Engine]) -> None:
    e = engines[0]
    d = e.decide({"user": {"id": "ann"}, "group": {"id": "acme"}, "model": "m1"})
    e.report({"request_id": "r1", "decision_id": d.decision_id, "user": {"id": "ann"},
              "group": {"id": "acme"}, "model": "m1", "input_tokens": 10, "output_tokens": 20,
              "cost_usd": 0.5, "duration_seconds": 1.5})
    e.report({"request_id": "r2", "user": {"id": "ann"}, "model": "m2", "input_tokens": 1,
              "output_tokens": 2, "cost_usd": 0.25})
    detail = e.get_usage("user", "ann")
    assert detail is not None
    u = detail.usage
    assert (u.request_count, u.input_tokens, u.output_tokens, u.total_tokens) == (2, 11, 22, 33)
    assert u.total_cost == pytest.approx(0.75) and u.total_duration == pytest.approx(1.5)
    assert detail.cost_by_model == pytest.approx({"m1": 0.5, "m2": 0.25})
    assert [r.request_id for r in detail.recent_reports] == ["r2", "r1"]
    group = e.get_usage("group", "acme")
    assert group is not None and group.usage.request_count == 1
    page = e.list_usage(kind="users", sort="-total_cost")
    assert [r.user_id for r in page.results] == ["ann"] and page.count == 1
    events = list(e.activity(user="ann"))
    assert [ev.request_id for ev in events] == ["r2", "r1"]
    with pytest.raises(ValueError, match="sort"):
        e.list_usage(sort="colour")


def test_a_report_racing_on_two_replicas_counts_once(engines: list[Engine]) -> None:
    report = {"request_id": "dup", "user": {"id": "bo"}, "model": "m", "input_tokens": 5,
              "output_tokens": 5, "cost_usd": 0.1}
    barrier = threading.Barrier(8)

    def send(e: Engine) -> str:
        barrier.wait()
        return e.report(report).outcome

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, engines * 4))
    assert outcomes.count("added") == 1 and outcomes.count("duplicate") == 7
    detail = engines[1].get_usage("user", "bo")
    assert detail is not None
    assert (detail.usage.request_count, detail.usage.total_tokens) == (1, 10)
    assert detail.usage.total_cost == pytest.approx(0.1)
    tok = engines[0].explain({"user": {"id": "bo"}}).decision.quotas[0]
    assert tok.used == 10


def test_a_report_is_one_round_trip_on_redis(redis_url: str, redis_prefix: str) -> None:
    e = Engine.from_text(RULES, store=redis_url, key_prefix=redis_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        d = e.decide({"user": {"id": "c"}})
        e.report({"request_id": "warm", "decision_id": d.decision_id, "user": {"id": "c"}})
        before = _calls(client)
        d = e.decide({"user": {"id": "c"}, "estimate": {"output_tokens": 9}})
        e.report({"request_id": "r", "decision_id": d.decision_id, "user": {"id": "c"},
                  "output_tokens": 7, "cost_usd": 0.01})
        after = _calls(client)
        # one script per decide and one per report; nothing else from the client
        assert after["evalsha"] - before["evalsha"] == 2
        assert {k for k in after if after[k] != before.get(k)} <= {"evalsha", "info"} | _SCRIPTED
    finally:
        client.close()
        e.close()


# commands run inside the scripts are counted by INFO commandstats too
_SCRIPTED = {
    "time", "get", "set", "del", "exists", "expire", "pexpire", "hget", "hset", "hgetall",
    "hmget", "hincrby", "hdel", "hlen", "zadd", "zincrby", "zrem", "lpush", "ltrim", "xadd",
    "xtrim", "type", "incrby", "setex", "ttl", "pttl", "hincrbyfloat", "hsetnx", "hexists",
}


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
