"""Hand-made protobuf wire bytes: what a broken or hostile client can send.

Built from field numbers, not through the generated classes, so that tests can send
exactly the malformed messages the Python protobuf library refuses to produce.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tollway.server.envoy import SERVICE_NAMES
from tollway.v1 import tollway_pb2 as pb

__all__ = ["varint", "field", "nested_struct", "services", "RpcMethod", "bad_messages"]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message, map entry)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct(levels: int) -> bytes:
    """A ``google.protobuf.Struct`` nested ``levels`` deep: ``{"n": {"n": … {}}}``."""
    struct = b""
    for _ in range(levels):
        value = field(5, struct)  # Value.struct_value
        struct = field(1, field(1, b"n") + field(2, value))  # Struct.fields map entry
    return struct


@dataclass(frozen=True)
class RpcMethod:
    path: str  # /package.Service/Method
    input: Descriptor
    client_streaming: bool
    server_streaming: bool


def services() -> Iterator[RpcMethod]:
    """Every method the server registers: Tollway, Envoy's services, health, reflection."""
    files = (pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
    names = [s.full_name for f in files for s in f.services_by_name.values()]
    pool = descriptor_pool.Default()
    for name in (*names, *SERVICE_NAMES):
        service = pool.FindServiceByName(name)
        for m in service.methods:
            method: MethodDescriptor = m
            yield RpcMethod(
                f"/{service.full_name}/{method.name}",
                method.input_type,
                method.client_streaming,
                method.server_streaming,
            )


def _string_path(message: Descriptor, depth: int = 0) -> list[FieldDescriptor] | None:
    """The fields leading to a string field (direct first, then through sub-messages)."""
    for f in message.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            return [f]
    if depth < 3:
        for f in message.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry:
                inner = _string_path(f.message_type, depth + 1)
                if inner is not None:
                    return [f, *inner]
    return None


def _wrap(path: list[FieldDescriptor], leaf: bytes) -> bytes:
    data = leaf
    for f in reversed(path[:-1]):
        data = field(f.number, data)
    return data


def bad_messages(message: Descriptor) -> dict[str, bytes]:
    """Undecodable encodings of ``message``, by what is wrong with them."""
    cases = {
        "truncated varint": b"\x08",
        "length past the end": field(1, b"abcdef")[:-3],
        "garbage": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    }
    path = _string_path(message)
    if path is not None:
        leaf = path[-1]
        cases["invalid UTF-8 in a string"] = _wrap(path, field(leaf.number, b"ok\xff\xfe"))
    for f in message.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            key = f.message_type.fields_by_name["key"]
            if key.type == FieldDescriptor.TYPE_STRING:
                cases["invalid UTF-8 in a map key"] = field(f.number, field(1, b"\xc3\x28"))
                break
    if message.full_name == "tollway.v1.DecideRequest":
        entity = field(1, b"u") + field(2, nested_struct(40))
        cases["Struct nested 40 levels"] = field(2, entity) + field(4, b"m")
    if message.full_name == "tollway.v1.UpsertEntityRequest":
        cases["Struct nested 40 levels"] = field(1, b"user") + field(2, b"u") + field(
            3, nested_struct(40)
        )
    return cases


def call_raw(channel: grpc.Channel, method: RpcMethod, payload: bytes, timeout: float = 10) -> None:
    """Send ``payload`` as the request (or the first message of a request stream) and read
    the whole answer; raises ``grpc.RpcError``."""
    identity = {"request_serializer": None, "response_deserializer": None}
    if method.client_streaming and method.server_streaming:
        list(channel.stream_stream(method.path, **identity)(iter([payload]), timeout=timeout))
    elif method.client_streaming:
        channel.stream_unary(method.path, **identity)(iter([payload]), timeout=timeout)
    elif method.server_streaming:
        for _ in channel.unary_stream(method.path, **identity)(payload, timeout=timeout):
            break  # a valid Watch would stream forever: the first answer is enough
    else:
        channel.unary_unary(method.path, **identity)(payload, timeout=timeout)
