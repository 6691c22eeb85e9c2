"""A refused request writes nothing: no entity merge, no link, no counter, no usage.

Over gRPC on both stores. Each bad request names its field, and afterwards the entity is
unknown, every counter reads 0 and no usage was recorded; the refused request_id is not
burnt (a valid report with it still counts). The documented maxima themselves are
accepted, and maximal amounts add up without overflowing any store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from backends import Backend
from conftest import ROOMY
from server_harness import ServerThread, serving, write_rules

from tollway.policy.validate import MAX_COST_USD, MAX_DURATION_SECONDS, MAX_TOKENS
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
quota calls limits requests to 1_000 per 1h for each user
quota tokens limits tokens to 10_000_000_000 per 1h for each user
quota spend limits cost to 1_000_000 per 1d for each user
quota team_spend limits cost to 1_000_000 per 1d for each group
rule everyone { enforce calls, tokens, spend, team_spend }
"""


@pytest.fixture
def served(
    backend: Backend, tmp_path: Path
) -> Iterator[tuple[pb_grpc.TollwayStub, ServerThread]]:
    rules = write_rules(tmp_path, RULES)
    with serving(rules, store=backend.store, key_prefix=backend.prefix(),
                 store_options=ROOMY) as (s, server, _):
        yield s, server


@pytest.fixture
def stub(served: tuple[pb_grpc.TollwayStub, ServerThread]) -> pb_grpc.TollwayStub:
    return served[0]


@pytest.fixture
def flush(served: tuple[pb_grpc.TollwayStub, ServerThread]) -> Callable[[], None]:
    """Wait until every usage event accepted so far is written (or fail)."""

    def wait() -> None:
        assert served[1].engine.flush_usage()

    return wait


def _user(uid: str) -> pb.Entity:
    entity = pb.Entity(id=uid)
    entity.metadata.update({"tier": "enterprise"})
    return entity


def _refused(call: Callable[[Any], Any], request: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details() or ""
    assert details.startswith(f"{field}: "), f"{details!r} should name {field!r}"


def _untouched(
    stub: pb_grpc.TollwayStub, flush: Callable[[], None], uid: str, group: str = "team"
) -> None:
    flush()  # what a refused call could have written would be in the usage database by now
    for kind, ident in (("user", uid), ("group", group)):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEntity(pb.GetEntityRequest(kind=kind, id=ident))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, f"{kind} {ident} was written"
        with pytest.raises(grpc.RpcError) as err:
            subject = {f"{kind}_id": ident}
            stub.GetUsage(pb.GetUsageRequest(**subject))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, f"usage of {ident} was written"
    peek = stub.Explain(
        pb.DecideRequest(user=pb.Entity(id=uid), group=pb.Entity(id=group), model="m")
    )
    assert {q.name: q.used for q in peek.decision.quotas} == {
        "calls": 0, "tokens": 0, "spend": 0, "team_spend": 0,
    }


DECIDES: list[tuple[str, str, dict[str, Any]]] = [
    ("cost estimate 1e10 with new metadata", "estimate.cost_usd",
     {"estimate": pb.Estimate(cost_usd=1e10)}),
    ("cost estimate just over the maximum", "estimate.cost_usd",
     {"estimate": pb.Estimate(cost_usd=MAX_COST_USD * (1 + 1e-15))}),
    ("input estimate 2**63-1", "estimate.input_tokens",
     {"estimate": pb.Estimate(input_tokens=2**63 - 1)}),
    ("output estimate one over the maximum", "estimate.output_tokens",
     {"estimate": pb.Estimate(output_tokens=MAX_TOKENS + 1)}),
    ("empty model", "model", {"model": ""}),
    ("bad group id after a good user", "group.id", {"group": pb.Entity(id="g" * 257)}),
]


@pytest.mark.parametrize(("name", "field", "fields"), DECIDES, ids=[c[0] for c in DECIDES])
def test_a_refused_decide_writes_nothing(
    stub: pb_grpc.TollwayStub, flush: Callable[[], None], name: str, field: str,
    fields: dict[str, Any],
) -> None:
    base: dict[str, Any] = {"user": _user("d"), "group": pb.Entity(id="team"), "model": "m"}
    request = pb.DecideRequest(**{**base, **fields})
    _refused(stub.Decide, request, field)
    _untouched(stub, flush, "d")


REPORTS: list[tuple[str, str, dict[str, Any]]] = [
    ("input tokens 2**63-1", "input_tokens", {"input_tokens": 2**63 - 1}),
    ("input tokens 2**53-1", "input_tokens", {"input_tokens": 2**53 - 1}),
    ("output tokens one over the maximum", "output_tokens", {"output_tokens": MAX_TOKENS + 1}),
    ("cost 1e300", "cost_usd", {"cost_usd": 1e300}),
    ("cost 5e9", "cost_usd", {"cost_usd": 5e9}),
    ("duration 1e13", "duration_seconds", {"duration_seconds": 1e13}),
    ("duration just over the maximum", "duration_seconds",
     {"duration_seconds": MAX_DURATION_SECONDS + 1}),
    ("bad attribute after good amounts", "attributes", {"attributes": {"": "v"}}),
]


@pytest.mark.parametrize(("name", "field", "fields"), REPORTS, ids=[c[0] for c in REPORTS])
def test_a_refused_report_writes_nothing_and_burns_no_request_id(
    stub: pb_grpc.TollwayStub, flush: Callable[[], None], name: str, field: str,
    fields: dict[str, Any],
) -> None:
    base: dict[str, Any] = {
        "request_id": "r1", "user": _user("r"), "group": pb.Entity(id="team"), "model": "m",
        "input_tokens": 10, "cost_usd": 0.5,
    }
    for _ in range(2):  # twice: a second bad report must not fail any differently
        _refused(stub.Report, pb.UsageReport(**{**base, **fields}), field)
    _untouched(stub, flush, "r")
    ack = stub.Report(pb.UsageReport(**base))
    assert (ack.outcome, ack.duplicate) == ("added", False)
    flush()
    usage = stub.GetUsage(pb.GetUsageRequest(user_id="r")).usage
    assert (usage.request_count, usage.input_tokens) == (1, 10)
    assert usage.total_cost == pytest.approx(0.5)


def test_a_refused_upsert_writes_nothing(
    stub: pb_grpc.TollwayStub, flush: Callable[[], None]
) -> None:
    metadata = _user("x").metadata
    request = pb.UpsertEntityRequest(kind="user", id="u", metadata=metadata, groups=["team", ""])
    _refused(stub.UpsertEntity, request, "groups[1]")
    request = pb.UpsertEntityRequest(kind="user", id="u", metadata=metadata,
                                     groups=[f"g{i}" for i in range(101)])
    _refused(stub.UpsertEntity, request, "groups")
    _untouched(stub, flush, "u")


def test_the_maxima_are_accepted_and_add_up_exactly(
    stub: pb_grpc.TollwayStub, flush: Callable[[], None]
) -> None:
    big = {"input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS, "cost_usd": MAX_COST_USD}
    d = stub.Decide(pb.DecideRequest(user=pb.Entity(id="max"), model="m",
                                     estimate=pb.Estimate(**big)))
    assert d.allowed, d.message
    for i in range(20):
        ack = stub.Report(pb.UsageReport(
            request_id=f"max{i}", user=pb.Entity(id="max"), group=pb.Entity(id="team"),
            model="m", duration_seconds=MAX_DURATION_SECONDS, **big,
        ))
        assert ack.outcome == "added"
    flush()
    usage = stub.GetUsage(pb.GetUsageRequest(user_id="max")).usage
    assert usage.input_tokens == 20 * MAX_TOKENS and usage.total_tokens == 40 * MAX_TOKENS
    assert usage.total_cost == 20 * MAX_COST_USD
    assert usage.total_duration == 20 * MAX_DURATION_SECONDS
    listed = stub.ListUsage(pb.ListUsageRequest(kind="users")).results
    assert [r.user_id for r in listed] == ["max"]
    spend = next(q for q in stub.Explain(pb.DecideRequest(user=pb.Entity(id="max"), model="m"))
                 .decision.quotas if q.name == "spend")
    assert spend.used == 21 * MAX_COST_USD  # the reservation and 20 reports, to the cent
