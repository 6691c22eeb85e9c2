"""Undecodable request bytes, sent raw over a real channel to every method the server has.

Each must be answered INVALID_ARGUMENT with the short fixed message, log nothing above
debug level, write nothing, and leave the server serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from server_harness import serving, write_rules
from wire import RpcMethod, bad_messages, call_raw, services

from tollway.server.decoding import UNDECODABLE
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

CASES = [
    pytest.param(method, name, payload, id=f"{method.path}-{name}")
    for method in services()
    for name, payload in bad_messages(method.input).items()
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[pb_grpc.TollwayStub, grpc.Channel]]:
    with serving(write_rules(tmp_path_factory.mktemp("rules"))) as (stub, _, channel):
        yield stub, channel


def test_every_method_of_every_service_is_covered() -> None:
    paths = {m.path for m in services()}
    assert {"/tollway.v1.Tollway/Decide", "/tollway.v1.Tollway/ListUsage",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"} <= paths
    covered = {(p.values[0].path, p.values[1]) for p in CASES}  # type: ignore[union-attr]
    for path in paths:
        assert (path, "truncated varint") in covered, path
    with_strings = {p for p in paths if not p.endswith(".Health/List")}  # List takes {}
    for path in with_strings:
        assert (path, "invalid UTF-8 in a string") in covered, path
    assert ("/tollway.v1.Tollway/Decide", "invalid UTF-8 in a map key") in covered
    assert ("/tollway.v1.Tollway/Decide", "Struct nested 40 levels") in covered


@pytest.mark.parametrize(("method", "name", "payload"), CASES)
def test_undecodable_request_is_invalid_argument(
    server: tuple[pb_grpc.TollwayStub, grpc.Channel],
    caplog: pytest.LogCaptureFixture,
    method: RpcMethod,
    name: str,
    payload: bytes,
) -> None:
    stub, channel = server
    with pytest.raises(DecodeError):  # the case really is undecodable
        GetMessageClass(method.input).FromString(payload)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.RpcError) as err:
        call_raw(channel, method, payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() == f"{UNDECODABLE} {method.input.full_name} message"
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert not loud, [r.getMessage() for r in loud]
    assert any(method.path in r.getMessage() for r in caplog.records)  # at debug: it was seen
    # nothing was written and the server still serves
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetEntity(pb.GetEntityRequest(kind="user", id="u"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.Decide(pb.DecideRequest(model="m")).allowed


def test_nesting_within_the_decoder_limit_is_a_field_error(
    server: tuple[pb_grpc.TollwayStub, grpc.Channel],
) -> None:
    """30 levels decode fine; the metadata limit (8 levels) then names the field."""
    from wire import field, nested_struct

    _, channel = server
    payload = field(2, field(1, b"deep") + field(2, nested_struct(30))) + field(4, b"m")
    pb.DecideRequest.FromString(payload)
    decide = next(m for m in services() if m.path == "/tollway.v1.Tollway/Decide")
    with pytest.raises(grpc.RpcError) as err:
        call_raw(channel, decide, payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("user.metadata")


def test_valid_raw_bytes_still_work(server: tuple[pb_grpc.TollwayStub, grpc.Channel]) -> None:
    _, channel = server
    raw = channel.unary_unary("/tollway.v1.Tollway/Decide")(
        pb.DecideRequest(user=pb.Entity(id="raw"), model="m").SerializeToString()
    )
    assert pb.Decision.FromString(raw).allowed
    health = channel.unary_unary("/grpc.health.v1.Health/Check")(b"")
    assert health == b"\x08\x01"  # status: SERVING
