"""Admin-only metadata keys: requests never change them; UpsertEntity does.

In process on both stores (the rule is the engine's, whichever transport calls it), and
once over gRPC for the wire field and the metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from backends import Backend
from conftest import ROOMY
from google.protobuf import struct_pb2
from server_harness import serving, write_rules

from tollway import Engine
from tollway.policy.testing import seed_entities
from tollway.server.metrics import Metrics
from tollway.v1 import tollway_pb2 as pb

RULES = """
schema user { tier: string admin, status: string admin, region: string }
schema group { credits: number admin, plan: string }

quota free_hourly limits requests to 3 per 1h for each user
quota team_budget limits cost to group.credits per month for each group

rule suspended priority 100 {
    when user.status == "suspended"
    deny "account suspended"
}

rule free {
    when user.tier == "free"
    enforce free_hourly
}

rule teams {
    when group.id exists
    enforce team_budget
}

rule eu {
    when user.region == "eu"
    annotate "region" = "eu"
}
"""


@pytest.fixture
def engine(backend: Backend) -> Iterator[Engine]:
    e = Engine.from_text(RULES, store=backend.store, key_prefix=backend.prefix(), store_options=ROOMY)
    yield e
    e.close()


def test_a_request_cannot_lift_its_own_tier(engine: Engine) -> None:
    engine.upsert_entity("user", "u1", {"tier": "free"})
    for _ in range(3):
        d = engine.decide({"user": {"id": "u1", "metadata": {"tier": "enterprise"}}, "model": "m"})
        assert d.allowed and d.ignored_metadata == ("user.tier",)
        assert [q.name for q in d.quotas] == ["free_hourly"]
    d = engine.decide({"user": {"id": "u1", "metadata": {"tier": "enterprise"}}, "model": "m"})
    assert d.reason == "QUOTA_EXCEEDED"
    view = engine.get_entity("user", "u1")
    assert view is not None and view.metadata == {"tier": "free"}


def test_null_does_not_unsuspend_and_other_keys_still_merge(engine: Engine) -> None:
    engine.upsert_entity("user", "u2", {"status": "suspended"})
    d = engine.decide(
        {"user": {"id": "u2", "metadata": {"status": None, "region": "eu"}}, "model": "m"}
    )
    assert d.reason == "DENIED_BY_RULE" and d.message == "account suspended"
    assert d.ignored_metadata == ("user.status",)
    view = engine.get_entity("user", "u2")
    assert view is not None and view.metadata == {"status": "suspended", "region": "eu"}


def test_group_budgets_come_from_upserts_only(engine: Engine) -> None:
    request = {"user": "u3", "group": {"id": "g1", "metadata": {"credits": 1e9}},
               "model": "m", "estimate": {"cost_usd": 1.0}}
    d = engine.decide(request)
    assert d.reason == "QUOTA_UNRESOLVED" and d.ignored_metadata == ("group.credits",)
    engine.upsert_entity("group", "g1", {"credits": 1.5})
    assert engine.decide(request).allowed
    d = engine.decide(request)
    assert d.reason == "QUOTA_EXCEEDED" and d.quotas[0].limit == 1.5


def test_explain_and_report_ignore_admin_keys_too(engine: Engine) -> None:
    engine.upsert_entity("user", "u4", {"tier": "free"})
    e = engine.explain({"user": {"id": "u4", "metadata": {"tier": "pro", "status": "x"}}, "model": "m"})
    assert e.decision.ignored_metadata == ("user.status", "user.tier")
    assert e.decision.matched_rules == ("free",)
    engine.report({"request_id": "r4", "user": {"id": "u4", "metadata": {"tier": "pro"}},
                   "model": "m"})
    view = engine.get_entity("user", "u4")
    assert view is not None and view.metadata == {"tier": "free"}


def test_without_admin_keys_metadata_merges_as_before() -> None:
    e = Engine.from_text('rule r { when user.tier == "pro" allow }', store="memory")
    d = e.decide({"user": {"id": "u", "metadata": {"tier": "pro"}}, "model": "m"})
    assert d.matched_rules == ("r",) and d.ignored_metadata == ()


def test_offline_tools_take_request_metadata_as_stored() -> None:
    e = Engine.from_text(RULES, store="memory")
    request = seed_entities(e, {"user": {"id": "u5", "metadata": {"status": "suspended"}}, "model": "m"})
    assert request.user is not None and request.user.metadata is None
    d = e.decide(request)
    assert d.reason == "DENIED_BY_RULE" and d.ignored_metadata == ()


def test_over_grpc_the_decision_lists_ignored_keys_and_metrics_count_them(tmp_path: Path) -> None:
    metrics = Metrics()
    with serving(write_rules(tmp_path, RULES), metrics=metrics) as (stub, _, _):
        stub.UpsertEntity(pb.UpsertEntityRequest(kind="user", id="u6", metadata=_struct(tier="free")))
        user = pb.Entity(id="u6", metadata=_struct(tier="enterprise", status="active"))
        d = stub.Decide(pb.DecideRequest(user=user, model="m"), timeout=10)
        assert list(d.ignored_metadata) == ["user.status", "user.tier"]
        assert [q.name for q in d.quotas] == ["free_hourly"]
        with pytest.raises(grpc.RpcError):  # bad input is still refused before anything
            stub.Decide(pb.DecideRequest(user=pb.Entity(id="")), timeout=10)
    text = metrics.exposition().decode()
    assert 'tollway_metadata_ignored_total{key="user.tier"} 1.0' in text
    assert 'tollway_metadata_ignored_total{key="user.status"} 1.0' in text


def _struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s
