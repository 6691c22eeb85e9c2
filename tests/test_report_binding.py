"""Reports are bound to their decision, idempotent per user, and decision ids are unguessable.

Over gRPC (a real socket) for the status codes; the store contract (memory and Redis)
is in test_store_contract.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from server_harness import free_user, serving, write_rules

from tollway import Engine
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
quota hourly limits requests to 10 per 1h for each user
quota tokens limits tokens to 1000 per 1h for each user
rule everyone { enforce hourly, tokens }
"""


def _tokens_used(stub: pb_grpc.TollwayStub, uid: str) -> float:
    d = stub.Explain(pb.DecideRequest(user=pb.Entity(id=uid), model="m"), timeout=10)
    return next(q.used for q in d.decision.quotas if q.name == "tokens")


def test_a_report_quoting_another_users_decision_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    with serving(write_rules(tmp_path, RULES)) as (stub, _, _):
        d = stub.Decide(pb.DecideRequest(user=free_user("victim"), model="m",
                                         estimate=pb.Estimate(output_tokens=500)), timeout=10)
        assert d.allowed and _tokens_used(stub, "victim") == 500
        for user, group in (("thief", ""), ("victim", "acme")):
            report = pb.UsageReport(request_id="r1", decision_id=d.decision_id,
                                    user=pb.Entity(id=user), model="m", output_tokens=0)
            if group:
                report.group.id = group
            with pytest.raises(grpc.RpcError) as err:
                stub.Report(report, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("decision_id: that decision was made for another")
        assert _tokens_used(stub, "victim") == 500  # the reservation is intact
        ack = stub.Report(pb.UsageReport(request_id="r1", decision_id=d.decision_id,
                                         user=pb.Entity(id="victim"), model="m",
                                         output_tokens=20), timeout=10)
        assert ack.outcome == "settled" and _tokens_used(stub, "victim") == 20


def test_the_same_request_id_from_two_users_counts_for_both(tmp_path: Path) -> None:
    with serving(write_rules(tmp_path, RULES)) as (stub, _, _):
        for uid in ("a", "b"):
            ack = stub.Report(pb.UsageReport(request_id="same", user=pb.Entity(id=uid),
                                             model="m", output_tokens=7), timeout=10)
            assert ack.outcome == "added" and not ack.duplicate
        again = stub.Report(pb.UsageReport(request_id="same", user=pb.Entity(id="a"),
                                           model="m", output_tokens=7), timeout=10)
        assert again.duplicate
        assert _tokens_used(stub, "a") == 7 and _tokens_used(stub, "b") == 7


def test_decision_ids_carry_122_random_bits() -> None:
    """Version 4 UUIDs: 128 bits of which 6 are fixed; far above the 96 asked of them."""
    engine = Engine.from_text("default allow", store="memory")
    ids = [engine.decide({"model": "m"}).decision_id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for i in ids:
        parsed = uuid.UUID(hex=i)
        assert len(i) == 32 and parsed.hex == i and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # every free bit varies across the sample (a counter or a clock would not)
    bits = [int(i, 16) for i in ids]
    fixed = (0xF << 76) | (0x3 << 62)
    varying = 0
    for b in bits:
        varying |= b ^ bits[0]
    assert varying | fixed == (1 << 128) - 1
