"""Labels that come from clients are bounded: made-up models and statuses cannot grow
``/metrics`` without end, while the models the rules name always keep their series."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import serving, write_rules

from tollway import Engine
from tollway.dsl import load_text
from tollway.dsl.models import named_models
from tollway.server.labels import OTHER, LabelValues
from tollway.server.metrics import Metrics
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
price "priced/exact" input 1 output 2 per 1M tokens
price "priced/*" input 1 output 2 per 1M tokens
rule vip {
    when user.tier == "vip"
    route "big" if request.model in ["small", "tiny"] or request.model == "mini"
}
rule everyone {
    when not request.model ~ "openai/*"
    route "fallback" if request.model == "legacy" and user.tier != "vip"
}
"""
NAMED = {"big", "small", "tiny", "mini", "fallback", "legacy", "priced/exact"}
EXTRA = 5


def test_the_models_the_rules_name() -> None:
    assert named_models(load_text(RULES)) == NAMED


def test_label_values_pass_known_then_first_come_then_other() -> None:
    values = LabelValues(2, ["a"])
    assert [values(v) for v in ["x", "a", "y", "z", "x", "a", "w"]] == [
        "x", "a", "y", OTHER, "x", "a", OTHER,
    ]
    values.know(["z"])  # a reload naming z
    assert (values("z"), values("w"), values("x")) == ("z", OTHER, "x")


def _series(metrics: Metrics, name: str, label: str) -> set[str]:
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        if family.name == name.removesuffix("_total"):
            return {s.labels[label] for s in family.samples if s.name == name}
    return set()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[pb_grpc.TollwayStub, Metrics]]:
    metrics = Metrics(max_label_values=EXTRA)
    with serving(write_rules(tmp_path, RULES), metrics=metrics) as (stub, server, _):
        metrics.ruleset_loaded(server.engine.ruleset)  # what `tollway serve` does at start
        yield stub, metrics


def test_300_made_up_models_and_statuses_stay_bounded(
    served: tuple[pb_grpc.TollwayStub, Metrics],
) -> None:
    stub, metrics = served
    for i in range(300):
        stub.Report(pb.UsageReport(
            request_id=f"r{i}", user=pb.Entity(id="u"), model=f"made-up-{i}",
            input_tokens=1, cost_usd=0.001, status=f"status-{i}",
        ))
    for model in sorted(NAMED):
        stub.Report(pb.UsageReport(request_id=f"named-{model}", user=pb.Entity(id="u"),
                                   model=model, input_tokens=1, status="success"))
    first = {f"made-up-{i}" for i in range(EXTRA)}
    for name in ("tollway_usage_tokens_total", "tollway_usage_cost_usd_total"):
        seen = _series(metrics, name, "model")
        assert seen - NAMED - {OTHER} == first, name  # only the first EXTRA made-up ones
    tokens = _series(metrics, "tollway_usage_tokens_total", "model")
    assert tokens >= NAMED  # named models keep their series after the budget ran out
    statuses = _series(metrics, "tollway_reports_total", "status")
    assert statuses == {"success", OTHER} | {f"status-{i}" for i in range(EXTRA)}


def test_routes_bound_the_requested_model(
    served: tuple[pb_grpc.TollwayStub, Metrics],
) -> None:
    stub, metrics = served
    vip = pb.Entity(id="v")
    vip.metadata.update({"tier": "vip"})
    for model in ["small", "tiny", "mini"]:
        assert stub.Decide(pb.DecideRequest(user=vip, model=model)).routed
    for i in range(50):
        stub.Decide(pb.DecideRequest(user=pb.Entity(id="u"), model=f"invented-{i}"))
    d = stub.Decide(pb.DecideRequest(user=pb.Entity(id="u"), model="legacy"))
    assert d.routed and d.model == "fallback"
    assert _series(metrics, "tollway_routes_total", "from_model") == {
        "small", "tiny", "mini", "legacy",
    }
    assert _series(metrics, "tollway_routes_total", "to_model") == {"big", "fallback"}


def test_a_reload_names_new_models(tmp_path: Path) -> None:
    metrics = Metrics(max_label_values=0)
    engine = Engine.from_text(RULES, observer=metrics)
    metrics.ruleset_loaded(engine.ruleset)
    engine.report({"request_id": "a", "model": "newcomer", "input_tokens": 1})
    metrics.ruleset_loaded(load_text(RULES + '\nprice "newcomer" input 1 output 1 per 1M tokens'))
    engine.report({"request_id": "b", "model": "newcomer", "input_tokens": 1})
    assert _series(metrics, "tollway_usage_tokens_total", "model") == {OTHER, "newcomer"}
