"""Random bytes and structured-but-wrong messages at every RPC, over a real channel.

Properties: no exception escapes (never UNKNOWN or INTERNAL, the server keeps serving);
every refusal is a documented code (INVALID_ARGUMENT, or NOT_FOUND for a lookup); nothing
is written by a refused call. A few seconds by default; ``TOLLWAY_FUZZ_EXAMPLES=5000``
runs more.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import ServerThread, serving, write_rules
from wire import RpcMethod, call_raw, services

from tollway import Engine
from tollway.server import convert
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

EXAMPLES = int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

RULES = """
price "m*" input 1 output 2 per 1M tokens
quota calls limits requests to 1_000_000 per 1h for each user
quota spend limits cost to user.budget or 1_000 per 1d for each user and model
quota share limits tokens to 50% of group.credits or 10_000 per 1d for each user in group
rule everyone { enforce calls, spend, share }
rule routed { when request.model == "small" route "big" }
balance wallet of cost for each user
rule payer { when user.id == "payer" enforce wallet }
"""

DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
SEEDED = "seed"  # an entity and usage that exist, so that lookups can succeed too


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ServerThread, Any]]:
    with serving(write_rules(tmp_path_factory.mktemp("fuzz"), RULES)) as (stub, thread, chan):
        seed = pb.Entity(id=SEEDED)
        seed.metadata.update({"budget": 5})
        stub.Decide(pb.DecideRequest(user=seed, group=pb.Entity(id="g"), model="m"))
        stub.Report(pb.UsageReport(request_id="r0", user=seed, model="m", input_tokens=3))
        yield stub, thread, chan
        # still serving after everything
        assert stub.Decide(pb.DecideRequest(user=seed, model="m")).allowed


def state(engine: Engine) -> Any:
    """Everything a call could write: counters, reservations, report ids, entities,
    memberships, usage (the memory store's tables; usage once its events are written)."""
    assert engine.flush_usage()
    store, entities = engine.store, engine._entities
    usage = [engine.list_usage(kind=k, limit=100) for k in ("users", "groups")]
    return copy.deepcopy((
        {k: dict(c.fields) for k, c in store._counters.items()},  # type: ignore[attr-defined]
        {k: (b.balance, dict(b.holds))
         for k, b in store._balances.items()},  # type: ignore[attr-defined]
        engine.store_entries(),
        entities._meta, entities._links,  # type: ignore[attr-defined]
        [[r.to_dict() for r in page.results] for page in usage],
        [e.to_dict() for e in engine.activity()],
    ))


def outcome(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        code = err.code()
        assert code in DOCUMENTED or code == grpc.StatusCode.RESOURCE_EXHAUSTED, (
            code, err.details())
        assert not (err.details() or "").startswith("Unexpected"), err.details()
        return code
    return grpc.StatusCode.OK


def refused_writes_nothing(engine: Engine, call: Any) -> grpc.StatusCode:
    before = state(engine)
    code = outcome(call)
    if code != grpc.StatusCode.OK:
        assert state(engine) == before, f"a refused call ({code}) wrote something"
    return code


# ------------------------------------------------------------------ random bytes

METHODS = list(services())


@FUZZ
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=300))
def test_random_bytes_at_every_method(
    server: tuple[Any, ServerThread, Any], method: RpcMethod, payload: bytes
) -> None:
    _, thread, channel = server
    refused_writes_nothing(thread.engine, lambda: call_raw(channel, method, payload, timeout=10))


# ------------------------------------------------------ structured but wrong

numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e9, 1e10, 2**53, 10_000.000001, 604_800.5, -0.0]),
)
texts = st.one_of(
    st.text(max_size=12), st.sampled_from(["", " ", "x" * 257, "é" * 129, "seed", "g", "m"]),
)


def json_values(depth: int = 3) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=8,
    )


def struct_of(data: dict[str, Any]) -> struct_pb2.Struct:
    """As a client would build it; NaN and infinities included (a double carries them)."""
    return convert.dict_to_struct(data)


metadata = st.dictionaries(texts, json_values(), max_size=4)


@st.composite
def entities(draw: st.DrawFn) -> pb.Entity | None:
    if draw(st.booleans()):
        return None
    entity = pb.Entity(id=draw(texts))
    if draw(st.booleans()):
        entity.metadata.CopyFrom(struct_of(draw(metadata)))
    return entity


def _int64(value: Any) -> int:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return 0
    return max(-(2**63), min(2**63 - 1, int(value)))


@st.composite
def decide_requests(draw: st.DrawFn) -> pb.DecideRequest:
    request = pb.DecideRequest(
        request_id=draw(texts), model=draw(texts), dry_run=draw(st.booleans()),
        attributes=draw(st.dictionaries(texts, texts, max_size=3)),
    )
    for name in ("user", "group"):
        entity = draw(entities())
        if entity is not None:
            getattr(request, name).CopyFrom(entity)
    if draw(st.booleans()):
        request.estimate.input_tokens = _int64(draw(numbers))
        request.estimate.output_tokens = _int64(draw(numbers))
        request.estimate.cost_usd = float(draw(numbers))
    return request


@st.composite
def usage_reports(draw: st.DrawFn) -> pb.UsageReport:
    report = pb.UsageReport(
        request_id=draw(texts), decision_id=draw(texts), model=draw(texts),
        input_tokens=_int64(draw(numbers)), output_tokens=_int64(draw(numbers)),
        cached_input_tokens=_int64(draw(numbers)), cost_usd=float(draw(numbers)),
        duration_seconds=float(draw(numbers)), status=draw(texts),
        attributes=draw(st.dictionaries(texts, texts, max_size=3)),
    )
    for name in ("user", "group"):
        entity = draw(entities())
        if entity is not None:
            getattr(report, name).CopyFrom(entity)
    return report


kinds = st.one_of(texts, st.sampled_from(["user", "users", "group", "groups", "USER"]))


@st.composite
def timestamps(draw: st.DrawFn) -> timestamp_pb2.Timestamp | None:
    if draw(st.booleans()):
        return None
    return timestamp_pb2.Timestamp(
        seconds=draw(st.integers(-(2**40), 2**40)), nanos=draw(st.integers(-(2**31), 2**31 - 1))
    )


@st.composite
def list_requests(draw: st.DrawFn) -> pb.ListUsageRequest:
    request = pb.ListUsageRequest(
        kind=draw(kinds), search=draw(texts),
        sort=draw(st.one_of(texts, st.sampled_from(["-total_cost", "last_seen", "-x"]))),
        limit=draw(st.integers(-(2**31), 2**31 - 1)),
        offset=draw(st.integers(-(2**31), 2**31 - 1)),
    )
    for name in ("start", "end"):
        ts = draw(timestamps())
        if ts is not None:
            getattr(request, name).CopyFrom(ts)
    return request


def usage_requests() -> st.SearchStrategy[pb.GetUsageRequest]:
    return st.one_of(
        st.just(pb.GetUsageRequest()),
        texts.map(lambda i: pb.GetUsageRequest(user_id=i)),
        texts.map(lambda i: pb.GetUsageRequest(group_id=i)),
    )


@st.composite
def series_requests(draw: st.DrawFn) -> pb.UsageSeriesRequest:
    request = draw(st.one_of(
        st.just(pb.UsageSeriesRequest()),
        texts.map(lambda i: pb.UsageSeriesRequest(user_id=i)),
        texts.map(lambda i: pb.UsageSeriesRequest(group_id=i)),
    ))
    request.metric = draw(st.one_of(texts, st.sampled_from(["cost", "tokens", "requests"])))
    request.step = draw(st.one_of(texts, st.sampled_from(["1h", "1d", "1m"])))
    for name in ("start", "end"):
        ts = draw(timestamps())
        if ts is not None:
            getattr(request, name).CopyFrom(ts)
    return request


@st.composite
def spike_requests(draw: st.DrawFn) -> pb.ListSpikesRequest:
    hours = st.one_of(texts, st.sampled_from(["1h", "6h", "7d", "0h", "401d", "90m"]))
    request = pb.ListSpikesRequest(
        kind=draw(kinds), metric=draw(texts), window=draw(hours), baseline=draw(hours),
        limit=draw(st.integers(-(2**31), 2**31 - 1)),
    )
    if draw(st.booleans()):
        request.factor = float(draw(numbers))
    if draw(st.booleans()):
        request.min = float(draw(numbers))
    return request


@st.composite
def upserts(draw: st.DrawFn) -> pb.UpsertEntityRequest:
    request = pb.UpsertEntityRequest(
        kind=draw(kinds), id=draw(texts), replace=draw(st.booleans()),
        groups=draw(st.lists(texts, max_size=3)),
    )
    if draw(st.booleans()):
        request.metadata.CopyFrom(struct_of(draw(metadata)))
    return request


CALLS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("Decide", decide_requests()),
    ("Explain", decide_requests()),
    ("Report", usage_reports()),
    ("UpsertEntity", upserts()),
    ("GetEntity", st.builds(pb.GetEntityRequest, kind=kinds, id=texts)),
    ("GetUsage", usage_requests()),
    ("ListUsage", list_requests()),
    ("GetUsageSeries", series_requests()),
    ("ListSpikes", spike_requests()),
    ("Credit", st.builds(
        pb.CreditRequest, kind=kinds, id=texts,
        balance=st.one_of(texts, st.just("wallet")),
        amount=numbers.map(float), reason=texts, idempotency_key=texts,
    )),
    ("GetBalance", st.builds(pb.GetBalanceRequest, kind=kinds, id=texts)),
]


def test_every_tollway_rpc_is_fuzzed() -> None:
    fuzzed = {name for name, _ in CALLS}
    assert fuzzed == set(pb.DESCRIPTOR.services_by_name["Tollway"].methods_by_name)


@pytest.mark.parametrize(("rpc", "requests"), CALLS, ids=[name for name, _ in CALLS])
def test_structured_but_wrong_messages(
    server: tuple[pb_grpc.TollwayStub, ServerThread, Any], rpc: str,
    requests: st.SearchStrategy[Any],
) -> None:
    stub, thread, _ = server
    seen: set[grpc.StatusCode] = set()

    @FUZZ
    @given(request=requests)
    def run(request: Any) -> None:
        method = getattr(stub, rpc)
        seen.add(refused_writes_nothing(thread.engine, lambda: method(request, timeout=10)))

    run()
    assert grpc.StatusCode.INVALID_ARGUMENT in seen, seen  # the strategies reach refusals
