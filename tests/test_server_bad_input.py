"""Bad input over a real channel: INVALID_ARGUMENT naming the field, nothing consumed or stored.

After every rejected call the server must still serve, the user's counters must be
untouched (the next decision sees ``used`` 1) and no metadata may have been written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from server_harness import serving, write_rules

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.TollwayStub]:
    with serving(write_rules(tmp_path_factory.mktemp("rules"))) as (stub, _, _):
        yield stub


def _free(uid: str, **extra: Any) -> pb.Entity:
    e = pb.Entity(id=uid)
    e.metadata.update({"tier": "free", **extra})
    return e


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        node = {"n": node}
    return node


def _with_metadata(uid: str, metadata: dict[str, Any]) -> pb.Entity:
    e = _free(uid)
    e.metadata.update(metadata)
    return e


# (case name, the field the message must name, a function building the bad request for a uid)
DECIDE_CASES: list[tuple[str, str, Callable[[str], pb.DecideRequest]]] = [
    ("empty user id", "user.id", lambda uid: pb.DecideRequest(user=pb.Entity(id=""), model="m")),
    ("oversized user id", "user.id",
     lambda uid: pb.DecideRequest(user=pb.Entity(id="u" * 257), model="m")),
    ("empty group id", "group.id",
     lambda uid: pb.DecideRequest(user=_free(uid), group=pb.Entity(), model="m")),
    ("oversized group id", "group.id",
     lambda uid: pb.DecideRequest(user=_free(uid), group=pb.Entity(id="g" * 300), model="m")),
    ("metadata 9 levels deep", "user.metadata",
     lambda uid: pb.DecideRequest(user=_with_metadata(uid, {"d": _deep(8)}), model="m")),
    ("metadata over 64 KiB", "user.metadata",
     lambda uid: pb.DecideRequest(user=_with_metadata(uid, {"blob": "x" * 70_000}), model="m")),
    ("NaN inside metadata", "user.metadata.score",
     lambda uid: pb.DecideRequest(user=_with_metadata(uid, {"score": math.nan}), model="m")),
    ("negative input estimate", "estimate.input_tokens",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m",
                                  estimate=pb.Estimate(input_tokens=-1))),
    ("negative output estimate", "estimate.output_tokens",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m",
                                  estimate=pb.Estimate(output_tokens=-5))),
    ("NaN cost estimate", "estimate.cost_usd",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m", estimate=pb.Estimate(cost_usd=math.nan))),
    ("infinite cost estimate", "estimate.cost_usd",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m", estimate=pb.Estimate(cost_usd=math.inf))),
    ("negative cost estimate", "estimate.cost_usd",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m", estimate=pb.Estimate(cost_usd=-0.5))),
    ("oversized request id", "request_id",
     lambda uid: pb.DecideRequest(request_id="r" * 257, user=_free(uid), model="m")),
    ("oversized model", "model",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m" * 2000)),
    ("too many attributes", "attributes",
     lambda uid: pb.DecideRequest(user=_free(uid), model="m",
                                  attributes={f"k{i}": "v" for i in range(65)})),
]


def _expect_invalid(call: Callable[[Any], Any], request: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details() or ""
    assert details.startswith(field), f"{details!r} should name {field!r}"


def _assert_untouched(stub: pb_grpc.TollwayStub, uid: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.GetEntity(pb.GetEntityRequest(kind="user", id=uid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, "metadata was written"
    d = stub.Decide(pb.DecideRequest(user=_free(uid), model="m"))
    used = {q.name: q.used for q in d.quotas}
    assert used == {"per_user": 1, "user_tokens": 0}, "a rejected call consumed something"


@pytest.mark.parametrize(("name", "field", "build"), DECIDE_CASES, ids=[c[0] for c in DECIDE_CASES])
def test_decide_rejects(
    stub: pb_grpc.TollwayStub, name: str, field: str, build: Callable[[str], pb.DecideRequest]
) -> None:
    uid = "decide-" + name.replace(" ", "-")
    request = build(uid)
    _expect_invalid(stub.Decide, request, field)
    _expect_invalid(stub.Explain, request, field)
    _assert_untouched(stub, uid)


REPORT_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("missing request id", "request_id", {"request_id": ""}),
    ("NaN cost", "cost_usd", {"cost_usd": math.nan}),
    ("negative cost", "cost_usd", {"cost_usd": -1.0}),
    ("negative tokens", "output_tokens", {"output_tokens": -3}),
    ("infinite duration", "duration_seconds", {"duration_seconds": math.inf}),
    ("empty user id", "user.id", {"user": pb.Entity(id="")}),
    ("oversized status", "status", {"status": "s" * 100}),
]


@pytest.mark.parametrize(("name", "field", "fields"), REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_rejects(
    stub: pb_grpc.TollwayStub, name: str, field: str, fields: dict[str, Any]
) -> None:
    uid = "report-" + name.replace(" ", "-")
    base: dict[str, Any] = {
        "request_id": "r-" + uid, "user": _free(uid), "model": "m", "input_tokens": 10,
    }
    _expect_invalid(stub.Report, pb.UsageReport(**{**base, **fields}), field)
    _assert_untouched(stub, uid)
    # the same request_id is still unused: a valid report for it is not a duplicate
    ack = stub.Report(pb.UsageReport(**base))
    assert ack.outcome == "added"


def test_entity_admin_rejects(stub: pb_grpc.TollwayStub) -> None:
    _expect_invalid(stub.UpsertEntity, pb.UpsertEntityRequest(kind="robot", id="x"), "kind")
    _expect_invalid(stub.UpsertEntity, pb.UpsertEntityRequest(kind="user", id=""), "user.id")
    _expect_invalid(
        stub.UpsertEntity, pb.UpsertEntityRequest(kind="group", id="g", groups=["h"]), "groups"
    )
    _expect_invalid(stub.GetEntity, pb.GetEntityRequest(kind="user", id=""), "id")
    _expect_invalid(stub.GetEntity, pb.GetEntityRequest(kind="", id="x"), "kind")
    with pytest.raises(grpc.RpcError):
        stub.GetEntity(pb.GetEntityRequest(kind="group", id="g"))


def test_oversized_message_is_resource_exhausted(stub: pb_grpc.TollwayStub) -> None:
    uid = "huge"
    request = pb.DecideRequest(user=_free(uid), model="m", attributes={"blob": "x" * (5 << 20)})
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(request)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_untouched(stub, uid)


def test_still_serving_after_all_of_it(stub: pb_grpc.TollwayStub) -> None:
    d = stub.Decide(pb.DecideRequest(user=_free("after"), model="m"))
    assert d.allowed and d.reason == pb.ALLOWED
