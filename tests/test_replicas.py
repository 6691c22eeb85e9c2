"""Two ``tollway serve`` processes on one Redis behave as one: quotas are exact across replicas."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from server_harness import eventually, tollway_serve

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
quota hundred limits requests to 100 per 1h for each user
quota dollars limits cost to 50 per 1d for each user
quota spend limits cost to 10 per 1d for each group
rule counted { when user.plan == "counted" enforce hundred }
rule costed { when user.plan == "costed" enforce dollars }
rule team { when group.id exists enforce spend }
"""


@pytest.fixture
def replicas(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[list[pb_grpc.TollwayStub]]:
    rules = tmp_path / "replicas.rules"
    rules.write_text(RULES)
    with ExitStack() as stack:
        stubs = []
        for _ in range(2):
            served = stack.enter_context(
                tollway_serve(rules, "--store", redis_url, "--key-prefix", redis_prefix,
                              "--usage-db", f"sqlite:///{tmp_path / 'usage.db'}",
                              "--store-timeout", "10s")
            )
            channel = stack.enter_context(grpc.insecure_channel(served.grpc))
            stubs.append(pb_grpc.TollwayStub(channel))
        yield stubs


def _user(uid: str, plan: str) -> pb.Entity:
    entity = pb.Entity(id=uid)
    entity.metadata.update({"plan": plan})
    return entity


def _fire(stubs: list[pb_grpc.TollwayStub], requests: list[pb.DecideRequest]) -> list[pb.Decision]:
    """Every request at once, alternating replicas, from 32 client threads."""
    with ThreadPoolExecutor(32) as pool:
        return list(
            pool.map(lambda ir: stubs[ir[0] % 2].Decide(ir[1], timeout=30), enumerate(requests))
        )


def test_300_concurrent_decides_on_two_replicas_admit_exactly_100(
    replicas: list[pb_grpc.TollwayStub],
) -> None:
    requests = [
        pb.DecideRequest(request_id=f"r{i}", user=_user("hot", "counted"), model="m")
        for i in range(300)
    ]
    decisions = _fire(replicas, requests)
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 100
    assert {d.reason for d in decisions if not d.allowed} == {pb.QUOTA_EXCEEDED}
    # each replica admitted some: the count is shared, not per process
    by_replica = [
        sum(1 for i, d in enumerate(decisions) if d.allowed and i % 2 == r) for r in (0, 1)
    ]
    assert all(n > 0 for n in by_replica), by_replica


def test_cost_quota_is_exact_across_replicas(replicas: list[pb_grpc.TollwayStub]) -> None:
    est = pb.Estimate(cost_usd=0.5)
    requests = [
        pb.DecideRequest(
            request_id=f"c{i}", user=_user("spender", "costed"), model="m", estimate=est
        )
        for i in range(300)
    ]
    assert sum(d.allowed for d in _fire(replicas, requests)) == 100  # 100 x 0.5 = 50


def test_concurrent_reports_on_two_replicas_count_each_request_once(
    replicas: list[pb_grpc.TollwayStub],
) -> None:
    group = pb.Entity(id="team")
    user = pb.Entity(id="member")
    # 40 distinct requests of 0.1 USD each, every report sent 3 times, spread over replicas
    reports = [
        pb.UsageReport(request_id=f"rep{i % 40}", user=user, group=group, model="m", cost_usd=0.1)
        for i in range(120)
    ]
    with ThreadPoolExecutor(32) as pool:
        acks = list(
            pool.map(lambda ir: replicas[ir[0] % 2].Report(ir[1], timeout=30), enumerate(reports))
        )
    assert sum(not a.duplicate for a in acks) == 40
    peek = replicas[0].Explain(pb.DecideRequest(user=user, group=group, model="m"), timeout=10)
    spend = next(q for q in peek.decision.quotas if q.name == "spend")
    assert spend.used == pytest.approx(4.0)
    def team() -> tuple[int, float]:
        usage = replicas[1].GetUsage(pb.GetUsageRequest(group_id="team"), timeout=10).usage
        return usage.request_count, round(usage.total_cost * 1e9)

    assert eventually(team, (40, 4_000_000_000)) == (40, 4_000_000_000)
    # what is left of the group's 10 USD admits a 6 USD request, and not a cent more
    ok = replicas[1].Decide(
        pb.DecideRequest(user=user, group=group, model="m", estimate=pb.Estimate(cost_usd=6.0))
    )
    assert ok.allowed
    over = replicas[0].Decide(
        pb.DecideRequest(user=user, group=group, model="m", estimate=pb.Estimate(cost_usd=0.01))
    )
    assert over.reason == pb.QUOTA_EXCEEDED
