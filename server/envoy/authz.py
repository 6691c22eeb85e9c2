"""``envoy.service.auth.v3.Authorization/Check``: Envoy's ext_authz filter asks, tollway decides.

The request's headers and (with ``with_request_body``) its body become one ``Decide``.
Allowed: OK, and the upstream request gets the decision headers (``x-tollway-model``, …)
while forged copies of them are removed; the client's response gets
``x-tollway-decision-id``. Denied: the refusal in OpenAI's error shape (403, 429 with
``retry-after``, 503), or 400 for a request tollway cannot read. ext_authz cannot rewrite
the body, so a routed model only travels in ``x-tollway-model``, and it never sees the
answer, so nothing is reported: requests are counted by ``Decide`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2 as authz
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from google.rpc import code_pb2

from tollway.policy.model import Decision
from tollway.server.decision_headers import decision_headers, forged_headers
from tollway.server.engine_calls import EngineCalls
from tollway.server.grpc_service import rpc
from tollway.server.openai_errors import (
    DECISION_ID_HEADER,
    OpenAIError,
    error_for_decision,
    invalid_request,
)

from .request import decide_request, headers_of

__all__ = ["AuthorizationService", "SERVICE_NAME"]

SERVICE_NAME: str = authz.DESCRIPTOR.services_by_name["Authorization"].full_name

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE = {
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
    400: code_pb2.INVALID_ARGUMENT,
}


# Responses are built in place: nested constructors copy every sub-message, which costs
# twice the whole rest of a Check.


def _add_options(options: Any, headers: Iterable[tuple[str, str]]) -> None:
    """Append ``headers`` to a repeated ``HeaderValueOption`` field, each overwriting."""
    for name, value in headers:
        option = options.add()
        option.header.key = name
        option.header.value = value
        option.append_action = _OVERWRITE


def _allowed(decision: Decision, incoming: Mapping[str, str]) -> authz.CheckResponse:
    mine = decision_headers(decision)
    response = authz.CheckResponse()
    response.status.code = code_pb2.OK
    ok = response.ok_response
    _add_options(ok.headers, mine)
    ok.headers_to_remove.extend(forged_headers(incoming, mine))
    _add_options(ok.response_headers_to_add, ((DECISION_ID_HEADER, decision.decision_id),))
    fields = response.dynamic_metadata.fields
    fields["decision_id"].string_value = decision.decision_id
    fields["model"].string_value = decision.model
    fields["reason"].string_value = decision.reason
    return response


def _denied(err: OpenAIError) -> authz.CheckResponse:
    response = authz.CheckResponse()
    response.status.code = _GRPC_CODE.get(err.status, code_pb2.PERMISSION_DENIED)
    response.status.message = err.message
    denied = response.denied_response
    denied.status.code = err.status
    _add_options(denied.headers, (("content-type", "application/json"), *err.headers))
    denied.body = err.body_bytes().decode()
    return response


class AuthorizationService(authz_grpc.AuthorizationServicer):
    """ext_authz over the engine that ``calls`` runs."""

    def __init__(self, calls: EngineCalls, attribute_headers: Mapping[str, str]) -> None:
        self.calls = calls
        self._attribute_headers = dict(attribute_headers)

    @rpc
    async def Check(
        self, request: authz.CheckRequest, context: grpc.aio.ServicerContext
    ) -> authz.CheckResponse:
        http = request.attributes.request.http
        headers: Mapping[str, str] = http.headers or headers_of(http.header_map.headers)
        body = http.raw_body or http.body.encode()
        try:
            wanted, _ = decide_request(headers, body, self._attribute_headers)
            decision = await self.calls(self.calls.engine.decide, wanted)
        except ValueError as exc:
            return _denied(invalid_request(exc))
        if decision.allowed:
            return _allowed(decision, headers)
        return _denied(error_for_decision(decision))
