"""Costs from the price table: reports without a cost, estimates with tokens, cached input."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from server_harness import serving, write_rules

from tollway import Engine
from tollway.dsl import load_text
from tollway.policy.pricing import token_cost
from tollway.v1 import tollway_pb2 as pb

RULES = """
quota spend limits cost to 0.01 per 1d for each user
quota calls limits requests to 5 per 1h for each user

price "cheap*" input 1 output 10 cached_input 0.1 per 1M tokens
price "cheap-pro" input 2 output 20 per 1K tokens

rule everyone {
    enforce spend, calls
    route "cheap-pro" if request.model == "pro"
}
"""


@pytest.fixture
def engine() -> Engine:
    return Engine.from_text(RULES)


def spent(engine: Engine, user: str) -> float:
    assert engine.flush_usage()
    detail = engine.get_usage("user", user)
    assert detail is not None
    return detail.usage.total_cost


def test_token_cost_uses_the_cached_price_for_the_cached_part() -> None:
    prices = load_text(RULES).prices
    assert token_cost(prices, "cheap-1", 1000, 100) == pytest.approx(0.002)
    # 800 of the 1000 input tokens came from the cache at a tenth of the price
    assert token_cost(prices, "cheap-1", 1000, 100, 800) == pytest.approx(0.00128)
    # no cached_input price: cached tokens cost the input price
    assert token_cost(prices, "cheap-pro", 1000, 0, 1000) == pytest.approx(2.0)
    assert token_cost(prices, "other", 1000, 100) is None


def test_a_report_without_cost_is_priced_for_the_model_that_served(engine: Engine) -> None:
    d = engine.decide({"user": "u1", "model": "cheap-1"})
    engine.report(
        {
            "request_id": "r1",
            "decision_id": d.decision_id,
            "user": "u1",
            "model": "cheap-1",
            "input_tokens": 1000,
            "output_tokens": 100,
            "cached_input_tokens": 800,
        }
    )
    assert spent(engine, "u1") == pytest.approx(0.00128)
    # the cost quota saw it too: the next decision starts from it
    quota = next(
        q for q in engine.decide({"user": "u1", "model": "cheap-1"}).quotas if q.name == "spend"
    )
    assert quota.used == pytest.approx(0.00128)


def test_a_reported_cost_is_kept_as_sent(engine: Engine) -> None:
    engine.report(
        {
            "request_id": "r2",
            "user": "u2",
            "model": "cheap-1",
            "input_tokens": 1000,
            "output_tokens": 100,
            "cost_usd": 0.5,
        }
    )
    assert spent(engine, "u2") == pytest.approx(0.5)


def test_an_unpriced_model_costs_nothing(engine: Engine) -> None:
    engine.report({"request_id": "r3", "user": "u3", "model": "unknown", "input_tokens": 10**6})
    assert spent(engine, "u3") == 0.0


def test_an_estimate_in_tokens_is_priced_for_the_routed_model(engine: Engine) -> None:
    # "pro" routes to cheap-pro, priced per 1K tokens: 5 output tokens cost 0.1 > 0.01
    d = engine.decide({"user": "u4", "model": "pro", "estimate": {"output_tokens": 5}})
    assert not d.allowed and d.reason == "QUOTA_EXCEEDED" and d.model == "cheap-pro"
    spend = next(q for q in d.quotas if q.name == "spend")
    assert spend.exceeded
    # the same tokens on the unrouted cheap model fit
    ok = engine.decide({"user": "u4", "model": "cheap-1", "estimate": {"output_tokens": 5}})
    assert ok.allowed
    assert next(q for q in ok.quotas if q.name == "spend").used == pytest.approx(5e-5)


def test_an_estimated_cost_wins_over_the_table(engine: Engine) -> None:
    d = engine.decide(
        {"user": "u5", "model": "pro", "estimate": {"output_tokens": 5, "cost_usd": 0.001}}
    )
    assert d.allowed


def test_hits_count_as_that_many_requests(engine: Engine) -> None:
    d = engine.decide({"user": "u6", "model": "m"}, hits=4)
    assert d.allowed and next(q for q in d.quotas if q.name == "calls").used == 4
    d = engine.decide({"user": "u6", "model": "m"}, hits=2)
    assert not d.allowed and d.reason == "QUOTA_EXCEEDED"


@pytest.mark.parametrize("hits", [0, -1, 1.5, True, "2"])
def test_bad_hits_are_refused(engine: Engine, hits: object) -> None:
    with pytest.raises(ValueError, match=r"^hits: "):
        engine.decide({"user": "u7"}, hits=hits)  # type: ignore[arg-type]


def test_cached_tokens_cannot_exceed_input_tokens(engine: Engine) -> None:
    with pytest.raises(
        ValueError, match=r"^cached_input_tokens: 11 is more than input_tokens \(10\)"
    ):
        engine.report(
            {"request_id": "r8", "user": "u8", "input_tokens": 10, "cached_input_tokens": 11}
        )
    with pytest.raises(ValueError, match=r"^cached_input_tokens: must not be negative"):
        engine.report({"request_id": "r8", "user": "u8", "cached_input_tokens": -1})


def test_a_grpc_report_without_cost_is_priced(tmp_path: Path) -> None:
    with serving(write_rules(tmp_path, RULES)) as (stub, _server, _channel):
        ack = stub.Report(
            pb.UsageReport(
                request_id="g1",
                user=pb.Entity(id="g"),
                model="cheap-1",
                input_tokens=1000,
                output_tokens=100,
                cached_input_tokens=800,
            )
        )
        assert ack.outcome == "added"
        usage = stub.GetUsage(pb.GetUsageRequest(user_id="g"))
        assert usage.usage.total_cost == pytest.approx(0.00128)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Report(
                pb.UsageReport(
                    request_id="g2", user=pb.Entity(id="g"), input_tokens=1, cached_input_tokens=2
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("cached_input_tokens: 2 is more than")
