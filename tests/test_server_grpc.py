"""The gRPC service over a real socket against the real engine: every RPC, health, reflection."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ROOMY
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import ServerThread, free_user, serving, write_rules

from tollway.policy.engine import Engine
from tollway.server import convert
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc


@pytest.fixture()
def stub(tmp_path: Path) -> Iterator[pb_grpc.TollwayStub]:
    with serving(write_rules(tmp_path)) as (stub, _, _):
        yield stub


def _quota(d: pb.Decision, name: str) -> pb.QuotaStatus:
    return next(q for q in d.quotas if q.name == name)


def test_decide_allows_and_reports_quotas(stub: pb_grpc.TollwayStub) -> None:
    d = stub.Decide(pb.DecideRequest(
        request_id="r1", user=free_user("alice"), model="small",
        estimate=pb.Estimate(input_tokens=100, output_tokens=50),
    ))
    assert d.allowed and d.reason == pb.ALLOWED
    assert d.model == "small" and not d.routed
    assert d.decision_id and d.ruleset_version
    assert list(d.matched_rules) == ["limited"]
    per_user = _quota(d, "per_user")
    assert (per_user.metric, per_user.scope, per_user.key) == ("requests", "user", "u=alice")
    assert (per_user.limit, per_user.used, per_user.remaining) == (3, 1, 2)
    assert not per_user.exceeded
    assert per_user.retry_after.ToTimedelta().total_seconds() == 0
    assert per_user.HasField("resets_at") and per_user.resets_at.seconds > 0
    assert _quota(d, "user_tokens").used == 150


def test_quota_exceeded_lists_retry_after_and_consumes_nothing(stub: pb_grpc.TollwayStub) -> None:
    for _ in range(3):
        assert stub.Decide(pb.DecideRequest(user=free_user("bob"), model="m")).allowed
    d = stub.Decide(pb.DecideRequest(user=free_user("bob"), model="m"))
    assert not d.allowed and d.reason == pb.QUOTA_EXCEEDED
    q = _quota(d, "per_user")
    assert q.exceeded and q.used == 3 and q.remaining == 0
    assert q.retry_after.ToTimedelta().total_seconds() > 0
    assert "per_user" in d.message
    # the denied request consumed no tokens either
    assert _quota(d, "user_tokens").used == 0


def test_deny_route_checks_annotations_and_shadow(stub: pb_grpc.TollwayStub) -> None:
    blocked = pb.Entity(id="carol")
    blocked.metadata.update({"status": "blocked"})
    d = stub.Decide(pb.DecideRequest(user=blocked, model="m"))
    assert not d.allowed and d.reason == pb.DENIED_BY_RULE and d.message == "account blocked"

    vip = pb.Entity(id="dave")
    vip.metadata.update({"categories": ["vip"]})
    d = stub.Decide(pb.DecideRequest(user=vip, model="small"))
    assert d.allowed and d.routed and d.model == "big-model"
    assert list(d.checks) == ["pii-scan"] and dict(d.annotations) == {"priority": "high"}

    d = stub.Decide(pb.DecideRequest(user=free_user("erin"), model="m"))
    assert "trial" not in d.matched_rules and d.model == "m" and not d.routed
    assert list(d.shadow.matched_rules) == ["trial"]
    assert d.shadow.routed and d.shadow.model == "tiny-model"


@pytest.mark.redis
def test_redis_store_runs_engine_calls_off_the_loop(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    with serving(write_rules(tmp_path), store=redis_url, key_prefix=redis_prefix,
                 store_options=ROOMY) as (
        stub, server, _,
    ):
        assert server.engine.blocking
        futures = [
            stub.Decide.future(pb.DecideRequest(user=free_user("rita"), model="m"), timeout=10)
            for _ in range(5)
        ]
        decisions = [f.result() for f in futures]
        assert sorted(d.allowed for d in decisions) == [False, False, True, True, True]
        assert sorted(_quota(d, "per_user").used for d in decisions if d.allowed) == [1, 2, 3]
        ack = stub.Report(pb.UsageReport(
            request_id="redis-1", decision_id=decisions[0].decision_id,
            user=pb.Entity(id="rita"), model="m", output_tokens=7,
        ))
        assert ack.outcome in ("settled", "added")
        info = stub.GetEntity(pb.GetEntityRequest(kind="user", id="rita"))
        assert info.metadata["tier"] == "free"


def test_no_entity_and_unresolved_group_limit(stub: pb_grpc.TollwayStub) -> None:
    d = stub.Decide(pb.DecideRequest(model="m"))
    assert d.allowed and not d.quotas and not d.matched_rules

    d = stub.Decide(pb.DecideRequest(user=pb.Entity(id="u"), group=pb.Entity(id="acme"), model="m"))
    assert not d.allowed and d.reason == pb.QUOTA_UNRESOLVED

    group = pb.Entity(id="acme")
    group.metadata.update({"credits": 10})
    d = stub.Decide(pb.DecideRequest(
        user=pb.Entity(id="u"), group=group, model="m", estimate=pb.Estimate(cost_usd=2.5)
    ))
    assert d.allowed
    q = _quota(d, "group_cost")
    assert (q.scope, q.limit, q.used) == ("group", 10, 2.5)


def test_dry_run_consumes_nothing(stub: pb_grpc.TollwayStub) -> None:
    for _ in range(2):
        d = stub.Decide(pb.DecideRequest(user=free_user("fay"), model="m", dry_run=True))
        assert d.allowed and _quota(d, "per_user").used == 0
    d = stub.Decide(pb.DecideRequest(user=free_user("fay"), model="m"))
    assert _quota(d, "per_user").used == 1


def test_report_settles_then_is_idempotent(stub: pb_grpc.TollwayStub) -> None:
    d = stub.Decide(pb.DecideRequest(
        user=free_user("gus"), model="m", estimate=pb.Estimate(output_tokens=500)
    ))
    assert _quota(d, "user_tokens").used == 500
    report = pb.UsageReport(
        request_id="req-1", decision_id=d.decision_id, user=pb.Entity(id="gus"), model="m",
        input_tokens=20, output_tokens=80, cost_usd=0.001, duration_seconds=1.5,
    )
    ack = stub.Report(report)
    assert (ack.request_id, ack.outcome, ack.duplicate) == ("req-1", "settled", False)
    again = stub.Report(report)
    assert (again.outcome, again.duplicate) == ("duplicate", True)
    d = stub.Decide(pb.DecideRequest(user=free_user("gus"), model="m"))
    assert _quota(d, "user_tokens").used == 100  # the estimate was replaced by the actuals

    added = stub.Report(pb.UsageReport(
        request_id="req-2", user=pb.Entity(id="gus"), model="m", input_tokens=5
    ))
    assert added.outcome == "added"


def test_explain_traces_and_consumes_nothing(stub: pb_grpc.TollwayStub) -> None:
    request = pb.DecideRequest(user=free_user("hal", categories=["vip"]), model="small")
    for _ in range(5):
        e = stub.Explain(request)
        assert e.decision.allowed and _quota(e.decision, "per_user").used == 0
    assert e.total_rules == 5 and 1 <= e.candidates <= 5
    by_rule = {t.rule: t for t in e.trace}
    assert set(by_rule) == {"blocked", "limited", "grouped", "vip", "trial"}
    limited = by_rule["limited"]
    assert limited.matched and not limited.shadow
    test = limited.tests[0]
    assert test.held and 'user.tier == "free"' in test.text
    assert convert.value_to_python(test.values["user.tier"]) == "free"
    assert by_rule["trial"].shadow
    assert not by_rule["blocked"].matched and by_rule["blocked"].priority == 100
    # explain wrote no metadata either
    with pytest.raises(grpc.RpcError) as err:
        stub.GetEntity(pb.GetEntityRequest(kind="user", id="hal"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # and a real decision still starts from zero
    assert _quota(stub.Decide(request), "per_user").used == 1


def test_entities_upsert_get_and_links(stub: pb_grpc.TollwayStub) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"tier": "free", "level": 3, "ratio": 0.5, "tags": ["a", "b"]})
    info = stub.UpsertEntity(pb.UpsertEntityRequest(
        kind="user", id="ivy", metadata=metadata, groups=["acme"]
    ))
    assert (info.kind, info.id, list(info.links)) == ("user", "ivy", ["acme"])
    got = stub.GetEntity(pb.GetEntityRequest(kind="user", id="ivy"))
    meta = convert.struct_to_dict(got.metadata)
    assert meta == {"tier": "free", "level": 3, "ratio": 0.5, "tags": ["a", "b"]}
    assert isinstance(meta["level"], int)
    group = stub.GetEntity(pb.GetEntityRequest(kind="group", id="acme"))
    assert list(group.links) == ["ivy"]
    # the stored metadata is what rules see: no metadata sent with the request
    d = stub.Decide(pb.DecideRequest(user=pb.Entity(id="ivy"), model="m"))
    assert "limited" in d.matched_rules

    replaced = stub.UpsertEntity(pb.UpsertEntityRequest(kind="user", id="ivy", replace=True))
    assert convert.struct_to_dict(replaced.metadata) == {}

    with pytest.raises(grpc.RpcError) as err:
        stub.GetEntity(pb.GetEntityRequest(kind="group", id="nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_usage_rpcs(tmp_path: Path) -> None:
    with serving(write_rules(tmp_path)) as (stub, server, _):
        for i, (uid, cost) in enumerate((("ann", 0.5), ("ann", 0.25), ("ben", 2.0))):
            stub.Report(pb.UsageReport(
                request_id=f"u-{i}", user=pb.Entity(id=uid), model="m1" if i else "m2",
                input_tokens=10, output_tokens=5, cost_usd=cost, duration_seconds=1.0,
            ))
        assert server.engine.flush_usage()
        detail = stub.GetUsage(pb.GetUsageRequest(user_id="ann"))
        assert detail.usage.user_id == "ann" and not detail.usage.group_id
        assert (detail.usage.request_count, detail.usage.total_tokens) == (2, 30)
        assert detail.usage.total_cost == pytest.approx(0.75)
        assert detail.usage.HasField("first_seen") and detail.usage.HasField("last_seen")
        assert dict(detail.cost_by_model) == pytest.approx({"m1": 0.25, "m2": 0.5})
        assert [r.request_id for r in detail.recent_reports] == ["u-1", "u-0"]

        page = stub.ListUsage(pb.ListUsageRequest(kind="users", sort="-total_cost", limit=1))
        assert page.count == 2 and [r.user_id for r in page.results] == ["ben"]
        assert page.HasField("next") and page.next == 1 and not page.HasField("previous")
        page = stub.ListUsage(pb.ListUsageRequest(sort="-total_cost", limit=1, offset=page.next))
        assert [r.user_id for r in page.results] == ["ann"] and page.previous == 0

        for request, field in (
            (pb.ListUsageRequest(sort="cost"), "sort"),
            (pb.ListUsageRequest(kind="robots"), "kind"),
            (pb.ListUsageRequest(limit=101), "limit"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListUsage(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(field)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetUsage(pb.GetUsageRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.GetUsage(pb.GetUsageRequest(group_id="nobody"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        walked, cursor = [], ""
        while True:
            page = stub.ListUsage(pb.ListUsageRequest(sort="-total_cost", limit=1, cursor=cursor))
            walked += [r.user_id for r in page.results]
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert walked == ["ben", "ann"]
        period = stub.ListUsage(pb.ListUsageRequest(start=detail.usage.first_seen))
        assert period.count == 2 and period.HasField("period_start")
        assert period.period_start.seconds % 3600 == 0

        series = stub.GetUsageSeries(pb.UsageSeriesRequest(user_id="ann", metric="tokens"))
        assert (series.user_id, series.metric, series.step, len(series.points)) == (
            "ann", "tokens", "1h", 24)
        assert series.points[-1].value == 30
        spikes = stub.ListSpikes(pb.ListSpikesRequest(min=1.0))
        assert [(s.user_id, s.window_amount, s.HasField("ratio")) for s in spikes.results] == [
            ("ben", 2.0, False)]
        for call, request, field in (
            (stub.GetUsageSeries, pb.UsageSeriesRequest(user_id="ann", step="1m"), "step"),
            (stub.GetUsageSeries, pb.UsageSeriesRequest(), "user_id"),
            (stub.ListSpikes, pb.ListSpikesRequest(window="90m"), "window"),
            (stub.ListSpikes, pb.ListSpikesRequest(factor=-1), "factor"),
            (stub.ListUsage, pb.ListUsageRequest(cursor="x"), "cursor"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(field)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetUsageSeries(pb.UsageSeriesRequest(group_id="nobody"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_usage_rpcs_without_a_usage_database(tmp_path: Path) -> None:
    with serving(write_rules(tmp_path), usage_db=None) as (stub, _, _):
        for call, request in ((stub.GetUsage, pb.GetUsageRequest(user_id="a")),
                              (stub.ListUsage, pb.ListUsageRequest()),
                              (stub.ListSpikes, pb.ListSpikesRequest())):
            with pytest.raises(grpc.RpcError) as err:
                call(request)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_and_reflection(tmp_path: Path) -> None:
    with serving(write_rules(tmp_path)) as (_, _, channel):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tollway.v1.Tollway"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(refl.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tollway.v1.Decision"),
        ])))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"tollway.v1.Tollway", "grpc.health.v1.Health"} <= names
        assert responses[1].file_descriptor_response.file_descriptor_proto


def test_health_turns_not_serving_before_the_drain(tmp_path: Path) -> None:
    with serving(write_rules(tmp_path)) as (stub, server, channel):
        assert server.server is not None
        server.run(server.server.health.enter_graceful_shutdown())
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tollway.v1.Tollway"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert stub.Decide(pb.DecideRequest(model="m")).allowed  # still answering until stop


def test_unix_socket(tmp_path: Path) -> None:
    # AF_UNIX paths are limited to ~100 bytes: pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="tw") as short:
        sock = os.path.join(short, "t.sock")
        engine = Engine.from_path(write_rules(tmp_path))
        server = ServerThread(engine)
        address = server.start(f"unix:{sock}")
        assert address == f"unix:{sock}"
        with grpc.insecure_channel(address) as channel:
            d = pb_grpc.TollwayStub(channel).Decide(pb.DecideRequest(model="m"), timeout=10)
            assert d.allowed
        server.stop()
        engine.close()


def test_struct_conversion_round_trip() -> None:
    data: dict[str, Any] = {"a": 1, "b": 1.5, "c": None, "d": [True, "x", {"e": -2}], "f": {}}
    struct = convert.dict_to_struct(data)
    assert convert.struct_to_dict(struct) == data
    big = convert.dict_to_struct({"n": float(2**60)})
    assert convert.struct_to_dict(big)["n"] == float(2**60)
    nan = convert.dict_to_struct({"n": math.nan})
    assert math.isnan(convert.struct_to_dict(nan)["n"])  # type: ignore[arg-type]

