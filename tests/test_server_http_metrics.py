"""The HTTP port (metrics, health, readiness, routing) and the Prometheus metrics' names and labels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from conftest import RedisServer
from prometheus_client.parser import text_string_to_metric_families
from server_harness import HttpPort, free_user, http_serving, serving, write_rules

from tollway.policy.engine import Engine
from tollway.server.http_errors import HttpError, json_response
from tollway.server.http_ops import Readiness
from tollway.server.http_routes import add_route, query_params
from tollway.server.metrics import Metrics
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

DOCUMENTED_METRICS = {
    "tollway_decisions", "tollway_decide_seconds", "tollway_rule_matches",
    "tollway_shadow_matches", "tollway_quota_exceeded", "tollway_routes", "tollway_checks",
    "tollway_reports", "tollway_usage_tokens", "tollway_usage_cost_usd", "tollway_store_errors",
    "tollway_store_seconds", "tollway_ruleset_info", "tollway_ruleset_reloads",
    "tollway_ruleset_rules", "tollway_usage_backlog", "tollway_usage_dropped",
    "tollway_usage_spiking", "tollway_balance_low",
}


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@dataclass
class Stack:
    stub: pb_grpc.TollwayStub
    engine: Engine
    metrics: Metrics
    readiness: Readiness
    http: HttpPort

    def url(self, path: str) -> str:
        return self.http.url(path)


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    metrics = Metrics()
    with serving(write_rules(tmp_path), metrics=metrics) as (stub, server, _):
        engine = server.engine
        metrics.ruleset_loaded(engine.ruleset)
        # on the gRPC server's own event loop, as `tollway serve` runs it
        with http_serving(engine, metrics=metrics, loop=server) as http:
            yield Stack(stub, engine, metrics, http.readiness, http)


def _traffic(stub: pb_grpc.TollwayStub) -> None:
    vip = pb.Entity(id="secret-user-42")
    vip.metadata.update({"categories": ["vip"], "tier": "free"})
    for _ in range(4):  # the 4th exceeds per_user
        stub.Decide(pb.DecideRequest(user=vip, group=None, model="small"))
    group = pb.Entity(id="secret-group-7")
    group.metadata.update({"credits": 5})
    stub.Decide(pb.DecideRequest(user=free_user("secret-user-43"), group=group, model="m"))
    stub.Report(pb.UsageReport(
        request_id="r1", user=pb.Entity(id="secret-user-42"), model="big-model",
        input_tokens=10, output_tokens=20, cost_usd=0.25, status="success",
    ))
    stub.Report(pb.UsageReport(request_id="r1", user=pb.Entity(id="secret-user-42"), model="x"))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_names_values_and_no_ids(stack: Stack) -> None:
    _traffic(stack.stub)
    status, ctype, text = _get(stack.url("/metrics"))
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(text)}
    # tollway_store_errors has no sample yet, but its HELP/TYPE lines are there
    assert DOCUMENTED_METRICS - {"tollway_store_errors"} <= families
    assert "# TYPE tollway_store_errors_total counter" in text or "tollway_store_errors" in text
    assert "secret-user" not in text and "secret-group" not in text

    s = _samples(text)
    assert s[("tollway_decisions_total", (("reason", "ALLOWED"), ("routed", "true")))] == 3
    assert s[("tollway_decisions_total", (("reason", "QUOTA_EXCEEDED"), ("routed", "true")))] == 1
    assert s[("tollway_decide_seconds_count", ())] == 5
    assert s[("tollway_rule_matches_total", (("rule", "vip"),))] == 4
    assert s[("tollway_shadow_matches_total", (("rule", "trial"),))] == 5
    assert s[("tollway_quota_exceeded_total", (("quota", "per_user"),))] == 1
    routes = ("tollway_routes_total", (("from_model", "small"), ("to_model", "big-model")))
    assert s[routes] == 3  # the denied 4th request is not counted as routed
    assert s[("tollway_checks_total", (("check", "pii-scan"),))] == 3  # allowed ones only
    assert s[("tollway_reports_total", (("status", "success"),))] == 2
    assert s[("tollway_usage_tokens_total", (("model", "big-model"),))] == 30  # duplicate not counted
    assert s[("tollway_usage_cost_usd_total", (("model", "big-model"),))] == 0.25
    assert s[("tollway_store_seconds_count", (("op", "consume"), ("store", "memory")))] >= 4
    version = stack.engine.ruleset.version
    assert s[("tollway_ruleset_info", (("version", version),))] == 1
    assert s[("tollway_ruleset_rules", ())] == 5
    assert s[("tollway_ruleset_reloads_total", (("result", "error"),))] == 0


def test_ruleset_info_shows_only_the_current_version(tmp_path: Path) -> None:
    metrics = Metrics()
    first = Engine.from_path(write_rules(tmp_path, "default allow\n", "a.rules"))
    second = Engine.from_path(write_rules(tmp_path, "default deny \"no\"\n", "b.rules"))
    metrics.ruleset_loaded(first.ruleset)
    metrics.ruleset_loaded(second.ruleset)
    info = [
        s for f in text_string_to_metric_families(metrics.exposition().decode())
        if f.name == "tollway_ruleset_info" for s in f.samples
    ]
    assert [s.labels["version"] for s in info] == [second.ruleset.version]
    assert first.ruleset.version != second.ruleset.version


def test_health_readiness_and_routing(stack: Stack) -> None:
    status, _, body = _get(stack.url("/healthz"))
    assert status == 200 and body.strip() == "ok"
    status, ctype, body = _get(stack.url("/readyz"))
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {
        "ready": True, "reason": "ready", "ruleset_version": stack.engine.ruleset.version
    }
    status, ctype, body = _get(stack.url("/nope"))
    assert (status, ctype) == (404, "application/json")
    assert json.loads(body) == {"error": {"code": "not_found", "message": "no such path"}}
    req = urllib.request.Request(stack.url("/metrics"), method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405
    assert err.value.headers["Allow"] == "GET,HEAD"
    assert json.loads(err.value.read())["error"]["code"] == "method_not_allowed"

    stack.readiness.drain()
    status, _, body = _get(stack.url("/readyz"))
    assert status == 503 and json.loads(body) == {"ready": False, "reason": "shutting down"}
    assert _get(stack.url("/healthz"))[0] == 200  # alive while draining


def test_readiness_follows_a_real_redis_going_down_and_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    engine = Engine.from_path(write_rules(tmp_path), store=redis_server.url, key_prefix="rz:")
    readiness = Readiness(engine)
    try:
        assert readiness.check() == (True, "ready")
        redis_server.kill()
        ok, reason = readiness.check()
        assert not ok and reason == "counter store unreachable"  # no host, port or driver text
        redis_server.start()
        assert readiness.check() == (True, "ready")
    finally:
        engine.close()


def _things(app: web.Application, engine: Engine) -> None:
    """A route module as another part of tollway would write one."""

    async def thing(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if ident == "bad":
            raise ValueError("id: bad")
        if ident == "gone":
            raise HttpError(404, "no thing 'gone'")
        if ident == "boom":
            raise RuntimeError("secret detail")
        q = query_params(request).get("q", ["none"])[0]
        return json_response({"id": ident, "q": q})

    add_route(app, "GET", "/v1/things/{id}", thing)


def test_route_modules_add_routes_and_share_the_error_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = type(os)("things_module")
    module.install = _things  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "things_module", module)
    engine = Engine.from_path(write_rules(tmp_path))
    try:
        with http_serving(engine, route_modules=("things_module",)) as http:
            status, _, body = _get(http.url("/v1/things/a%20b?q=1"))
            assert status == 200 and json.loads(body) == {"id": "a b", "q": "1"}
            status, _, body = _get(http.url("/v1/things/bad"))
            assert status == 400
            assert json.loads(body) == {"error": {"code": "bad_request", "message": "id: bad"}}
            status, _, body = _get(http.url("/v1/things/gone"))
            assert status == 404 and json.loads(body)["error"]["message"] == "no thing 'gone'"
            status, _, body = _get(http.url("/v1/things/boom"))
            assert status == 500 and "secret" not in body
            assert json.loads(body) == {"error": {"code": "internal", "message": "internal error"}}
            assert _get(http.url("/v1/things"))[0] == 404
    finally:
        engine.close()


def test_promtool_accepts_the_exposition(stack: Stack) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (Debian package `prometheus`)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    _traffic(stack.stub)
    _, _, text = _get(stack.url("/metrics"))
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_usage_pipeline_metrics() -> None:
    import asyncio
    import time

    from tollway.policy.ingest import Ingester
    from tollway.policy.stores.memory import MemoryCounterStore
    from tollway.policy.usage import UsageEvent
    from tollway.server.serve import _watch_spikes

    metrics = Metrics()
    store = MemoryCounterStore(max_backlog=2)
    engine = Engine.from_text("default allow\nrule all { allow }\n", store=store,
                              observer=metrics, ingest=False)
    try:
        for _ in range(5):
            assert engine.decide({"model": "m", "user": {"id": "u"}}).allowed
        now = [0.0]
        ingester = Ingester(store.events, engine.usage_db, observer=metrics,  # type: ignore[arg-type]
                            clock=lambda: now[0])
        assert ingester.step() == 2
        assert _samples(metrics.exposition().decode())[("tollway_usage_backlog", ())] == 2
        now[0] = 1.0
        ingester.step()  # a second later: housekeeping publishes the backlog again
        s = _samples(metrics.exposition().decode())
        assert s[("tollway_usage_dropped_total", ())] == 3
        assert s[("tollway_usage_backlog", ())] == 0
        assert engine.usage_db is not None
        engine.usage_db.write([UsageEvent(time=time.time(), request_id="big", user_id="whale",
                                          cost_usd=40.0)])

        async def one_round() -> None:
            task = asyncio.create_task(_watch_spikes(engine, metrics))
            await asyncio.sleep(0.5)
            task.cancel()

        asyncio.run(one_round())
        s = _samples(metrics.exposition().decode())
        assert s[("tollway_usage_spiking", (("kind", "users"), ("metric", "cost")))] == 1
        assert s[("tollway_usage_spiking", (("kind", "users"), ("metric", "requests")))] == 2
        assert s[("tollway_usage_spiking", (("kind", "groups"), ("metric", "cost")))] == 0
    finally:
        engine.close()


def test_balance_low_counts_the_entities_under_warn_below() -> None:
    metrics = Metrics()
    engine = Engine.from_text(
        "balance credits of cost for each group warn below 1\n"
        "balance plain of cost for each user\n"
        "rule all { enforce credits, plain }\n", observer=metrics)
    try:
        def low() -> float:
            return _samples(metrics.exposition().decode())[
                ("tollway_balance_low", (("balance", "credits"),))]

        for g in ("a", "b", "c"):
            engine.credit("group", g, "credits", 1.5, idempotency_key="k")
        engine.credit("user", "u", "plain", 100, idempotency_key="k")
        assert low() == 0

        def spend(group: str) -> dict[str, str]:
            d = engine.decide({"user": "u", "group": group, "model": "m",
                               "estimate": {"cost_usd": 0.4}})
            assert d.allowed
            return d.annotations

        assert "balance_low" not in spend("a")  # 1.1 left
        assert spend("a") == {"balance_low": "credits"}  # 0.7 left
        assert spend("b") == {}
        assert spend("b") == {"balance_low": "credits"}
        assert low() == 2
        engine.credit("group", "a", "credits", 5, idempotency_key="top-up")
        assert low() == 1  # the credit lifted a out of it
        assert ("tollway_balance_low", (("balance", "plain"),)) not in _samples(
            metrics.exposition().decode())  # no warn below: not counted
    finally:
        engine.close()
