"""``envoy.service.ext_proc.v3.ExternalProcessor/Process``: the whole exchange, one stream per request.

Envoy's ext_proc filter (request headers SEND, request body BUFFERED, response headers
SEND, response body STREAMED) sends each phase of one HTTP exchange on one gRPC stream:

1. request headers: kept (the decision needs the body); a request without a body is
   decided here.
2. request body: one ``Decide``. Denied: an immediate response in OpenAI's error shape.
   Allowed: the body's ``model`` becomes the routed model (``content-length`` set to
   the new length), the decision headers are added and forged copies removed.
3. response headers: the status and content type are noted; the client gets
   ``x-tollway-decision-id``.
4. response body chunks: passed on untouched while a ``UsageReader`` looks for the
   upstream's ``usage`` (plain JSON, or a server-sent-event stream whose chunks carry it).
5. end of the body: ``Report`` with the decision id (also its ``request_id``), the tokens
   (cost priced by the rules' ``price`` table), the time taken and ``success`` or
   ``error`` by HTTP status. An
   exchange cut short is reported too (status ``incomplete``), releasing its reservation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3.http_status_pb2 import HttpStatus

from tollway.policy.model import Decision
from tollway.server.decision_headers import decision_headers, forged_headers
from tollway.server.engine_calls import EngineCalls
from tollway.server.grpc_service import rpc
from tollway.server.openai_body import TokenUsage, UsageReader, with_model
from tollway.server.openai_errors import (
    DECISION_ID_HEADER,
    OpenAIError,
    error_for_decision,
    invalid_request,
)

from .request import REQUEST_ID_HEADER, decide_request, headers_of

__all__ = ["ExternalProcessorService", "SERVICE_NAME"]

SERVICE_NAME: str = ep.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name

log = logging.getLogger("tollway.server.envoy")

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_CONTINUE = ep.CommonResponse()


def _set(name: str, value: str) -> HeaderValueOption:
    # ext_proc reads raw_value (and refuses a header with both raw_value and value set)
    return HeaderValueOption(
        header=HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE
    )


def _immediate(err: OpenAIError) -> ep.ProcessingResponse:
    headers = [_set("content-type", "application/json")]
    headers += [_set(name, value) for name, value in err.headers]
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=HttpStatus(code=err.status),
            headers=ep.HeaderMutation(set_headers=headers),
            body=err.body_bytes(),
            details=f"tollway_{err.code}",
        )
    )


@dataclass(slots=True)
class _Exchange:
    """One HTTP request and its answer, as the stream has shown them so far."""

    started: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    request: dict[str, Any] = field(default_factory=dict)
    decision: Decision | None = None
    status: int = 0
    reader: UsageReader | None = None
    reported: bool = False


class ExternalProcessorService(ep_grpc.ExternalProcessorServicer):
    """ext_proc over the engine that ``calls`` runs."""

    def __init__(
        self, calls: EngineCalls, attribute_headers: Mapping[str, str], *, clock: Any = None
    ) -> None:
        self.calls = calls
        self._attribute_headers = dict(attribute_headers)
        self._clock = clock or time.monotonic

    @rpc
    async def Process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        ex = _Exchange(self._clock())
        try:
            async for message in requests:
                # each phase is a call of its own: its store work gets a budget from when
                # it arrived, not from when the exchange began (an answer may stream for
                # minutes before its report)
                self.calls.touch()
                phase = message.WhichOneof("request")
                if phase is None:
                    continue  # nothing to answer: no phase of the exchange in it
                answer = await getattr(self, "_" + phase)(ex, getattr(message, phase))
                await context.write(answer)
                if answer.HasField("immediate_response"):
                    return
                if phase == "response_body" and message.response_body.end_of_stream:
                    await self._report(ex, ended=True)
        finally:
            if ex.decision is not None and ex.decision.allowed and not ex.reported:
                # Envoy closed the stream before the answer's end flag (client gone, timeout,
                # upstream reset): report what is known so the reservation is settled; an
                # answer that stated its own end (a stream's [DONE]) still counts as whole
                self.calls.touch()
                await asyncio.shield(self._report(ex, ended=False))

    # ----------------------------------------------------------- the phases

    async def _request_headers(self, ex: _Exchange, h: ep.HttpHeaders) -> ep.ProcessingResponse:
        ex.headers = headers_of(h.headers.headers)
        if not h.end_of_stream:
            return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=_CONTINUE))
        refusal, common = await self._decide(ex)
        return refusal or ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=common))

    async def _request_body(self, ex: _Exchange, b: ep.HttpBody) -> ep.ProcessingResponse:
        ex.body += b.body
        if not b.end_of_stream:  # only in STREAMED mode, which cannot rewrite the body
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=_CONTINUE))
        refusal, common = await self._decide(ex)
        return refusal or ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))

    async def _request_trailers(self, ex: _Exchange, t: ep.HttpTrailers) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())

    async def _response_headers(self, ex: _Exchange, h: ep.HttpHeaders) -> ep.ProcessingResponse:
        headers = headers_of(h.headers.headers)
        try:
            ex.status = int(headers.get(":status", "0"))
        except ValueError:
            ex.status = 0
        ex.reader = UsageReader(
            headers.get("content-type", ""), headers.get("content-encoding", "")
        )
        common = _CONTINUE
        if ex.decision is not None:
            common = ep.CommonResponse(
                header_mutation=ep.HeaderMutation(
                    set_headers=[_set(DECISION_ID_HEADER, ex.decision.decision_id)]
                )
            )
        response = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=common))
        if h.end_of_stream:
            await self._report(ex, ended=True)
        return response

    async def _response_body(self, ex: _Exchange, b: ep.HttpBody) -> ep.ProcessingResponse:
        if ex.reader is not None:
            ex.reader.feed(b.body)
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=_CONTINUE))

    async def _response_trailers(self, ex: _Exchange, t: ep.HttpTrailers) -> ep.ProcessingResponse:
        if not ex.reported:
            await self._report(ex, ended=True)
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())

    # ------------------------------------------------------------- engine

    async def _decide(
        self, ex: _Exchange
    ) -> tuple[ep.ProcessingResponse | None, ep.CommonResponse]:
        """A refusal, or the mutations that carry an allowed decision upstream."""
        try:
            ex.request, parsed = decide_request(ex.headers, bytes(ex.body), self._attribute_headers)
            decision = await self.calls(self.calls.engine.decide, ex.request)
        except ValueError as exc:
            return _immediate(invalid_request(exc)), _CONTINUE
        ex.decision = decision
        if not decision.allowed:
            return _immediate(error_for_decision(decision)), _CONTINUE
        mine = decision_headers(decision)
        common = ep.CommonResponse(
            header_mutation=ep.HeaderMutation(
                set_headers=[_set(name, value) for name, value in mine],
                remove_headers=forged_headers(ex.headers, mine),
            )
        )
        if parsed is not None and decision.routed:
            body = with_model(parsed, decision.model)
            # BUFFERED body with SEND headers: content-length is the processor's to keep right
            common.header_mutation.set_headers.append(_set("content-length", str(len(body))))
            common.body_mutation.body = body
            common.clear_route_cache = True  # routes may match on x-tollway-model
        return None, common

    async def _report(self, ex: _Exchange, *, ended: bool) -> None:
        """Report the exchange: ``success`` or ``error`` by HTTP status when the answer ended
        (or stated its own end, such as a stream's ``[DONE]``), else ``incomplete``."""
        ex.reported = True
        decision = ex.decision
        if decision is None or not decision.allowed:
            return
        reader = ex.reader
        usage = (reader.finish() if reader is not None else None) or TokenUsage()
        complete = ended or (reader is not None and reader.complete)
        status = _status(ex.status) if complete and ex.status else "incomplete"
        attributes = dict(ex.request.get("attributes") or {})
        if ex.status:
            attributes["http_status"] = str(ex.status)
        if ex.request.get("request_id"):
            attributes[REQUEST_ID_HEADER] = ex.request["request_id"]
        if ex.reader is not None and ex.reader.problem:
            log.warning("usage of %s not read: %s", decision.decision_id, ex.reader.problem)
        report = {
            # the decision's id, unique per exchange: a client that sends a recycled
            # x-request-id cannot make a second answer count as a duplicate report
            "request_id": decision.decision_id,
            "decision_id": decision.decision_id,
            "user": _id_only(ex.request.get("user")),
            "group": _id_only(ex.request.get("group")),
            "model": decision.model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "duration_seconds": max(0.0, self._clock() - ex.started),
            "status": status,
            "attributes": attributes,
        }
        try:
            await self.calls(self.calls.engine.report, report)
        except Exception:  # the answer has gone to the client already; log, never fail it
            log.exception("report of decision %s failed", decision.decision_id)


def _status(http_status: int) -> str:
    return "success" if 200 <= http_status < 300 else "error"


def _id_only(entity: Any) -> dict[str, str] | None:
    """The entity's id: its metadata was merged when the request was decided."""
    return {"id": entity["id"]} if isinstance(entity, Mapping) else None
