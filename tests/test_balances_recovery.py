"""The live balances are a cache of the ledger: a Redis that restarts empty under load is
refilled from the ledger before anything spends again, and every balance then equals its
credits less its settled spending to the nano-dollar, none below zero. On SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from redis_processes import RedisServer

from tollway import Engine
from tollway.policy.stores import StoreOptions
from tollway.policy.usage_db import UsageDatabase

RULES = """
balance credits of cost for each group
rule paid { enforce credits }
"""
GROUPS = ("g0", "g1", "g2")


def _load(engine: Engine, group: str, stop: threading.Event, counts: dict[str, int]) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        rid = f"{group}-{i}"
        try:
            d = engine.decide({"request_id": rid, "user": "u", "group": group, "model": "m",
                               "estimate": {"cost_usd": 0.05}})
            if d.reason == "STORE_UNAVAILABLE":  # refused while Redis is away
                counts["failed"] += 1
                time.sleep(0.01)
            elif d.allowed:
                # an exact actual below the estimate: 0.012345678 .. 0.049
                cost = 0.012345678 + (i % 37) * 0.001
                engine.report({"request_id": rid, "decision_id": d.decision_id, "user": "u",
                               "group": group, "model": "m", "cost_usd": cost})
                counts["reported"] += 1
        except Exception:  # the store is down for a moment: the next request tries again
            counts["failed"] += 1
            time.sleep(0.01)


@pytest.mark.redis
def test_redis_restarted_empty_under_load_is_refilled_from_the_ledger(
    redis_server: RedisServer, usage_url: str
) -> None:
    engine = Engine.from_text(RULES, store=redis_server.url, usage_db=usage_url,
                              store_options=StoreOptions(timeout=2.0))
    try:
        for g in GROUPS:
            assert engine.credit("group", g, "credits", 2, idempotency_key=f"{g}-a")[0]
        stop = threading.Event()
        counts = {"reported": 0, "failed": 0}
        workers = [threading.Thread(target=_load, args=(engine, g, stop, counts)) for g in GROUPS]
        for w in workers:
            w.start()
        time.sleep(1.0)
        redis_server.kill()
        time.sleep(0.3)
        redis_server.start()  # empty: the private server keeps nothing on disk
        time.sleep(0.5)
        for g in GROUPS:  # a top-up after the restart lands on the rebuilt balance
            engine.credit("group", g, "credits", 0.5, idempotency_key=f"{g}-b")
        time.sleep(1.0)
        stop.set()
        for w in workers:
            w.join(timeout=30)
        assert counts["reported"] > 20 and counts["failed"] > 0
        assert engine.flush_usage(30)
        db = UsageDatabase(usage_url)
        try:
            ledger = db.balance_totals()
            credited = {
                g: sum(e.amount for _, e in db.ledger_entries("credits", f"g={g}", 100_000)
                       if e.kind == "credit")
                for g in GROUPS
            }
        finally:
            db.close()
        # a credit is in the ledger when it is answered: none was lost with Redis
        assert credited == {g: 2_500_000_000 for g in GROUPS}
        for g in GROUPS:
            (view,) = engine.get_balance("group", g)
            assert view.reserved == 0  # every admitted request was reported
            units = ledger[("credits", f"g={g}")]
            assert round(view.available * 1e9) == units  # to the nano-dollar
            assert units >= 0  # nothing over-spent
    finally:
        engine.close()
