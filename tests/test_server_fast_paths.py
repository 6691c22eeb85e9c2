"""The server's conversions and shortcuts.

A ``DecideRequest`` message becomes the engine's request by one path,
``DecideRequest.parse(convert.decide_request(msg))``: good messages keep their values and
types, bad ones are refused naming the first bad field in the order of the checks. The
metrics' cached label children must count into the same series as ``labels()``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tollway.policy.model import DecideRequest, Decision, ShadowOutcome, UsageReport
from tollway.server import convert
from tollway.server.metrics import Metrics
from tollway.v1 import tollway_pb2 as pb


def _entity(uid: str, metadata: dict[str, Any] | None = None) -> pb.Entity:
    e = pb.Entity(id=uid)
    if metadata is not None:
        e.metadata.update(metadata)
    return e


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        node = {"n": node}
    return node


def _lists(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


GOOD = [
    pb.DecideRequest(model="m"),
    pb.DecideRequest(model="m", dry_run=True),
    pb.DecideRequest(user=pb.Entity(id="u"), model="m"),
    pb.DecideRequest(user=_entity("u", {}), group=_entity("g", {}), model="m"),
    pb.DecideRequest(
        request_id="r1",
        user=_entity("ü-1", {"tier": "free", "region": "eu", "categories": ["vip", "x"],
                             "n": 3, "f": 2.5, "ok": True, "gone": None,
                             "nested": {"a": [1, {"b": "c"}], "d": None}}),
        group=_entity("team/1", {"monthly_credits": 1_000_000, "big": 2.0**60}),
        model="openai/gpt-5",
        attributes={"endpoint": "/v1/chat", "ip": "10.0.0.1"},
        estimate=pb.Estimate(input_tokens=200, output_tokens=300, cost_usd=0.002),
    ),
    pb.DecideRequest(model="m", user=_entity("u", {"s": "é" * 100}), estimate=pb.Estimate()),
]

# bad ones, alone and several at once: the first check in order names its field
BAD = [
    (pb.DecideRequest(), "model"),
    (pb.DecideRequest(model="m", user=pb.Entity(id="")), "user.id"),
    (pb.DecideRequest(model="m", user=pb.Entity(id="u" * 257)), "user.id"),
    (pb.DecideRequest(model="m", user=_entity("u"), group=pb.Entity()), "group.id"),
    (pb.DecideRequest(model="m", group=pb.Entity(id="g" * 300)), "group.id"),
    (pb.DecideRequest(model="m", user=_entity("u", {"d": _deep(8)})), "user.metadata"),
    (pb.DecideRequest(model="m", user=_entity("u", {"d": _deep(30)}), request_id="r" * 300),
     "request_id"),
    # nested past the conversion's bound: named before any later field is checked
    (pb.DecideRequest(model="m", user=_entity("u", {"d": _lists(40)}), request_id="r" * 300),
     "user.metadata"),
    (pb.DecideRequest(user=_entity("u"), group=_entity("g", {"d": _lists(40)}), model="m" * 2000),
     "group.metadata"),
    (pb.DecideRequest(model="m", user=_entity("u", {"blob": "x" * 70_000})), "user.metadata"),
    (pb.DecideRequest(model="m", user=_entity("u", {"score": math.nan})), "user.metadata"),
    (pb.DecideRequest(model="m", user=_entity("u", {"score": math.inf}), group=pb.Entity()),
     "user.metadata"),
    (pb.DecideRequest(model="m", estimate=pb.Estimate(input_tokens=-1)),
     "estimate.input_tokens"),
    (pb.DecideRequest(model="m", estimate=pb.Estimate(output_tokens=-5, cost_usd=math.nan)),
     "estimate.output_tokens"),
    (pb.DecideRequest(model="m", estimate=pb.Estimate(cost_usd=math.inf)), "estimate.cost_usd"),
    (pb.DecideRequest(model="m", estimate=pb.Estimate(cost_usd=-0.5)), "estimate.cost_usd"),
    (pb.DecideRequest(model="m", request_id="r" * 257, user=pb.Entity(id="")), "request_id"),
    (pb.DecideRequest(model="m" * 2000, estimate=pb.Estimate(input_tokens=-1)), "model"),
    (pb.DecideRequest(model="m", attributes={f"k{i}": "v" for i in range(65)}), "attributes"),
    (pb.DecideRequest(model="m", attributes={"k": "v" * 5000}), "attributes"),
    (pb.DecideRequest(model="m", attributes={"k" * 200: "v"}), "attributes"),
    (pb.DecideRequest(model="m", attributes={"": "v"}), "attributes"),
]


@pytest.mark.parametrize("msg", GOOD)
def test_a_good_message_keeps_its_values_and_types(msg: pb.DecideRequest) -> None:
    got = DecideRequest.parse(convert.decide_request(msg))
    assert got.model == msg.model and got.request_id == msg.request_id
    assert got.dry_run == msg.dry_run and got.attributes == dict(msg.attributes)
    for name in ("user", "group"):
        ref = getattr(got, name)
        if not msg.HasField(name):
            assert ref is None
            continue
        entity = getattr(msg, name)
        assert ref.id == entity.id
        if entity.HasField("metadata"):
            want = convert.struct_to_dict(entity.metadata)
            # same types too (``1 == 1.0 == True`` would hide a conversion difference)
            assert repr(ref.metadata) == repr(want)
    e = msg.estimate
    assert (got.estimate.input_tokens, got.estimate.output_tokens, got.estimate.cost_usd) == (
        e.input_tokens, e.output_tokens, e.cost_usd)


@pytest.mark.parametrize(("msg", "field"), BAD)
def test_a_bad_message_is_refused_naming_its_first_bad_field(
    msg: pb.DecideRequest, field: str
) -> None:
    with pytest.raises(ValueError) as caught:
        DecideRequest.parse(convert.decide_request(msg))
    message = str(caught.value)
    assert message.startswith((f"{field}:", f"{field}.")), message


def test_struct_to_dict_keeps_types() -> None:
    e = _entity("u", {"s": "x", "i": 3, "f": 2.5, "b": False, "n": None, "l": ["a", 1], "o": {"k": 1}})
    got = convert.struct_to_dict(e.metadata)
    assert got == {"s": "x", "i": 3, "f": 2.5, "b": False, "n": None, "l": ["a", 1], "o": {"k": 1}}
    assert type(got["i"]) is int and type(got["f"]) is float and type(got["b"]) is bool


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _record(metrics: Metrics, cached: bool) -> None:
    decisions = [
        Decision(allowed=True, reason="ALLOWED", model="b", routed=True, checks=("pii",),
                 matched_rules=("r1", "r2"), shadow=ShadowOutcome(matched_rules=("s",))),
        Decision(allowed=False, reason="QUOTA_EXCEEDED", model="a", matched_rules=("r1",)),
        Decision(allowed=True, reason="ALLOWED", model="a", matched_rules=("r2",)),
    ]
    reports = [UsageReport("q1", model="a", input_tokens=3, cost_usd=0.5),
               UsageReport("q2", model="a", status="error")]
    for _ in range(3):
        for d in decisions:
            exceeded = ("quota1",) if d.reason == "QUOTA_EXCEEDED" else ()
            if cached:
                metrics.decision(d, "a", exceeded, 0.0001)
            else:
                m = metrics
                m.decisions.labels(d.reason, "true" if d.routed else "false").inc()
                m.decide_seconds.observe(0.0001)
                for rule in d.matched_rules:
                    m.rule_matches.labels(rule).inc()
                for rule in d.shadow.matched_rules:
                    m.shadow_matches.labels(rule).inc()
                for quota in exceeded:
                    m.quota_exceeded.labels(quota).inc()
                if d.allowed:
                    if d.routed:
                        m.routes.labels("a", d.model).inc()
                    for check in d.checks:
                        m.checks.labels(check).inc()
        for r in reports:
            if cached:
                metrics.report(r, "added")
                metrics.store_call("memory", "consume", 0.001, failed=r.status == "error")
            else:
                metrics.reports.labels(r.status).inc()
                if r.total_tokens:
                    metrics.usage_tokens.labels(r.model).inc(r.total_tokens)
                if r.cost_usd:
                    metrics.usage_cost.labels(r.model).inc(r.cost_usd)
                metrics.store_seconds.labels("memory", "consume").observe(0.001)
                if r.status == "error":
                    metrics.store_errors.labels("memory", "consume").inc()


def test_cached_label_children_count_like_labels() -> None:
    fast, plain = Metrics(), Metrics()
    _record(fast, cached=True)
    _record(plain, cached=False)
    assert _samples(fast) == _samples(plain)
    assert _samples(fast)[("tollway_rule_matches_total", (("rule", "r1"),))] == 6


def test_label_cache_is_bounded_and_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from tollway.server import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "_MAX_CHILDREN", 3)
    m = Metrics()
    for i in range(10):
        for _ in range(2):
            m.report(UsageReport(f"q{i}", model=f"m{i}", input_tokens=1), "added")
    samples = _samples(m)
    assert all(samples[("tollway_usage_tokens_total", (("model", f"m{i}"),))] == 2 for i in range(10))
    assert len(m._usage_tokens._cache) <= 3
