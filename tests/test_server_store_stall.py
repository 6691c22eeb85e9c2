"""A stalled Redis (SIGSTOP) under a burst of calls, over a real gRPC channel.

- No decision waits longer than the store timeout plus a small margin, even with many
  more calls in flight than engine threads (each call's budget counts from its arrival).
- Every answer agrees with its effect: fail-open decisions were not counted, fail-closed
  ones consumed nothing, and Reports answered UNAVAILABLE say whether they may have been
  applied (the ``tollway-outcome`` trailer); their retries with the same request_id count
  once.
- gRPC health says NOT_SERVING while ``/readyz`` says 503, and a server started with Redis
  down says so in its start line.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import RedisServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import serving, tollway_serve, write_rules

from tollway.policy.stores import StoreOptions
from tollway.server.grpc_service import OUTCOME_KEY
from tollway.v1 import tollway_pb2 as pb

pytestmark = pytest.mark.redis

RULES = """
quota soft limits requests to 1000 per 1h for each user
quota hard limits cost to 100 per 1d for each user on_store_error deny
rule casual { when user.plan == "casual" enforce soft }
rule paying { when user.plan == "paying" enforce hard }
"""
TIMEOUT = 0.4
BURST = 300  # calls in flight at once, against 32 engine threads
# The bound: the store timeout, plus the time the same burst takes with Redis healthy
# (what this machine needs to serve it, measured in the same run: a loaded machine is
# slower at both), plus a margin. Without the per-call budget the stalled burst took
# about BURST / 32 * TIMEOUT (3.75 s) more than that.
MARGIN = 1.0


def _user(uid: str, plan: str) -> pb.Entity:
    entity = pb.Entity(id=uid)
    entity.metadata.update({"plan": plan})
    return entity


def _wait_all(futures: list[Future[Any]]) -> list[Any]:
    out = []
    for f in futures:
        try:
            out.append(f.result())
        except grpc.RpcError as err:
            out.append(err)
    return out


def test_a_stalled_redis_answers_within_the_budget_and_answers_agree_with_effects(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    options = StoreOptions(timeout=TIMEOUT)
    with serving(write_rules(tmp_path, RULES), store=redis_server.url,
                 store_options=options) as (stub, _, _):
        users = [_user(f"c{i}", "casual") for i in range(BURST)]
        started = time.monotonic()  # one counted decision each; metadata cached
        healthy = _wait_all([stub.Decide.future(pb.DecideRequest(user=u, model="m"), timeout=30)
                             for u in users])
        healthy_took = time.monotonic() - started
        assert all(d.allowed and not d.message for d in healthy)
        payer = _user("p", "paying")
        assert stub.Decide(pb.DecideRequest(user=payer, model="m",
                                            estimate=pb.Estimate(cost_usd=1.0))).allowed

        redis_server.pause()
        try:
            started = time.monotonic()
            decides = [stub.Decide.future(pb.DecideRequest(user=u, model="m"), timeout=30)
                       for u in users]
            strict = stub.Decide.future(pb.DecideRequest(user=payer, model="m"), timeout=30)
            reports = [
                stub.Report.future(pb.UsageReport(request_id=f"r{i}", user=pb.Entity(id="p"),
                                                  model="m", cost_usd=2.0), timeout=30)
                for i in range(5)
            ]
            answers = _wait_all(decides)
            strict_answer = strict.result()
            report_errors = _wait_all(reports)
            took = time.monotonic() - started
        finally:
            redis_server.resume()

        bound = TIMEOUT + healthy_took + MARGIN
        assert took < bound, f"{BURST} decisions took {took:.2f}s (healthy: {healthy_took:.2f}s)"
        assert all(isinstance(d, pb.Decision) for d in answers), answers[:3]
        assert {(d.allowed, d.reason) for d in answers} == {(True, pb.ALLOWED)}
        assert all(d.message == "counter store unreachable; quotas not enforced" for d in answers)
        assert (strict_answer.allowed, strict_answer.reason) == (False, pb.STORE_UNAVAILABLE)
        for err in report_errors:
            assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
            trailer = dict(err.trailing_metadata() or ())
            assert trailer[OUTCOME_KEY] in ("unknown", "not-applied"), trailer
            if trailer[OUTCOME_KEY] == "unknown":
                assert "same request_id" in (err.details() or "")

        redis_server.client().ping()  # what was queued on the sockets has now run
        # the fail-open decisions consumed nothing, and were not counted as usage
        for u in users[:3]:
            peek = stub.Explain(pb.DecideRequest(user=pb.Entity(id=u.id), model="m"))
            assert peek.decision.quotas[0].used == 1  # the warm-up decision alone
            assert stub.GetUsage(pb.GetUsageRequest(user_id=u.id)).usage.request_count == 1
        hard = stub.Explain(pb.DecideRequest(user=pb.Entity(id="p"), model="m")).decision
        assert hard.quotas[0].used == 1.0  # no stalled report landed late
        # each report, retried with its request_id, counts once
        for i in range(5):
            ack = stub.Report(pb.UsageReport(request_id=f"r{i}", user=pb.Entity(id="p"),
                                             model="m", cost_usd=2.0))
            assert not ack.duplicate
        hard = stub.Explain(pb.DecideRequest(user=pb.Entity(id="p"), model="m")).decision
        assert hard.quotas[0].used == 11.0


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="tollway.v1.Tollway"), timeout=5
    )
    return int(reply.status)


def _readyz(http: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{http}/readyz", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within 10s"
        time.sleep(0.05)


def test_health_follows_readiness_from_a_start_with_redis_down(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.kill()
    rules = write_rules(tmp_path, RULES)
    with tollway_serve(rules, "--store", redis_server.url) as served:
        start_line = served.wait_for_line("tollway serving")
        assert " WARNING " in start_line and "NOT READY: counter store unreachable" in start_line
        with grpc.insecure_channel(served.grpc) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            status, body = _readyz(served.http)
            assert status == 503 and body["reason"].startswith("counter store unreachable")

            redis_server.start()
            _eventually(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING)
            assert _readyz(served.http)[0] == 200
            served.wait_for_line("ready again")

            redis_server.kill()
            _eventually(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING)
            assert _readyz(served.http)[0] == 503
            line = served.wait_for_line("not ready: counter store unreachable")
            assert " WARNING " in line
        assert sum("not ready:" in line for line in served.lines) == 1  # once, not per call


def test_a_healthy_start_is_a_plain_serving_line(tmp_path: Path) -> None:
    with tollway_serve(write_rules(tmp_path, RULES)) as served:
        line = served.wait_for_line("tollway serving")
        assert " INFO " in line and "NOT READY" not in line
        with grpc.insecure_channel(served.grpc) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
