"""Usage through the engine on both stores: ``Decide`` appends the admitted request's
event (in the same store call as its counters), ``Report`` appends the amounts once per
request_id; the ingester writes them to the usage database (flushed before each read)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from backends import Backend
from conftest import ROOMY, WITH_CLUSTER, backend_of

from tollway import Engine
from tollway.policy.usage_query import SORT_FIELDS

RULES = """
quota tok limits tokens to 1_000_000 per 1d for each user
rule all { enforce tok }
"""

# a route, a deny, a quota that runs out, and a path with no quota at all
ROUTED = """
default allow
quota tok limits tokens to 1_000_000 per 1d for each user
quota few limits requests to 2 per 1d for each user
rule big { route "small" if request.model == "big" }
rule banned {
    when user.id == "mallory"
    deny "banned"
}
rule counted { enforce tok }
rule scarce {
    when user.id == "scarce"
    enforce few
}
"""

NO_QUOTAS = """
default allow
rule banned {
    when user.id == "mallory"
    deny "banned"
}
"""

Make = Callable[[str], list[Engine]]


@pytest.fixture(params=WITH_CLUSTER)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_of(request)


@pytest.fixture
def make(backend: Backend, tmp_path: Path) -> Iterator[Make]:
    """``make(rules)``: two engines on one store and one usage database (two replicas on
    Redis sharing a SQLite file, the same engine twice in memory)."""
    made: list[Engine] = []

    def factory(rules: str) -> list[Engine]:
        if backend.name == "memory":
            e = Engine.from_text(rules, store="memory")
            made.append(e)
            return [e, e]
        prefix = backend.prefix()
        db = f"sqlite:///{tmp_path / f'usage{len(made)}.db'}"
        pair = [Engine.from_text(rules, store=backend.store, key_prefix=prefix, usage_db=db,
                                 store_options=ROOMY) for _ in range(2)]
        made.extend(pair)
        return pair

    yield factory
    for e in made:
        e.close()


@pytest.fixture
def engines(make: Make) -> list[Engine]:
    return make(RULES)


def test_reports_build_per_user_and_group_usage(engines: list[Engine]) -> None:
    e = engines[0]
    d = e.decide({"user": {"id": "ann"}, "group": {"id": "acme"}, "model": "m1"})
    e.report({"request_id": "r1", "decision_id": d.decision_id, "user": {"id": "ann"},
              "group": {"id": "acme"}, "model": "m1", "input_tokens": 10, "output_tokens": 20,
              "cost_usd": 0.5, "duration_seconds": 1.5})
    e.report({"request_id": "r2", "user": {"id": "ann"}, "model": "m2", "input_tokens": 1,
              "output_tokens": 2, "cost_usd": 0.25})
    assert e.flush_usage()
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


def test_kind_is_singular_or_plural_and_a_bad_kind_or_id_names_the_field(
    engines: list[Engine],
) -> None:
    e = engines[0]
    e.report({"request_id": "r1", "user": {"id": "ann"}, "group": {"id": "acme"}, "model": "m"})
    assert e.flush_usage()
    assert e.get_usage("users", "ann") == e.get_usage("user", "ann") is not None
    assert e.get_usage("groups", "acme") is not None
    assert [r.id for r in e.list_usage(kind="group").results] == ["acme"]
    with pytest.raises(ValueError, match=r"^kind: must be 'user' or 'group'"):
        e.get_usage("team", "ann")
    with pytest.raises(ValueError, match=r"^kind:"):
        e.list_usage(kind="teams")
    with pytest.raises(ValueError, match=r"^user_id: must not be empty"):
        e.get_usage("user", "")
    with pytest.raises(ValueError, match=r"^group_id: 257 bytes is over the limit of 256"):
        e.get_usage("groups", "x" * 257)


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
    assert engines[1].flush_usage()
    detail = engines[1].get_usage("user", "bo")
    assert detail is not None
    assert (detail.usage.request_count, detail.usage.total_tokens) == (1, 10)
    assert detail.usage.total_cost == pytest.approx(0.1)
    tok = engines[0].explain({"model": "m", "user": {"id": "bo"}}).decision.quotas[0]
    assert tok.used == 10


def counts(e: Engine, kind: str, ident: str) -> tuple[int, dict[str, int]]:
    """``request_count`` and per-model request counts (0 and {} when nothing recorded)."""
    assert e.flush_usage()
    detail = e.get_usage(kind, ident)
    if detail is None:
        return 0, {}
    return detail.usage.request_count, {m.model: m.request_count for m in detail.usage.models}


def test_a_decide_counts_one_request_for_user_group_and_served_model(make: Make) -> None:
    e = make(ROUTED)[0]
    before = time.time()
    d = e.decide({"user": {"id": "ann"}, "group": {"id": "acme"}, "model": "big"})
    assert d.allowed and d.model == "small" and d.routed
    assert counts(e, "user", "ann") == (1, {"small": 1})
    assert counts(e, "group", "acme") == (1, {"small": 1})
    detail = e.get_usage("user", "ann")
    assert detail is not None
    u = detail.usage
    assert before <= u.first_seen == u.last_seen <= time.time()
    assert (u.total_tokens, u.total_cost, u.total_duration) == (0, 0.0, 0.0)
    assert detail.recent_reports == ()  # a decision is not a report
    assert list(e.activity()) == []
    for field in SORT_FIELDS:  # known from a decision alone, yet in every listing
        assert [r.user_id for r in e.list_usage(sort=field).results] == ["ann"], field
    e.decide({"user": {"id": "ann"}, "model": "other"})  # no group: the user only
    assert counts(e, "user", "ann") == (2, {"small": 1, "other": 1})
    assert counts(e, "group", "acme") == (1, {"small": 1})


def test_a_report_with_its_decision_id_adds_amounts_only(make: Make) -> None:
    e, other = make(ROUTED)
    d = e.decide({"user": {"id": "ann"}, "group": {"id": "acme"}, "model": "big",
                  "estimate": {"output_tokens": 50}})
    ack = other.report({"request_id": "r1", "decision_id": d.decision_id,
                        "user": {"id": "ann"}, "group": {"id": "acme"}, "model": "small",
                        "input_tokens": 10, "output_tokens": 20, "cost_usd": 0.5,
                        "duration_seconds": 2.0})
    assert ack.outcome == "settled"
    assert e.flush_usage()
    for kind, ident in (("user", "ann"), ("group", "acme")):
        detail = e.get_usage(kind, ident)
        assert detail is not None
        u = detail.usage
        assert (u.request_count, u.total_tokens, u.total_cost, u.total_duration) == (
            1, 30, 0.5, 2.0)
        assert [(m.model, m.request_count, m.total_tokens) for m in u.models] == [
            ("small", 1, 30)]
        assert u.last_seen >= u.first_seen
        assert [(r.request_id, r.counts_request) for r in detail.recent_reports] == [
            ("r1", False)]
    assert [ev.counts_request for ev in e.activity()] == [False]


def test_a_report_without_decision_id_counts_its_request(make: Make) -> None:
    e = make(ROUTED)[0]
    e.report({"request_id": "t1", "user": {"id": "tracker"}, "group": {"id": "g"},
              "model": "m", "input_tokens": 4, "cost_usd": 0.25})
    e.report({"request_id": "t1", "user": {"id": "tracker"}, "group": {"id": "g"},
              "model": "m", "input_tokens": 4, "cost_usd": 0.25})  # a retry: counted once
    assert counts(e, "user", "tracker") == (1, {"m": 1})
    assert counts(e, "group", "g") == (1, {"m": 1})
    d = e.decide({"user": {"id": "tracker"}, "model": "m"})
    for _ in range(2):
        e.report({"request_id": "t2", "decision_id": d.decision_id, "user": {"id": "tracker"},
                  "model": "m", "input_tokens": 6})
    assert e.flush_usage()
    detail = e.get_usage("user", "tracker")
    assert detail is not None
    assert (detail.usage.request_count, detail.usage.input_tokens) == (2, 10)
    assert [r.request_id for r in detail.recent_reports] == ["t2", "t1"]


def test_denied_dry_run_and_explain_count_nothing(make: Make) -> None:
    e = make(ROUTED)[0]
    assert not e.decide({"model": "m", "user": {"id": "mallory"}, "group": {"id": "acme"}}).allowed
    assert e.decide({"model": "m", "user": {"id": "ann"}, "group": {"id": "acme"}, "dry_run": True}).allowed
    assert e.explain({"model": "m", "user": {"id": "ann"}, "group": {"id": "acme"}}).decision.allowed
    assert e.flush_usage()
    for kind, ident in (("user", "mallory"), ("user", "ann"), ("group", "acme")):
        assert e.get_usage(kind, ident) is None
    outcomes = [e.decide({"model": "m", "user": {"id": "scarce"}}).reason for _ in range(4)]
    assert outcomes == ["ALLOWED", "ALLOWED", "QUOTA_EXCEEDED", "QUOTA_EXCEEDED"]
    assert counts(e, "user", "scarce") == (2, {"m": 2})
    assert e.list_usage().count == 1


def test_a_decision_without_quotas_counts_too(make: Make) -> None:
    e = make(NO_QUOTAS)[0]
    d = e.decide({"user": {"id": "ann"}, "group": {"id": "acme"}, "model": "m"})
    assert d.allowed and d.quotas == ()
    assert not e.decide({"model": "m", "user": {"id": "mallory"}}).allowed
    e.decide({"user": {"id": "ann"}, "model": "m", "dry_run": True})
    e.decide({"model": "m"})  # nobody named: nothing to count it for
    assert counts(e, "user", "ann") == (1, {"m": 1})
    assert counts(e, "group", "acme") == (1, {"m": 1})
    assert e.get_usage("user", "mallory") is None
    e.report({"request_id": "r", "decision_id": d.decision_id, "user": {"id": "ann"},
              "model": "m", "cost_usd": 1.0})
    assert e.flush_usage()
    detail = e.get_usage("user", "ann")
    assert detail is not None
    assert (detail.usage.request_count, detail.usage.total_cost) == (1, 1.0)


def test_concurrent_decides_on_two_replicas_count_exactly(make: Make) -> None:
    pair = make(ROUTED)
    barrier = threading.Barrier(10)

    def decide(i: int) -> bool:
        if i < 10:
            barrier.wait()
        user = "scarce" if i % 5 == 0 else "busy"
        d = pair[i % 2].decide({"user": {"id": user}, "group": {"id": "crowd"}, "model": "big"})
        return d.allowed

    with ThreadPoolExecutor(10) as pool:
        allowed = list(pool.map(decide, range(60)))
    # 48 requests of "busy", 12 of "scarce" of which its quota admits exactly 2
    assert sum(allowed) == 50
    assert counts(pair[1], "user", "busy") == (48, {"small": 48})
    assert counts(pair[0], "user", "scarce") == (2, {"small": 2})
    assert counts(pair[0], "group", "crowd") == (50, {"small": 50})


@pytest.mark.redis
def test_a_report_is_one_round_trip_on_redis(redis_url: str, redis_prefix: str) -> None:
    # no ingester here: only this engine's commands reach Redis
    e = Engine.from_text(RULES, store=redis_url, key_prefix=redis_prefix, ingest=False,
                         store_options=ROOMY)
    client = redis.Redis.from_url(redis_url)
    try:
        d = e.decide({"model": "m", "user": {"id": "c"}})
        e.report({"request_id": "warm", "decision_id": d.decision_id, "user": {"id": "c"}})
        before = _calls(client)
        d = e.decide({"model": "m", "user": {"id": "c"}, "estimate": {"output_tokens": 9}})
        e.report({"request_id": "r", "decision_id": d.decision_id, "user": {"id": "c"},
                  "output_tokens": 7, "cost_usd": 0.01})
        e.report({"request_id": "r", "decision_id": d.decision_id, "user": {"id": "c"},
                  "output_tokens": 7, "cost_usd": 0.01})  # a duplicate appends nothing
        after = _calls(client)
        # one script per decide (which also appends its event) and one per report;
        # nothing else from the client
        assert after["evalsha"] - before["evalsha"] == 3
        assert {k for k in after if after[k] != before.get(k)} <= {"evalsha", "info"} | _SCRIPTED
        assert after["xadd"] - before["xadd"] == 2  # the events, inside the scripts
        assert client.xlen(f"{redis_prefix}usage:events") == 4
    finally:
        client.close()
        e.close()


@pytest.mark.redis
def test_a_decision_without_quotas_is_one_round_trip_on_redis(
    redis_url: str, redis_prefix: str
) -> None:
    e = Engine.from_text(NO_QUOTAS, store=redis_url, key_prefix=redis_prefix, ingest=False,
                         store_options=ROOMY)
    client = redis.Redis.from_url(redis_url)
    try:
        e.decide({"model": "m", "user": {"id": "c"}})  # fills the entity cache and the script cache
        before = _calls(client)
        e.decide({"model": "m", "user": {"id": "c"}})
        after = _calls(client)
        assert after["evalsha"] - before["evalsha"] == 1
        assert after["xadd"] - before["xadd"] == 1
        assert {k for k in after if after[k] != before.get(k)} <= {"evalsha", "info"} | _SCRIPTED
    finally:
        client.close()
        e.close()


@pytest.mark.redis
def test_an_unreachable_redis_loses_the_count_not_the_decision(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    e = Engine.from_text(NO_QUOTAS, store=url)
    try:
        assert e.decide({"model": "m", "user": {"id": "a"}}).allowed
        redis_server.kill()  # type: ignore[attr-defined]
        d = e.decide({"model": "m", "user": {"id": "a"}, "group": {"id": "g"}})
        assert d.allowed and d.reason == "ALLOWED"
    finally:
        e.close()


# commands run inside the scripts are counted by INFO commandstats too
_SCRIPTED = {
    "time", "get", "set", "del", "exists", "expire", "pexpire", "hget", "hset", "hgetall",
    "hmget", "hincrby", "hdel", "hlen", "xadd", "xlen", "type", "incrby", "setex", "ttl",
    "pttl", "hincrbyfloat", "hsetnx", "hexists",
}


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
