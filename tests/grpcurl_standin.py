"""The part of grpcurl the docs use, for running their examples where grpcurl is absent.

``grpcurl -plaintext [-d JSON] ADDRESS list | describe NAME | SERVICE/METHOD`` — like the
real tool it learns every message from the server's reflection service (no ``.proto``, no
generated code), so a docs example that passes here also shows that reflection serves
what grpcurl needs. Calls print the reply as JSON; a call that fails prints its status
and exits 1. Only what the docs show is supported: anything else exits 2.
"""

from __future__ import annotations

import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def _usage(problem: str) -> int:
    print(f"grpcurl stand-in: {problem}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    words = list(argv)
    if "-plaintext" not in words:
        return _usage("only -plaintext calls are supported")
    words.remove("-plaintext")
    payload = "{}"
    if "-d" in words:
        at = words.index("-d")
        payload = words[at + 1]
        del words[at : at + 2]
    if len(words) < 2:
        return _usage("expected ADDRESS then list, describe NAME or SERVICE/METHOD")
    address, verb, *rest = words
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        if verb == "list":
            for name in database.get_services():
                print(name)
            return 0
        if verb == "describe" and len(rest) == 1:
            print(pool.FindMessageTypeByName(rest[0]).full_name)
            return 0
        service, _, method = verb.rpartition("/")
        if rest or not service:
            return _usage(f"cannot read {' '.join(words[1:])!r}")
        found = pool.FindServiceByName(service).methods_by_name[method]
        request_class = message_factory.GetMessageClass(found.input_type)
        reply_class = message_factory.GetMessageClass(found.output_type)
        request = json_format.Parse(payload, request_class())
        call = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        try:
            reply = call(request, timeout=10)
        except grpc.RpcError as exc:
            print(f"ERROR:\n  Code: {exc.code().name}\n  Message: {exc.details()}", file=sys.stderr)
            return 1
        print(json_format.MessageToJson(reply))
        return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
