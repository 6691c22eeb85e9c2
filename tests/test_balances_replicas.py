"""Two ``tollway serve`` processes on one Redis spend one balance exactly: concurrent
decisions never admit more than the balance covers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
from conftest import ROOMY
from server_harness import tollway_serve

from tollway import Engine
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
balance credits of cost for each group
rule paid { enforce credits }
"""


def test_concurrent_decides_on_two_replicas_spend_10_dollars_in_exactly_20_halves(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    rules = tmp_path / "balances.rules"
    rules.write_text(RULES)
    db = f"sqlite:///{tmp_path / 'usage.db'}"
    admin = Engine.from_text(RULES, store=redis_url, key_prefix=redis_prefix, usage_db=db,
                             store_options=ROOMY)
    try:
        assert admin.credit("group", "acme", "credits", 10, idempotency_key="topup")[0]
        with ExitStack() as stack:
            stubs = []
            for _ in range(2):
                served = stack.enter_context(tollway_serve(
                    rules, "--store", redis_url, "--key-prefix", redis_prefix,
                    "--usage-db", db, "--store-timeout", "10s",
                ))
                channel = stack.enter_context(grpc.insecure_channel(served.grpc))
                stubs.append(pb_grpc.TollwayStub(channel))
            requests = [
                pb.DecideRequest(request_id=f"r{i}", user=pb.Entity(id=f"u{i % 7}"),
                                 group=pb.Entity(id="acme"), model="m",
                                 estimate=pb.Estimate(cost_usd=0.5))
                for i in range(60)
            ]
            with ThreadPoolExecutor(24) as pool:
                decisions = list(pool.map(
                    lambda ir: stubs[ir[0] % 2].Decide(ir[1], timeout=30), enumerate(requests)
                ))
        allowed = [d for d in decisions if d.allowed]
        assert len(allowed) == 20
        assert {d.reason for d in decisions if not d.allowed} == {pb.QUOTA_EXCEEDED}
        assert all(d.quotas[0].kind == "balance" for d in decisions)
        by_replica = [sum(1 for i, d in enumerate(decisions) if d.allowed and i % 2 == r)
                      for r in (0, 1)]
        assert all(n > 0 for n in by_replica), by_replica
        (view,) = admin.get_balance("group", "acme")
        assert (view.available, view.reserved) == (0.0, 10.0)
    finally:
        admin.close()
