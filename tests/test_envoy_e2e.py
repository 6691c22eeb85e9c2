"""End to end: the official ``openai`` SDK -> a real Envoy running each example config ->
``tollway serve`` (ext_authz, ext_proc, rate limit) -> a fake OpenAI upstream.

One ``tollway serve``, one upstream and one Envoy per mode serve the whole session; each
test uses its own user ids, so the shared counters never meet. Without a runnable Envoy
the tests skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from docs_blocks import blocks
from envoy_harness import MODES, RULES, EnvoyProcess, envoy_binary, start_envoy
from fake_openai import USAGE, FakeOpenAI
from server_harness import Served, tollway_serve

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

openai = pytest.importorskip("openai", reason="the openai SDK is part of the test extra")

ROOT = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "hi"}]
# 20 prompt tokens (8 cached) and 5 completion tokens per answer, at the mini's prices
MINI_COST = (12 * 0.4 + 8 * 0.1 + 5 * 1.6) / 1e6
GPT5_COST = (12 * 2 + 8 * 2 + 5 * 8) / 1e6  # "openai/*" has no cached_input price


@pytest.fixture(scope="session")
def envoy_exe() -> str:
    exe, why = envoy_binary()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI is set, so this is an error, not a skip)")
        pytest.skip(why)
    return exe


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    rules = tmp_path_factory.mktemp("envoy-rules") / "envoy.rules"
    rules.write_text(RULES)
    with tollway_serve(rules, "--attribute-header", "x-team=team") as server:
        yield server


@pytest.fixture(scope="session")
def envoys(
    envoy_exe: str,
    served: Served,
    upstream: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], EnvoyProcess]]:
    """``envoys(mode)``: the Envoy of that mode, started on first use."""
    directory = tmp_path_factory.mktemp("envoy")
    running: dict[str, EnvoyProcess] = {}
    tollway_port = int(served.grpc.rsplit(":", 1)[1])

    def get(mode: str) -> EnvoyProcess:
        if mode not in running:
            running[mode] = start_envoy(
                envoy_exe, mode, directory, tollway=tollway_port, upstream=upstream.port
            )
        return running[mode]

    yield get
    for envoy in running.values():
        envoy.stop()


@pytest.fixture(scope="session")
def tollway(served: Served) -> Iterator[pb_grpc.TollwayStub]:
    channel = grpc.insecure_channel(served.grpc)
    yield pb_grpc.TollwayStub(channel)
    channel.close()


def client(envoy: EnvoyProcess, **headers: str) -> Any:
    return openai.OpenAI(
        base_url=envoy.base_url, api_key="sk-test", max_retries=0, default_headers=headers
    )


def as_metadata(user: str, **metadata: Any) -> dict[str, str]:
    return {"tollway": json.dumps({"user": {"id": user, "metadata": metadata}})}


def usage_of(stub: pb_grpc.TollwayStub, user: str, requests: int) -> pb.UsageRecord:
    """The user's usage once ``requests`` requests are reported (reports land just after
    the answer's last byte, so they are awaited, briefly)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            detail = stub.GetUsage(pb.GetUsageRequest(user_id=user))  # one read: one snapshot
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        else:
            record, settled = detail.usage, len(detail.recent_reports)
            if (record.request_count >= requests and settled >= requests) or (
                time.monotonic() > deadline
            ):
                return record
        time.sleep(0.02)


# ------------------------------------------------------------------- ext_proc


def test_ext_proc_routes_a_free_user_and_the_upstream_sees_the_routed_model(
    envoys: Callable[[str], EnvoyProcess], upstream: FakeOpenAI
) -> None:
    sdk = client(envoys("ext_proc"))
    raw = sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-5", messages=HI, metadata=as_metadata("xp-route", tier="free")
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from the fake upstream"
    seen = upstream.last()
    assert seen.model == "openai/gpt-4.1-mini"
    assert seen.headers["x-tollway-model"] == "openai/gpt-4.1-mini"
    # the rewritten body arrived whole: its length is what content-length said
    assert seen.body["messages"] == HI
    assert raw.headers["x-tollway-decision-id"] == seen.headers["x-tollway-decision-id"]


def test_ext_proc_reports_tokens_and_cost_of_plain_and_streamed_answers(
    envoys: Callable[[str], EnvoyProcess], tollway: pb_grpc.TollwayStub
) -> None:
    sdk = client(envoys("ext_proc"))
    meta = as_metadata("xp-usage", tier="free")
    sdk.chat.completions.create(model="openai/gpt-5", messages=HI, metadata=meta)
    record = usage_of(tollway, "xp-usage", 1)
    assert (record.input_tokens, record.output_tokens) == (20, 5)
    assert record.total_cost == pytest.approx(MINI_COST)

    stream = sdk.chat.completions.create(
        model="openai/gpt-5",
        messages=HI,
        metadata=meta,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake upstream"
    )
    assert chunks[-1].usage.prompt_tokens == USAGE["prompt_tokens"]
    record = usage_of(tollway, "xp-usage", 2)
    assert (record.input_tokens, record.output_tokens) == (40, 10)
    assert record.total_cost == pytest.approx(2 * MINI_COST)
    detail = tollway.GetUsage(pb.GetUsageRequest(user_id="xp-usage"))
    assert {r.status for r in detail.recent_reports} == {"success"}
    assert all(r.model == "openai/gpt-4.1-mini" for r in detail.recent_reports)


def test_ext_proc_unrouted_models_are_priced_by_their_own_pattern(
    envoys: Callable[[str], EnvoyProcess], tollway: pb_grpc.TollwayStub, upstream: FakeOpenAI
) -> None:
    client(envoys("ext_proc")).chat.completions.create(
        model="openai/gpt-5", messages=HI, metadata=as_metadata("xp-pro", tier="pro")
    )
    assert upstream.last().model == "openai/gpt-5"
    assert usage_of(tollway, "xp-pro", 1).total_cost == pytest.approx(GPT5_COST)


def test_ext_proc_bad_metadata_is_a_bad_request_naming_the_param(
    envoys: Callable[[str], EnvoyProcess],
) -> None:
    metadata = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(openai.BadRequestError) as caught:
        client(envoys("ext_proc")).chat.completions.create(
            model="m", messages=HI, metadata=metadata
        )
    assert caught.value.param == "metadata"
    assert "17 keys is over OpenAI's limit of 16" in caught.value.message


def test_one_user_from_metadata_user_field_and_headers_is_one_entity(
    envoys: Callable[[str], EnvoyProcess], tollway: pb_grpc.TollwayStub
) -> None:
    envoy = envoys("ext_proc")
    plain = client(envoy)
    plain.chat.completions.create(model="m", messages=HI, metadata=as_metadata("xp-same"))
    plain.chat.completions.create(model="m", messages=HI, user="xp-same")
    plain.chat.completions.create(model="m", messages=HI, safety_identifier="xp-same")
    client(envoy, **{"x-tollway-user": "xp-same"}).chat.completions.create(model="m", messages=HI)
    assert usage_of(tollway, "xp-same", 4).request_count == 4


def test_decision_headers_reach_the_upstream_and_forged_ones_do_not(
    envoys: Callable[[str], EnvoyProcess], upstream: FakeOpenAI
) -> None:
    for mode in ("ext_proc", "ext_authz"):
        forged = {
            "x-tollway-checks": "none",
            "x-tollway-annotation-team": "forged",
            "x-tollway-annotation-admin": "yes",
        }
        sdk = client(envoys(mode), **forged, **{"x-team": "search"})
        sdk.chat.completions.create(model="m", messages=HI, user=f"{mode}-headers")
        headers = upstream.last().headers
        assert headers["x-tollway-checks"] == "pii-scan", mode
        assert headers["x-tollway-annotation-team"] == "search", mode
        assert "x-tollway-annotation-admin" not in headers, mode

        plain = client(envoys(mode), **{"x-tollway-checks": "forged"})
        plain.chat.completions.create(model="m", messages=HI, user=f"{mode}-plain")
        assert "x-tollway-checks" not in upstream.last().headers, mode


# --------------------------------------------------------- every mode refuses


@pytest.mark.parametrize("mode", MODES)
def test_the_fourth_request_of_three_per_hour_is_a_rate_limit_error(
    mode: str, envoys: Callable[[str], EnvoyProcess], tollway: pb_grpc.TollwayStub
) -> None:
    user = f"{mode}-quota"
    envoy = envoys(mode)
    if mode == "ratelimit":  # no body: the identity is in headers, metadata stored ahead
        tollway.UpsertEntity(pb.UpsertEntityRequest(kind="user", id=user))
        entity = pb.UpsertEntityRequest(kind="user", id=user)
        entity.metadata.update({"tier": "free"})
        tollway.UpsertEntity(entity)
        sdk = client(envoy, **{"x-tollway-user": user, "x-model": "openai/gpt-5"})
        kwargs: dict[str, Any] = {}
    else:
        sdk = client(envoy)
        kwargs = {"metadata": as_metadata(user, tier="free")}
    for _ in range(3):
        sdk.chat.completions.create(model="openai/gpt-5", messages=HI, **kwargs)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="openai/gpt-5", messages=HI, **kwargs)
    err = caught.value
    assert re.search(r"quota exceeded: hourly \(3/3 requests, retry in \d+s\)", err.message)
    assert err.code == "quota_exceeded"
    retry_after = int(err.response.headers["retry-after"])
    assert 3000 < retry_after <= 3700
    assert err.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("mode", ["ext_authz", "ext_proc"])
def test_a_suspended_user_is_permission_denied(
    mode: str, envoys: Callable[[str], EnvoyProcess]
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(envoys(mode)).chat.completions.create(
            model="m", messages=HI, metadata=as_metadata(f"{mode}-bad", status="suspended")
        )
    assert caught.value.message.endswith("account suspended")
    assert caught.value.code == "denied_by_rule"


def test_rate_limit_mode_refuses_a_suspended_user_with_429_and_the_reason(
    envoys: Callable[[str], EnvoyProcess], tollway: pb_grpc.TollwayStub
) -> None:
    entity = pb.UpsertEntityRequest(kind="user", id="rl-bad")
    entity.metadata.update({"status": "suspended"})
    tollway.UpsertEntity(entity)
    with pytest.raises(openai.RateLimitError) as caught:
        client(
            envoys("ratelimit"), **{"x-tollway-user": "rl-bad", "x-model": "m"}
        ).chat.completions.create(model="m", messages=HI)
    assert caught.value.message.endswith("account suspended")
    assert caught.value.code == "denied_by_rule"


def test_rate_limit_mode_passes_the_decision_and_x_ratelimit_headers(
    envoys: Callable[[str], EnvoyProcess], tollway: pb_grpc.TollwayStub, upstream: FakeOpenAI
) -> None:
    entity = pb.UpsertEntityRequest(kind="user", id="rl-ok")
    entity.metadata.update({"tier": "free"})
    tollway.UpsertEntity(entity)
    sdk = client(
        envoys("ratelimit"),
        **{"x-tollway-user": "rl-ok", "x-model": "openai/gpt-5", "x-team": "search"},
    )
    raw = sdk.chat.completions.with_raw_response.create(model="openai/gpt-5", messages=HI)
    headers = upstream.last().headers
    assert headers["x-tollway-model"] == "openai/gpt-4.1-mini"
    assert headers["x-tollway-checks"] == "pii-scan"
    assert raw.headers["x-tollway-decision-id"] == headers["x-tollway-decision-id"]
    # the tightest quota: hourly, 3 per hour, 2 left
    assert raw.headers["x-ratelimit-limit"].startswith("3, 3;w=3600")
    assert raw.headers["x-ratelimit-remaining"] == "2"
    assert 0 < int(raw.headers["x-ratelimit-reset"]) <= 3700


def test_rate_limit_mode_refuses_a_request_naming_no_model(
    envoys: Callable[[str], EnvoyProcess],
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(envoys("ratelimit"), **{"x-tollway-user": "rl-nomodel"}).chat.completions.create(
            model="m", messages=HI
        )
    assert caught.value.code == "invalid_request"
    assert caught.value.message.endswith("model: must not be empty")


@pytest.mark.parametrize("mode", MODES)
def test_listing_models_does_not_ask_tollway(
    mode: str, envoys: Callable[[str], EnvoyProcess], served: Served
) -> None:
    import urllib.error
    import urllib.request

    # the upstream has no /v1/models: its 404 (not tollway's 400) proves Envoy let it by
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(envoys(mode).base_url + "/models", timeout=10)
    assert caught.value.code == 404
    assert b"model: must not be empty" not in caught.value.read()


def test_ext_authz_passes_the_routed_model_in_a_header_only(
    envoys: Callable[[str], EnvoyProcess], upstream: FakeOpenAI, tollway: pb_grpc.TollwayStub
) -> None:
    client(envoys("ext_authz")).chat.completions.create(
        model="openai/gpt-5", messages=HI, metadata=as_metadata("az-route", tier="free")
    )
    seen = upstream.last()
    assert seen.headers["x-tollway-model"] == "openai/gpt-4.1-mini"
    assert seen.model == "openai/gpt-5"  # ext_authz cannot rewrite a body
    assert usage_of(tollway, "az-route", 1).request_count == 1


ENVOY_URL = "http://127.0.0.1:10000/v1"  # where the docs' examples expect Envoy


@pytest.mark.parametrize("page", ["docs/gateways.md", "README.md"])
def test_the_sdk_examples_of_the_docs_run_through_envoy(
    page: str, envoys: Callable[[str], EnvoyProcess], upstream: FakeOpenAI
) -> None:
    """The docs' Python blocks that talk to Envoy (marked no-run for tests/test_docs.py)."""
    online = [b for b in blocks(ROOT / page) if b.language == "python" and ENVOY_URL in b.text]
    assert online, f"{page} has no example against Envoy"
    for block in online:
        before = len(upstream.seen)
        code = block.text.replace(ENVOY_URL, envoys("ext_proc").base_url)
        exec(compile(code, block.name, "exec"), {"__name__": "__doc_example__"})
        assert len(upstream.seen) == before + 1
        assert upstream.last().model == "openai/gpt-4.1-mini"  # u1 is on the free tier
