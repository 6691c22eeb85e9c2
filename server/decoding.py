"""Undecodable request messages become INVALID_ARGUMENT, for every method the server serves.

grpc.aio deserializes a request before any handler runs; a message it cannot decode
(invalid UTF-8 in a string field or map key, a truncated message, nesting deeper than
protobuf's recursion limit) is then answered ``UNKNOWN`` with the exception's text, and
logged at ERROR with a traceback: a client could flood the log.

``GuardedServer`` is the ``grpc.aio.Server`` services register on: it rewrites every
method handler registered on it (by ``add_XServicer_to_server``, health, reflection,
Envoy's services, any service added later) to take the raw bytes and decode them itself
with the handler's own deserializer. A message that does not decode is answered
``INVALID_ARGUMENT`` with a short, fixed message naming the expected type, and logged at
debug level only. Nothing is listed: every method of every service gets the same
treatment, streaming ones included (each message of a request stream is decoded as it is
read). The rewrite happens once, at registration, so a call costs one wrapper call more,
not an interceptor pipeline.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

__all__ = ["GuardedServer", "UNDECODABLE"]

log = logging.getLogger("tollway.server.decoding")

# the status message's start: a client can tell "your bytes" from "your values"
UNDECODABLE = "request: not a valid"


def _type_name(decode: Any, method: str) -> str:
    """``tollway.v1.DecideRequest`` for ``DecideRequest.FromString``; the method otherwise."""
    owner = getattr(decode, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return str(full_name) if full_name else f"request of {method}"


class _Decoder:
    """Decodes one method's request messages; refuses undecodable ones on the call."""

    __slots__ = ("_decode", "_message", "_method")

    def __init__(self, decode: Any, method: str) -> None:
        self._decode = decode
        self._method = method
        self._message = f"{UNDECODABLE} {_type_name(decode, method)} message"

    async def __call__(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return self._decode(raw)
        except Exception as exc:  # DecodeError, RecursionError, anything a decoder raises
            log.debug("%s: undecodable request (%s: %s)", self._method, type(exc).__name__, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._message)
            raise AssertionError("unreachable: context.abort raises") from None

    async def stream(
        self, raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for raw in raws:
            yield await self(raw, context)


def _guard(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler, fed raw bytes that it decodes itself (a handler without a
    deserializer already takes bytes, and is returned as it is).

    A response-streaming behaviour is either an async generator or a coroutine that
    writes with ``context.write``; the guarded one has the same form. A request stream
    reaches the behaviour as an async iterator of decoded messages (``context.read()``
    would see raw bytes: behaviours iterate their requests instead).
    """
    if handler is None or handler.request_deserializer is None:
        return handler
    decoder = _Decoder(handler.request_deserializer, method)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await inner_uu(await decoder(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(decoder.stream(raws, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await inner_us(await decoder(raw, context), context)

        async def unary_stream_gen(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            async for response in inner_us(await decoder(raw, context), context):
                yield response

        unary_behaviour = (
            unary_stream_gen if inspect.isasyncgenfunction(inner_us) else unary_stream
        )
        return grpc.unary_stream_rpc_method_handler(
            unary_behaviour, response_serializer=serialize
        )
    inner_ss = handler.stream_stream

    async def stream_stream(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await inner_ss(decoder.stream(raws, context), context)

    async def stream_stream_gen(
        raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> Any:
        async for response in inner_ss(decoder.stream(raws, context), context):
            yield response

    behaviour = stream_stream_gen if inspect.isasyncgenfunction(inner_ss) else stream_stream
    return grpc.stream_stream_rpc_method_handler(behaviour, response_serializer=serialize)


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose handlers decode their own requests (built once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = self._inner.service(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = _guard(handler, method)
        self._guarded[method] = (handler, guarded)
        return guarded


class GuardedServer(grpc.aio.Server):
    """A ``grpc.aio.Server`` every registered method of which decodes its own requests.

    Both registration paths of grpcio (generic handlers, and the registered method
    handlers generated code adds too) are rewritten; everything else is ``server``'s.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        # every method registered, "/package.Service/Method" (the role table must know each)
        self.methods: list[str] = []

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]
    ) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_GuardedGeneric(h) for h in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.methods.extend(f"/{service_name}/{name}" for name in method_handlers)
        self.server.add_registered_method_handlers(
            service_name,
            {name: _guard(h, f"/{service_name}/{name}") for name, h in method_handlers.items()},
        )

    def add_insecure_port(self, address: str) -> int:
        return int(self.server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return int(self.server.add_secure_port(address, server_credentials))

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(await self.server.wait_for_termination(timeout))
