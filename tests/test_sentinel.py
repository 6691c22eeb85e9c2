"""Redis Sentinel: a master, its replica and 3 sentinels; a failover under load.

Decisions follow ``on_store_error`` while no master answers, resume within the store
timeout once the sentinels have promoted the replica, and the quota never admits more
than its limit across the failover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from redis_processes import RedisSentinelSet

from tollway import Engine

RULES = """
quota hundred limits requests to 100 per 1h for each user on_store_error deny
rule everyone { enforce hundred }
"""
LIMIT = 100


def test_sentinel_store_serves_the_current_master(
    redis_sentinel_factory: Callable[[], RedisSentinelSet],
) -> None:
    deployment = redis_sentinel_factory()
    engine = Engine.from_text(RULES, store=deployment.url, key_prefix="sentinel-a:")
    try:
        for _ in range(3):
            d = engine.decide({"user": {"id": "u", "metadata": {"tier": "x"}}, "model": "m"})
            assert d.allowed, d
        assert d.quotas[0].used == 3
        client = deployment.master.client()
        try:  # the counters and the entity live on the master the sentinels name
            assert client.exists("sentinel-a:q:hundred:u=u") == 1
            assert client.hgetall("sentinel-a:e:user:u")
        finally:
            client.close()
    finally:
        engine.close()


def test_a_failover_under_load_resumes_and_never_over_admits(
    redis_sentinel_factory: Callable[[], RedisSentinelSet],
) -> None:
    deployment = redis_sentinel_factory()
    engine = Engine.from_text(RULES, store=deployment.url, key_prefix="sentinel-b:")
    request = {"user": {"id": "hot"}, "model": "m"}
    seen: list[tuple[float, str]] = []  # (monotonic time, reason) of every decision
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            seen.append((time.monotonic(), engine.decide(request).reason))
            time.sleep(0.02)

    try:
        for _ in range(20):
            assert engine.decide(request).allowed
        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        old_port = deployment.master_port()
        killed_at = time.monotonic()
        deployment.kill_master()
        deployment.wait_promoted(old_port)
        promoted_at = time.monotonic()
        deadline = promoted_at + 20
        while not any(r == "QUOTA_EXCEEDED" and t > promoted_at for t, r in seen):
            assert time.monotonic() < deadline, "the quota never filled up after the failover"
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        stop.set()
        engine.close()
    assert not any(r == "QUOTA_EXCEEDED" for t, r in seen if t < killed_at)
    allowed = 20 + sum(1 for _, r in seen if r == "ALLOWED")
    assert allowed <= LIMIT, f"{allowed} admitted under a limit of {LIMIT}"
    reasons = {r for _, r in seen}
    assert reasons <= {"ALLOWED", "QUOTA_EXCEEDED", "STORE_UNAVAILABLE"}, reasons
    outage = [t for t, r in seen if r == "STORE_UNAVAILABLE"]
    assert outage and outage[0] >= killed_at  # fail closed while no master answers
    # decisions come from the new master within the store timeout (0.1 s) of the
    # promotion, plus a margin for a loaded test machine
    resumed = min(t for t, r in seen if t > outage[0] and r != "STORE_UNAVAILABLE")
    assert resumed - promoted_at < 0.1 + 2.0, (resumed - promoted_at, promoted_at - killed_at)
    # once resumed, the store stays up: no failure after the first decision that resumed
    late = [t for t, r in seen if r == "STORE_UNAVAILABLE" and t > resumed + 0.5]
    assert not late, f"{len(late)} decisions failed well after the failover"
