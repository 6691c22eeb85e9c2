"""The Envoy services over a real gRPC socket, message by message (no Envoy needed).

The end-to-end tests prove the wiring with a real Envoy; these pin down each phase and
each odd input: cut streams, bodiless requests, bad JSON, conflicting descriptors,
``hits_addend``, health and reflection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as authz
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from envoy_harness import RULES
from google.protobuf.wrappers_pb2 import UInt64Value
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import ServerThread

from tollway import Engine
from tollway.policy.model import QuotaStatus
from tollway.server.envoy import SERVICE_NAMES
from tollway.server.envoy.ratelimit import tightest

Stubs = tuple[Engine, Any, Any, Any, grpc.Channel]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    path = tmp_path_factory.mktemp("rules") / "envoy.rules"
    path.write_text(RULES)
    engine = Engine.from_path(path)
    server = ServerThread(engine)
    address = server.start(attribute_headers={"x-team": "team"})
    channel = grpc.insecure_channel(address)
    try:
        yield (
            engine,
            authz_grpc.AuthorizationStub(channel),
            ep_grpc.ExternalProcessorStub(channel),
            rls_grpc.RateLimitServiceStub(channel),
            channel,
        )
    finally:
        channel.close()
        server.stop()


def body_of(user: str, model: str = "openai/gpt-5", **meta: Any) -> bytes:
    tollway = json.dumps({"user": {"id": user, "metadata": meta}})
    return json.dumps({"model": model, "messages": [], "metadata": {"tollway": tollway}}).encode()


def header_map(**headers: str) -> HeaderMap:
    return HeaderMap(
        headers=[
            HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in headers.items()
        ]
    )


def reports_of(engine: Engine, user: str, n: int) -> list[Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        detail = engine.get_usage("user", user)
        if detail is not None and len(detail.recent_reports) >= n:
            return list(detail.recent_reports)
        time.sleep(0.01)
    raise AssertionError(f"{user}: fewer than {n} reports")


# -------------------------------------------------------------------- health


def test_health_and_reflection_list_the_envoy_services(stubs: Stubs) -> None:
    channel = stubs[4]
    health = health_pb2_grpc.HealthStub(channel)
    for name in SERVICE_NAMES:
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    listed = {s.name for s in answer.list_services_response.service}
    assert set(SERVICE_NAMES) <= listed
    assert SERVICE_NAMES == (
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "envoy.service.ratelimit.v3.RateLimitService",
    )


# ------------------------------------------------------------------ ext_authz


def check(
    stub: Any,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    header_map_only: bool = False,
    as_text: bool = False,
) -> authz.CheckResponse:
    http = ac.AttributeContext.HttpRequest()
    headers = {"content-type": "application/json", **(headers or {})}
    if header_map_only:
        http.header_map.CopyFrom(header_map(**headers))
    else:
        http.headers.update(headers)
    if as_text:
        http.body = body.decode()
    else:
        http.raw_body = body
    request = authz.CheckRequest(
        attributes=ac.AttributeContext(request=ac.AttributeContext.Request(http=http))
    )
    return stub.Check(request)


def denied_body(response: authz.CheckResponse) -> dict[str, Any]:
    return json.loads(response.denied_response.body)["error"]


def test_check_reads_headers_and_bodies_in_every_encoding(stubs: Stubs) -> None:
    _, stub, *_ = stubs
    for i, (header_map_only, as_text) in enumerate([(False, False), (True, False), (False, True)]):
        response = check(
            stub,
            body=body_of(f"az-enc{i}", tier="free"),
            header_map_only=header_map_only,
            as_text=as_text,
        )
        assert response.status.code == 0
        added = {h.header.key: h.header.value for h in response.ok_response.headers}
        assert added["x-tollway-model"] == "openai/gpt-4.1-mini"
        assert response.dynamic_metadata["reason"] == "ALLOWED"


def test_check_answers_unreadable_requests_with_400(stubs: Stubs) -> None:
    _, stub, *_ = stubs
    cases = [
        (b"{not json", "body: not valid JSON"),
        (b"[1, 2]", "body: must be a JSON object, got list"),
        (
            json.dumps({"model": "m", "metadata": {"tollway": "{"}}).encode(),
            "metadata.tollway: not valid JSON",
        ),
    ]
    for body, message in cases:
        response = check(stub, body=body)
        assert response.denied_response.status.code == 400
        error = denied_body(response)
        assert error["type"] == "invalid_request_error" and error["message"].startswith(message)
    too_long = check(stub, {"x-request-id": "r" * 300}, body_of("az-long"))
    assert denied_body(too_long)["param"] == "request_id"


def test_check_of_a_request_naming_no_model_is_a_400(stubs: Stubs) -> None:
    _, stub, *_ = stubs
    response = check(
        stub,
        {"content-type": "multipart/form-data; boundary=x", "x-tollway-user": "az-multi"},
        b"--x\r\n...",
    )
    assert response.denied_response.status.code == 400
    assert denied_body(response)["message"] == "model: must not be empty"
    assert denied_body(response)["param"] == "model"


# ------------------------------------------------------------------- ext_proc


def process(stub: Any, *messages: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
    return list(stub.Process(iter(messages)))


def req_headers(end: bool = False, **headers: str) -> ep.ProcessingRequest:
    headers.setdefault("content_type", "application/json")
    return ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(headers=header_map(**headers), end_of_stream=end)
    )


def req_body(body: bytes, end: bool = True) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=end))


def resp_headers(
    status: int = 200, content_type: str = "application/json", end: bool = False
) -> ep.ProcessingRequest:
    headers = header_map(**{":status": str(status), "content-type": content_type})
    return ep.ProcessingRequest(response_headers=ep.HttpHeaders(headers=headers, end_of_stream=end))


def resp_body(body: bytes, end: bool) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(response_body=ep.HttpBody(body=body, end_of_stream=end))


USAGE = b'{"usage": {"prompt_tokens": 100, "completion_tokens": 40}}'


def test_process_rewrites_the_model_and_fixes_content_length(stubs: Stubs) -> None:
    _, _, stub, *_ = stubs
    body = body_of("xp-rewrite", tier="free")
    answers = process(
        stub,
        req_headers(x_request_id="rq-1"),
        req_body(body),
        resp_headers(),
        resp_body(USAGE, True),
    )
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ]
    common = answers[1].request_body.response
    new_body = common.body_mutation.body
    assert json.loads(new_body)["model"] == "openai/gpt-4.1-mini"
    sets = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    assert sets["content-length"] == str(len(new_body))
    assert common.clear_route_cache


def test_process_reports_with_the_request_id_and_status(stubs: Stubs) -> None:
    engine, _, stub, *_ = stubs
    process(
        stub,
        req_headers(x_request_id="rq-2", x_team="search"),
        req_body(body_of("xp-report")),
        resp_headers(status=503),
        resp_body(b"{}", True),
    )
    (report,) = reports_of(engine, "xp-report", 1)
    assert (report.request_id, report.status) == (report.decision_id, "error")
    assert report.attributes == {"team": "search", "http_status": "503", "x-request-id": "rq-2"}


def test_a_recycled_request_id_does_not_make_a_duplicate_report(stubs: Stubs) -> None:
    engine, _, stub, *_ = stubs
    for _ in range(2):
        process(
            stub,
            req_headers(x_request_id="same"),
            req_body(body_of("xp-recycled")),
            resp_headers(),
            resp_body(USAGE, True),
        )
    reports = reports_of(engine, "xp-recycled", 2)
    assert [r.input_tokens for r in reports] == [100, 100]


def test_process_unchanged_model_means_no_body_mutation(stubs: Stubs) -> None:
    _, _, stub, *_ = stubs
    answers = process(stub, req_headers(), req_body(body_of("xp-same", model="m")))
    common = answers[1].request_body.response
    assert not common.HasField("body_mutation") and not common.clear_route_cache


def test_process_refuses_with_an_immediate_response_and_stops(stubs: Stubs) -> None:
    _, _, stub, *_ = stubs
    answers = process(
        stub, req_headers(), req_body(body_of("xp-no", status="suspended")), resp_headers()
    )
    assert len(answers) == 2
    immediate = answers[1].immediate_response
    assert immediate.status.code == 403
    assert json.loads(immediate.body)["error"]["message"] == "account suspended"
    sets = {h.header.key for h in immediate.headers.set_headers}
    assert {"content-type", "x-tollway-decision-id"} <= sets


def test_process_decides_a_bodiless_request_on_its_headers(stubs: Stubs) -> None:
    engine, _, stub, *_ = stubs
    answers = process(stub, req_headers(end=True, x_tollway_user="xp-get"), resp_headers(end=True))
    assert len(answers) == 1  # decided (and refused: it names no model) before any body
    immediate = answers[0].immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["param"] == "model"
    assert engine.get_usage("user", "xp-get") is None


def test_a_cut_stream_is_reported_incomplete(stubs: Stubs) -> None:
    engine, _, stub, *_ = stubs
    process(stub, req_headers(), req_body(body_of("xp-cut")))  # Envoy hangs up here
    (report,) = reports_of(engine, "xp-cut", 1)
    assert report.status == "incomplete" and report.input_tokens == 0


def test_a_stream_closed_without_end_flag_after_the_answer_is_complete(stubs: Stubs) -> None:
    engine, _, stub, *_ = stubs
    process(
        stub, req_headers(), req_body(body_of("xp-noend")), resp_headers(), resp_body(USAGE, False)
    )
    (report,) = reports_of(engine, "xp-noend", 1)
    assert (report.status, report.input_tokens, report.output_tokens) == ("success", 100, 40)


def test_a_streamed_request_body_is_gathered_before_deciding(stubs: Stubs) -> None:
    _, _, stub, *_ = stubs
    body = body_of("xp-chunks", tier="free")
    answers = process(stub, req_headers(), req_body(body[:10], False), req_body(body[10:]))
    assert not answers[1].request_body.response.HasField("header_mutation")
    assert answers[2].request_body.response.body_mutation.body


def test_an_unreadable_body_is_a_400(stubs: Stubs) -> None:
    _, _, stub, *_ = stubs
    answers = process(stub, req_headers(), req_body(b'{"model": 5}'))
    assert answers[1].immediate_response.status.code == 400
    assert json.loads(answers[1].immediate_response.body)["error"]["param"] == "model"


def test_sse_usage_split_anywhere_is_found(stubs: Stubs) -> None:
    engine, _, stub, *_ = stubs
    events = (
        b"".join(
            b"data: " + json.dumps(e).encode() + b"\n\n"
            for e in [
                {"choices": [{"delta": {"content": "hi"}}], "usage": None},
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 7,
                        "completion_tokens": 3,
                        "prompt_tokens_details": {"cached_tokens": 2},
                    },
                },
            ]
        )
        + b"data: [DONE]\n\n"
    )
    chunks = [events[i : i + 7] for i in range(0, len(events), 7)]
    messages = [
        req_headers(),
        req_body(body_of("xp-sse")),
        resp_headers(content_type="text/event-stream"),
    ]
    messages += [resp_body(c, i == len(chunks) - 1) for i, c in enumerate(chunks)]
    answers = process(stub, *messages)
    assert len(answers) == 3 + len(chunks)
    (report,) = reports_of(engine, "xp-sse", 1)
    assert (report.input_tokens, report.output_tokens) == (7, 3)
    # (7-2) * 2 + 2 * 2 + 3 * 8 per 1M on "openai/*" (no cached price: input price)
    assert report.cost_usd == pytest.approx((5 * 2 + 2 * 2 + 3 * 8) / 1e6)


# ----------------------------------------------------------------- rate limit


def rl_request(
    *descriptors: dict[str, str],
    hits: int = 0,
    domain: str = "openai",
    descriptor_hits: list[int | None] | None = None,
) -> rls.RateLimitRequest:
    out = []
    for i, entries in enumerate(descriptors):
        d = rl.RateLimitDescriptor(
            entries=[rl.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()]
        )
        if descriptor_hits and descriptor_hits[i] is not None:
            d.hits_addend.CopyFrom(UInt64Value(value=descriptor_hits[i]))
        out.append(d)
    return rls.RateLimitRequest(domain=domain, descriptors=out, hits_addend=hits)


def test_rate_limit_merges_descriptors_into_one_decision(stubs: Stubs) -> None:
    engine, _, _, stub, _ = stubs
    engine.upsert_entity("user", "rl-merge", {"tier": "free"})
    answer = stub.ShouldRateLimit(
        rl_request(
            {"user": "rl-merge"}, {"user": "rl-merge", "model": "openai/gpt-5", "team": "search"}
        )
    )
    assert answer.overall_code == rls.RateLimitResponse.OK
    assert len(answer.statuses) == 2
    status = answer.statuses[0]
    assert (status.current_limit.name, status.current_limit.requests_per_unit) == ("hourly", 3)
    assert status.current_limit.unit == rls.RateLimitResponse.RateLimit.HOUR
    assert status.limit_remaining == 2
    added = {h.key: h.value for h in answer.request_headers_to_add}
    assert added["x-tollway-model"] == "openai/gpt-4.1-mini"
    assert added["x-tollway-checks"] == "pii-scan"


def test_hits_addend_counts_that_many_requests_and_zero_consumes_nothing(stubs: Stubs) -> None:
    engine, _, _, stub, _ = stubs
    engine.upsert_entity("user", "rl-hits", {"tier": "free"})
    peek = stub.ShouldRateLimit(rl_request({"user": "rl-hits", "model": "m"}, descriptor_hits=[0]))
    assert peek.overall_code == rls.RateLimitResponse.OK and peek.statuses[0].limit_remaining == 3
    answer = stub.ShouldRateLimit(rl_request({"user": "rl-hits", "model": "m"}, hits=2))
    assert answer.statuses[0].limit_remaining == 1
    over = stub.ShouldRateLimit(rl_request({"user": "rl-hits", "model": "m"}, descriptor_hits=[2]))
    assert over.overall_code == rls.RateLimitResponse.OVER_LIMIT
    assert over.statuses[0].code == rls.RateLimitResponse.OVER_LIMIT
    assert over.statuses[0].duration_until_reset.seconds > 3000
    error = json.loads(over.raw_body)["error"]
    assert error["code"] == "quota_exceeded"
    headers = {h.key: h.value for h in over.response_headers_to_add}
    assert int(headers["retry-after"]) > 3000 and headers["content-type"] == "application/json"


def test_conflicting_descriptors_are_refused_as_a_bad_request(stubs: Stubs) -> None:
    _, _, _, stub, _ = stubs
    answer = stub.ShouldRateLimit(rl_request({"user": "a"}, {"user": "b"}))
    assert answer.overall_code == rls.RateLimitResponse.OVER_LIMIT
    error = json.loads(answer.raw_body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "descriptors[1].user: 'b' conflicts with 'a'"


def test_the_domain_is_an_attribute(tmp_path: Path) -> None:
    engine = Engine.from_text('rule d { when request.domain == "blocked"\n deny "no" }')
    server = ServerThread(engine)
    channel = grpc.insecure_channel(server.start())
    try:
        stub = rls_grpc.RateLimitServiceStub(channel)
        assert stub.ShouldRateLimit(
            rl_request({"x": "1", "model": "m"}, domain="blocked")
        ).overall_code == (rls.RateLimitResponse.OVER_LIMIT)
        assert stub.ShouldRateLimit(
            rl_request({"x": "1", "model": "m"}, domain="fine")
        ).overall_code == (rls.RateLimitResponse.OK)
    finally:
        channel.close()
        server.stop()


def test_tightest_prefers_the_longest_wait_then_the_least_left() -> None:
    def q(
        name: str, limit: float, remaining: float, exceeded: bool = False, wait: float = 0.0
    ) -> QuotaStatus:
        return QuotaStatus(
            name, "requests", "user", "k", limit, limit - remaining, remaining, exceeded, wait
        )

    assert tightest(()) is None
    assert tightest((q("a", 10, 5), q("b", 100, 20), q("c", 0, 0))).name == "b"  # type: ignore[union-attr]
    assert tightest((q("a", 10, 0, True, 5), q("b", 10, 0, True, 50))).name == "b"  # type: ignore[union-attr]


@pytest.mark.redis
def test_an_unreachable_store_is_a_503_where_quotas_fail_closed(redis_server: Any) -> None:
    engine = Engine.from_text(
        "quota strict limits requests to 10 per 1m for each user on_store_error deny\n"
        "rule r { enforce strict }",
        store=redis_server.url,
    )
    server = ServerThread(engine)
    channel = grpc.insecure_channel(server.start())
    try:
        stub = authz_grpc.AuthorizationStub(channel)
        body = json.dumps({"model": "m"}).encode()
        assert check(stub, {"x-tollway-user": "down"}, body).status.code == 0
        redis_server.kill()
        response = check(stub, {"x-tollway-user": "down"}, body)
        assert response.denied_response.status.code == 503
        assert denied_body(response)["code"] == "store_unavailable"
    finally:
        channel.close()
        server.stop()
        engine.close()


def test_serve_refuses_a_bad_attribute_header(tmp_path: Path) -> None:
    rules = tmp_path / "r.rules"
    rules.write_text("default allow\n")
    for args, env in (
        (["--attribute-header", "x-team"], {}),
        ([], {"TOLLWAY_ATTRIBUTE_HEADER": "x-team=team,x-model=model"}),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "tollway", "serve", "--rules", str(rules), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}, **env},
        )
        assert out.returncode == 2, out.stderr
        assert "attribute-header" in out.stderr and "Traceback" not in out.stderr


def cancelled_after(stub: Any, *messages: ep.ProcessingRequest) -> None:
    """Send ``messages``, read their answers, then cancel: a client that hung up."""
    release = threading.Event()

    def requests() -> Iterator[ep.ProcessingRequest]:
        yield from messages
        release.wait(10)

    call = stub.Process(requests())
    for _ in messages:
        next(call)
    call.cancel()
    release.set()


@pytest.mark.parametrize(("done", "status"), [(True, "success"), (False, "incomplete")])
def test_a_stream_cut_after_done_was_complete(stubs: Stubs, done: bool, status: str) -> None:
    engine, _, stub, *_ = stubs
    user = f"xp-cancel-{done}"
    events = b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}\n\n'
    if done:
        events += b"data: [DONE]\n\n"
    cancelled_after(
        stub,
        req_headers(),
        req_body(body_of(user)),
        resp_headers(content_type="text/event-stream"),
        resp_body(events, False),
    )
    (report,) = reports_of(engine, user, 1)
    assert (report.status, report.input_tokens, report.output_tokens) == (status, 4, 2)


@pytest.mark.redis
def test_a_long_answer_on_redis_is_still_reported(redis_url: str, redis_prefix: str) -> None:
    """The store's time budget (0.1 s) runs per phase, not from the start of the exchange."""
    engine = Engine.from_text(RULES, store=redis_url, key_prefix=redis_prefix)
    server = ServerThread(engine)
    channel = grpc.insecure_channel(server.start())
    try:
        stub = ep_grpc.ExternalProcessorStub(channel)

        def exchange() -> Iterator[ep.ProcessingRequest]:
            yield req_headers()
            yield req_body(body_of("xp-slow", model="openai/gpt-4.1"))
            time.sleep(0.3)  # the model takes its time: longer than the store's budget
            yield resp_headers()
            yield resp_body(USAGE, True)

        answers = list(stub.Process(exchange()))
        assert len(answers) == 4
        (report,) = reports_of(engine, "xp-slow", 1)
        assert (report.status, report.input_tokens, report.output_tokens) == ("success", 100, 40)
    finally:
        channel.close()
        server.stop()
        engine.close()


# ------------------------------------------------------- any input, any order

_BODIES = st.sampled_from(
    [
        b"",
        b"{not json",
        b'{"model": "openai/gpt-5", "messages": []}',
        body_of("xp-any", tier="free"),
        body_of("xp-any-2", status="suspended"),
        USAGE,
        b'data: {"usage": {"prompt_tokens": 1}}\n\ndata: [DONE]\n\n',
        b"\xff\xfe\x00garbage",
    ]
)
_PHASES = st.sampled_from(
    [
        "request_headers",
        "request_body",
        "request_trailers",
        "response_headers",
        "response_body",
        "response_trailers",
        "none",
    ]
)


@st.composite
def _messages(draw: st.DrawFn) -> list[ep.ProcessingRequest]:
    out = []
    for phase in draw(st.lists(_PHASES, max_size=8)):
        end = draw(st.booleans())
        if phase in ("request_headers", "response_headers"):
            pairs = draw(
                st.dictionaries(
                    st.sampled_from(
                        [
                            ":status",
                            "content-type",
                            "x-tollway-user",
                            "x-request-id",
                            "content-encoding",
                            "x-tollway-user-metadata",
                        ]
                    ),
                    st.sampled_from(
                        [
                            "200",
                            "abc",
                            "application/json",
                            "text/event-stream",
                            "gzip",
                            "br",
                            "{}",
                            "[1]",
                            "u",
                        ]
                    ),
                    max_size=4,
                )
            )
            headers = ep.HttpHeaders(headers=header_map(**pairs), end_of_stream=end)
            out.append(ep.ProcessingRequest(**{phase: headers}))
        elif phase in ("request_body", "response_body"):
            body = ep.HttpBody(body=draw(_BODIES), end_of_stream=end)
            out.append(ep.ProcessingRequest(**{phase: body}))
        elif phase != "none":
            out.append(ep.ProcessingRequest(**{phase: ep.HttpTrailers()}))
        else:
            out.append(ep.ProcessingRequest())
    return out


@settings(max_examples=60, deadline=None)
@given(_messages())
def test_process_answers_any_sequence_of_phases(stubs: Stubs, messages: list[Any]) -> None:
    _, _, stub, *_ = stubs
    answers = process(stub, *messages)  # a gRPC error (INTERNAL…) would raise here
    expected = [m.WhichOneof("request") for m in messages if m.WhichOneof("request")]
    if answers and answers[-1].HasField("immediate_response"):
        assert len(answers) <= len(expected)
        json.loads(answers[-1].immediate_response.body)  # an OpenAI-shaped error
    else:
        assert [a.WhichOneof("response") for a in answers] == expected


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "x-tollway-user",
                "x-tollway-group",
                "x-tollway-user-metadata",
                "content-type",
                "x-team",
                "x-request-id",
            ]
        ),
        st.text(max_size=20),
        max_size=5,
    ),
    _BODIES,
)
def test_check_answers_any_request(stubs: Stubs, headers: dict[str, str], body: bytes) -> None:
    _, stub, *_ = stubs
    response = check(stub, headers, body)  # never a gRPC error
    if response.status.code != 0:
        assert response.denied_response.status.code in (400, 403, 429, 503)
        assert set(denied_body(response)) == {"message", "type", "code", "param"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["user", "group", "model", "team"]),
            st.text(min_size=1, max_size=10),
            max_size=3,
        ),
        max_size=3,
    ),
    st.integers(0, 2**32 - 1),
)
def test_rate_limit_answers_any_descriptors(
    stubs: Stubs, descriptors: list[dict[str, str]], hits: int
) -> None:
    _, _, _, stub, _ = stubs
    answer = stub.ShouldRateLimit(rl_request(*descriptors, hits=hits))
    assert len(answer.statuses) == len(descriptors)
    if answer.overall_code == rls.RateLimitResponse.OVER_LIMIT:
        assert set(json.loads(answer.raw_body)["error"]) == {"message", "type", "code", "param"}
