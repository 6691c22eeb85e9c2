"""Tokens and roles on the gRPC port: one server interceptor over every service.

The method's access comes from the one table (``roles.grpc_access``); open methods
(health, reflection) pass straight through. Otherwise the bearer token of the
``authorization`` metadata is checked by the ``Authenticator``; a missing or unknown
one is ``UNAUTHENTICATED``, a token without the role ``PERMISSION_DENIED``. A method the
table does not declare is refused to everyone.

With certificate (``cn``) entries in the token file and no token in the call, the
caller is only known from its TLS peer, which the servicer context carries: the handler
is then wrapped so that the check runs inside the call, before the method.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from .auth import Authenticator
from .roles import OPEN, Access, grpc_access

__all__ = ["AuthInterceptor", "peer_common_name"]

_CODES = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
}
_HINT = "send `authorization: Bearer <token>` metadata"


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


def peer_common_name(context: grpc.aio.ServicerContext) -> str | None:
    """The subject CN of the verified client certificate, if the call came over mTLS."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    value = names[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    await context.abort(code, message)


def _denying_handler(
    like: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``like`` that refuses the call with ``code``."""
    if like.response_streaming:

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await _abort(context, code, message)
            yield  # pragma: no cover - abort raises

        if like.request_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.unary_stream_rpc_method_handler(refuse_stream)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, code, message)

    if like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


Check = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _checked_handler(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """``handler`` with ``check(context)`` awaited before its behaviour runs."""
    serde = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        inner_stream = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            result = inner_stream(request, context)
            if inspect.isawaitable(result):
                result = await result
            if result is None:  # the behaviour wrote its responses with context.write
                return
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                for item in result:
                    yield item

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(stream, **serde)
        return grpc.unary_stream_rpc_method_handler(stream, **serde)

    inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(context)
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **serde)
    return grpc.unary_unary_rpc_method_handler(unary, **serde)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose credentials lack the method's role (``roles.GRPC_ACCESS``).

    ``on_refused(verdict)`` is told of every refusal (the metrics count them).
    """

    def __init__(
        self, auth: Authenticator, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self._auth = auth
        self._on_refused = on_refused or (lambda verdict: None)
        # refusals and certificate-checked handlers, built once per method and outcome
        self._refusals: dict[tuple[str, str], grpc.RpcMethodHandler] = {}
        self._by_certificate: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        access = grpc_access(method)
        handler = await continuation(handler_call_details)
        if access == OPEN or handler is None:  # open, or not served at all (UNIMPLEMENTED)
            return handler
        authorization = _metadata_value(handler_call_details.invocation_metadata, "authorization")
        if authorization is None and self._auth.uses_certificates:
            return self._certificate_checked(method, access, handler)
        refusal = self._auth.admit(access, method, authorization, hint=_HINT)
        if refusal is None:
            return handler
        self._on_refused(refusal.verdict)
        key = (method, refusal.message)
        refused = self._refusals.get(key)
        if refused is None:
            if len(self._refusals) > 4096:  # principals x methods; a token file reload can grow it
                self._refusals.clear()
            refused = self._refusals[key] = _denying_handler(
                handler, _CODES[refusal.verdict], refusal.message
            )
        return refused

    def _certificate_checked(
        self, method: str, access: Access | None, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """The caller is known only by its TLS peer, which the call's context carries."""
        cached = self._by_certificate.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]

        async def check(context: grpc.aio.ServicerContext) -> None:
            refusal = self._auth.admit(access, method, None, peer_common_name(context), hint=_HINT)
            if refusal is not None:
                self._on_refused(refusal.verdict)
                await context.abort(_CODES[refusal.verdict], refusal.message)

        checked = _checked_handler(handler, check)
        self._by_certificate[method] = (handler, checked)
        return checked
