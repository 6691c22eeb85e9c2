"""The event pipeline: counter store -> event source -> ingester -> usage database.

Bounds and drops, a database that goes away and comes back (a private PostgreSQL that
is really stopped), a Redis reader that dies holding entries, entries that are not
events, a stream Redis lost. Everything real: stores, Redis, databases.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import reset_postgres

from tollway import Engine
from tollway.policy.ingest import Ingester
from tollway.policy.observer import NullObserver
from tollway.policy.stores.events_redis import GROUP, RedisEventStream, stream_key
from tollway.policy.stores.memory import MemoryCounterStore
from tollway.policy.stores.redis_store import RedisCounterStore, redis_client
from tollway.policy.usage import UsageEvent
from tollway.policy.usage_db import UsageDatabase

RULES = """
quota tok limits tokens to 1_000_000 per 1d for each user
rule all { enforce tok }
"""


class Recorder(NullObserver):
    """An ``Observer`` that remembers what the ingester published."""

    def __init__(self) -> None:
        self.backlog: list[int] = []
        self.dropped = 0

    def usage_backlog(self, events: int) -> None:
        self.backlog.append(events)

    def usage_dropped(self, events: int) -> None:
        self.dropped += events


def report(e: Engine, rid: str, user: str = "u", cost: float = 0.25) -> str:
    return e.report({"request_id": rid, "user": {"id": user}, "model": "m",
                     "input_tokens": 1, "cost_usd": cost}).outcome


def total_cost(e: Engine, user: str = "u") -> float:
    detail = e.get_usage("user", user)
    return 0.0 if detail is None else detail.usage.total_cost


# ------------------------------------------------------------------ memory queue


def test_the_in_process_queue_is_bounded_and_counts_what_it_drops() -> None:
    recorder = Recorder()
    store = MemoryCounterStore(max_backlog=3)
    e = Engine.from_text(RULES, store=store, observer=recorder, ingest=False)
    try:
        decisions = [e.decide({"model": "m", "user": {"id": "u"}}) for _ in range(5)]
        assert all(d.allowed for d in decisions)  # decisions never wait for usage
        assert (store.events.backlog(), store.events.dropped()) == (3, 2)
        ingester = Ingester(store.events, e.usage_db, observer=recorder)  # type: ignore[arg-type]
        assert ingester.step() == 3
        assert store.events.backlog() == 0
        assert recorder.dropped == 2 and recorder.backlog[-1] == 3  # published before the write
        detail = e.get_usage("user", "u")
        assert detail is not None and detail.usage.request_count == 3
    finally:
        e.close()


def test_close_writes_what_is_waiting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    e = Engine.from_text(RULES, usage_db=url)
    for i in range(300):
        report(e, f"r{i}", cost=0.01)
    e.close()
    reopened = UsageDatabase(url)
    try:
        detail = reopened.detail("user", "u")
        assert detail is not None and detail.usage.request_count == 300
        assert round(detail.usage.total_cost * 1e9) == 300 * 10_000_000
    finally:
        reopened.close()


def test_events_older_than_the_retention_are_not_stored_again() -> None:
    recorder = Recorder()
    store = MemoryCounterStore()
    e = Engine.from_text(RULES, store=store, observer=recorder, ingest=False,
                         usage_retention_days=1)
    try:
        store.events.append(UsageEvent(time=time.time() - 2 * 86400, request_id="old",
                                       user_id="u", cost_usd=5.0))
        report(e, "new")
        ingester = Ingester(store.events, e.usage_db, observer=recorder)  # type: ignore[arg-type]
        assert ingester.step() == 1
        assert recorder.dropped == 1
        assert total_cost(e) == 0.25
    finally:
        e.close()


# ------------------------------------------------------------------ database outages


@pytest.mark.postgres
def test_events_wait_while_the_database_is_down(postgres_cluster: Any) -> None:
    recorder = Recorder()
    e = Engine.from_text(RULES, usage_db=postgres_cluster.url, observer=recorder)
    try:
        report(e, "before")
        assert e.flush_usage()
        postgres_cluster.stop()
        try:
            outcomes = [report(e, f"during{i}") for i in range(20)]
            assert e.decide({"model": "m", "user": {"id": "u"}}).allowed  # decisions are unaffected
            assert outcomes == ["added"] * 20
            assert not e.flush_usage(timeout=1.5)
            assert recorder.backlog and recorder.backlog[-1] >= 21
            with pytest.raises(Exception, match="usage database"):
                e.get_usage("user", "u")
        finally:
            postgres_cluster.start()
        assert e.flush_usage(timeout=30)
        detail = e.get_usage("user", "u")
        assert detail is not None
        assert (detail.usage.request_count, detail.usage.total_cost) == (22, 21 * 0.25)
        assert recorder.dropped == 0
    finally:
        e.close()
        reset_postgres(postgres_cluster.url)


def test_busy_traffic_lingers_into_bigger_batches_and_a_flush_cuts_the_wait_short() -> None:
    """A batch of ``linger_from`` events or more makes the ingester wait before the next
    read (here a minute, so a bigger batch could only come from that wait); a batch
    smaller than that is written at once; ``flush`` does not wait for the linger."""
    store = MemoryCounterStore()
    e = Engine.from_text(RULES, store=store, ingest=False)
    ingester = Ingester(store.events, e.usage_db, linger=60.0, linger_from=5)  # type: ignore[arg-type]
    written: list[int] = []
    write = ingester.database.write

    def recording(batch: Any) -> int:
        written.append(len(batch))
        return write(batch)

    ingester.database.write = recording  # type: ignore[method-assign]
    try:
        for i in range(2):  # light traffic: written as it comes, no linger
            report(e, f"light{i}")
        ingester.start()
        deadline = time.monotonic() + 10
        while sum(written) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(3):
            report(e, f"light-again{i}")
        while sum(written) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(written) == 5 and max(written) < 5  # no batch reached linger_from
        for i in range(6):  # busy: one batch of six, then the ingester lingers
            report(e, f"busy{i}")
        while sum(written) < 11 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert written[-1] == 6
        for i in range(4):
            report(e, f"during{i}")
        time.sleep(0.3)
        assert sum(written) == 11  # these wait for the linger (or a flush)
        assert ingester.flush(timeout=10)
        assert written[-1] == 4 and sum(written) == 15
        assert total_cost(e) == pytest.approx(15 * 0.25)
    finally:
        ingester.stop()
        e.close()


# ------------------------------------------------------------------ Redis stream


@pytest.fixture
def redis_pair(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[Engine, RedisCounterStore, UsageDatabase]]:
    """An engine that appends to the stream (no ingester of its own), its store, and a
    usage database for the readers a test builds."""
    # a deadline for a loaded machine: the first call also loads the scripts
    store = RedisCounterStore(redis_url, key_prefix=redis_prefix, claim_idle=0.05, timeout=5.0)
    db = UsageDatabase(f"sqlite:///{tmp_path / 'usage.db'}")
    e = Engine.from_text(RULES, store=store, usage_db=db, ingest=False)
    yield e, store, db
    e.close()


def _reader(url: str, prefix: str, name: str, claim_idle: float = 0.05) -> RedisEventStream:
    return RedisEventStream(redis_client(url, timeout=5.0), stream_key(prefix),
                            claim_idle=claim_idle, consumer=name)


@pytest.mark.redis
def test_entries_a_dead_reader_held_are_taken_over_and_counted_once(
    redis_pair: tuple[Engine, RedisCounterStore, UsageDatabase], redis_url: str,
    redis_prefix: str,
) -> None:
    e, _, db = redis_pair
    for i in range(10):
        report(e, f"r{i}")
    dead = _reader(redis_url, redis_prefix, "dead")
    held = dead.read(6, 0.1)
    assert len(held) == 6
    db.write([d.event for d in held[:3] if d.event])  # it wrote half, then died: no ack
    # the dead reader's entries are not idle for an hour yet: the first step reads only
    # the four nobody had read, however slow the machine
    reader = _reader(redis_url, redis_prefix, "alive", claim_idle=3600.0)
    alive = Ingester(reader, db)
    assert alive.step() == 4
    reader.claim_idle = 0.05
    time.sleep(0.1)  # now they are idle past claim_idle
    assert alive.flush(timeout=10)
    detail = db.detail("user", "u")
    assert detail is not None
    assert (detail.usage.request_count, detail.usage.total_cost) == (10, 2.5)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xpending(stream_key(redis_prefix), GROUP)["pending"] == 0
        alive.source.maintain()
        assert client.xlen(stream_key(redis_prefix)) == 0  # acknowledged entries are trimmed
    finally:
        client.close()


@pytest.mark.redis
def test_a_full_stream_drops_and_counts(redis_url: str, redis_prefix: str) -> None:
    store = RedisCounterStore(redis_url, key_prefix=redis_prefix, max_backlog=2)
    e = Engine.from_text(RULES, store=store, ingest=False)
    try:
        assert all(e.decide({"model": "m", "user": {"id": "u"}}).allowed for _ in range(3))
        assert report(e, "r1") == "added"  # the report counts; its event is dropped
        assert store.events.dropped() == 2
        assert store.events.backlog() == 2
    finally:
        e.close()


@pytest.mark.redis
def test_an_entry_that_is_not_an_event_is_acknowledged_and_dropped(
    redis_pair: tuple[Engine, RedisCounterStore, UsageDatabase], redis_url: str,
    redis_prefix: str,
) -> None:
    e, _, db = redis_pair
    report(e, "r1")
    client = redis.Redis.from_url(redis_url)
    try:
        client.xadd(stream_key(redis_prefix), {"e": b"\xff not json"})
        client.xadd(stream_key(redis_prefix), {"other": "field"})
        report(e, "r2")
        recorder = Recorder()
        ingester = Ingester(_reader(redis_url, redis_prefix, "one"), db, observer=recorder)
        assert ingester.flush(timeout=10)
        assert recorder.dropped == 2
        assert db.detail("user", "u").usage.request_count == 2  # type: ignore[union-attr]
    finally:
        client.close()


@pytest.mark.redis
def test_reading_resumes_after_redis_lost_the_stream(
    redis_pair: tuple[Engine, RedisCounterStore, UsageDatabase], redis_url: str,
    redis_prefix: str,
) -> None:
    e, _, db = redis_pair
    reader = _reader(redis_url, redis_prefix, "one")
    ingester = Ingester(reader, db)
    report(e, "r1")
    assert ingester.flush(timeout=10)
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(stream_key(redis_prefix))  # as a restarted Redis without persistence
        report(e, "r2")
        deadline = time.monotonic() + 10
        while db.detail("user", "u").usage.request_count < 2:  # type: ignore[union-attr]
            ingester.step()
            assert time.monotonic() < deadline
    finally:
        client.close()
