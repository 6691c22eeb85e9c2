"""Bounded memory with honest caps: sizes exported, early evictions counted, and a report
whose reservation was evicted never counts both the estimate and the actual."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from backends import Backend
from prometheus_client.parser import text_string_to_metric_families

from tollway import Engine
from tollway.policy.stores import StoreOptions
from tollway.server.metrics import Metrics

RULES = """
quota tokens limits tokens to 1_000_000 per 1h for each user
rule all { enforce tokens }
"""
T0 = 1_800_000_000.0


def memory_engine(**caps: int) -> Engine:
    return Engine.from_text(RULES, clock=lambda: T0, store_options=StoreOptions(**caps))


def used(engine: Engine, uid: str = "u") -> float:
    (q,) = engine.explain({"user": {"id": uid}, "model": "m"}).decision.quotas
    return q.used


def decide(engine: Engine, estimate: int, uid: str = "u") -> str:
    d = engine.decide({"user": {"id": uid}, "model": "m",
                       "estimate": {"output_tokens": estimate}})
    assert d.allowed
    return d.decision_id


def test_an_evicted_reservation_is_released_and_its_report_counts_once() -> None:
    engine = memory_engine(max_reservations=2)
    first = decide(engine, 100)
    decide(engine, 100)
    assert used(engine) == 200
    decide(engine, 100)  # the third reservation pushes out the first: released
    assert used(engine) == 200
    assert engine.store_evictions()["reservations"] == 1
    ack = engine.report({"request_id": "r1", "decision_id": first, "user": {"id": "u"},
                         "model": "m", "output_tokens": 40})
    assert ack.outcome == "added"  # no reservation left: the actual alone counts
    assert used(engine) == 240  # 2 x 100 reserved + 40 actual, never 100 + 40 for the first


def test_a_reservation_settled_in_time_is_not_an_eviction() -> None:
    engine = memory_engine(max_reservations=2)
    for i in range(5):
        d = decide(engine, 100)
        engine.report({"request_id": f"r{i}", "decision_id": d, "user": {"id": "u"},
                       "model": "m", "output_tokens": 10})
    assert used(engine) == 50
    assert engine.store_evictions() == {"reservations": 0, "report_ids": 0}


def test_forgotten_request_ids_are_counted() -> None:
    engine = memory_engine(max_report_ids=2)
    report = {"user": {"id": "u"}, "model": "m", "output_tokens": 1}
    for i in range(3):
        engine.report({"request_id": f"r{i}", **report})
    assert engine.report({"request_id": "r2", **report}).duplicate  # still remembered
    assert engine.store_evictions()["report_ids"] == 1
    assert engine.store_entries()["report_ids"] == 2


def _samples(metrics: Metrics, name: str) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


@pytest.fixture
def watched(backend: Backend) -> Iterator[tuple[Engine, Metrics, str]]:
    metrics = Metrics()
    if backend.name == "memory":
        engine = memory_engine(max_reservations=3)
    else:
        engine = Engine.from_text(RULES, store=backend.store, key_prefix=backend.prefix(),
                                  store_options=StoreOptions(timeout=10.0))
    metrics.watch_stores(engine)
    yield engine, metrics, backend.name
    engine.close()


def test_store_sizes_are_exported(watched: tuple[Engine, Metrics, str]) -> None:
    engine, metrics, store = watched
    for i in range(5):
        decide(engine, 10, uid=f"u{i}")
        engine.decide({"user": {"id": f"u{i}"}, "group": {"id": "g"}, "model": "m"})
    engine.report({"request_id": "r", "user": {"id": "u0"}, "model": "m"})
    entries = _samples(metrics, "tollway_store_entries")
    evictions = _samples(metrics, "tollway_store_evictions_total")
    if store == "memory":
        assert entries == {"counters": 5, "reservations": 3, "report_ids": 1,
                           "entities": 0, "memberships": 5}
        assert evictions == {"reservations": 7, "report_ids": 0}
    else:  # the data is in Redis; what this process keeps is its read caches
        assert entries == {"entity_cache": 6, "link_cache": 5}
        assert evictions == {}
