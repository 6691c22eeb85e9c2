"""A dead Redis seen over the wire: decisions follow on_store_error, reports say UNAVAILABLE,
and a retried report counts once Redis is back."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import RedisServer
from server_harness import eventually, serving, write_rules

from tollway.v1 import tollway_pb2 as pb

RULES = """
quota soft limits requests to 100 per 1h for each user
quota hard limits cost to 10 per 1d for each user on_store_error deny
rule casual { when user.plan == "casual" enforce soft }
rule paying { when user.plan == "paying" enforce hard }
"""


def _user(uid: str, plan: str) -> pb.Entity:
    entity = pb.Entity(id=uid)
    entity.metadata.update({"plan": plan})
    return entity


def test_dead_redis_over_grpc(tmp_path: Path, redis_server: RedisServer) -> None:
    rules = write_rules(tmp_path, RULES)
    with serving(rules, store=redis_server.url) as (stub, _, _):
        casual, paying = _user("c", "casual"), _user("p", "paying")
        assert stub.Decide(pb.DecideRequest(user=casual, model="m")).allowed
        d = stub.Decide(pb.DecideRequest(user=paying, model="m", estimate=pb.Estimate(cost_usd=1.0)))
        assert d.allowed

        redis_server.kill()
        d = stub.Decide(pb.DecideRequest(user=casual, model="m"))
        assert d.allowed and d.reason == pb.ALLOWED  # on_store_error allow (the default)
        d = stub.Decide(pb.DecideRequest(user=paying, model="m"))
        assert (d.allowed, d.reason) == (False, pb.STORE_UNAVAILABLE)  # fails closed on money
        report = pb.UsageReport(request_id="r-down", user=pb.Entity(id="p"), cost_usd=2.0)
        with pytest.raises(grpc.RpcError) as err:
            stub.Report(report)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the gateway retries

        redis_server.start()  # empty: the private server keeps nothing on disk
        ack = stub.Report(report)
        assert not ack.duplicate
        assert stub.Report(report).duplicate  # the retry's retry counts once
        hard = stub.Explain(pb.DecideRequest(user=paying, model="m")).decision.quotas[0]
        assert hard.name == "hard" and hard.used == pytest.approx(2.0)
        # the report's event went into the stream of the restarted Redis, and on into usage
        def spent() -> float:
            return float(stub.GetUsage(pb.GetUsageRequest(user_id="p")).usage.total_cost)

        assert eventually(spent, 2.0) == 2.0
