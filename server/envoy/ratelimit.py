"""``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``: Envoy's rate-limit filter asks.

Envoy sends descriptors (lists of key/value entries built by its route's rate-limit
actions); tollway answers all of them with one ``Decide``:

- entries ``user``, ``group`` and ``model`` fill the identity, every other entry becomes a
  request attribute (``request.<key>`` in rules), and the domain becomes the attribute
  ``domain``; a key given two different values is a bad request.
- ``hits_addend`` (the request's, or the largest a descriptor sets) counts as that many
  requests against ``requests`` quotas; a descriptor ``hits_addend`` of 0 asks without
  consuming anything (a dry run).
- the answer is OK or OVER_LIMIT for the whole request; every descriptor status carries
  the tightest quota: ``current_limit`` (its limit, and the window as a unit where one
  fits), ``limit_remaining`` and ``duration_until_reset``.

A refusal also carries OpenAI's error body (``raw_body``) and ``retry-after``; Envoy answers
it with its rate-limited status (429 unless ``rate_limited_status`` says otherwise), whatever
the reason, since the protocol knows only "over limit". An allowed request goes upstream
with the decision headers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from google.protobuf.duration_pb2 import Duration

from tollway.dsl.ast import Window
from tollway.policy.model import Decision, QuotaStatus
from tollway.policy.validate import FieldError
from tollway.server.decision_headers import decision_headers
from tollway.server.engine_calls import EngineCalls
from tollway.server.grpc_service import rpc
from tollway.server.openai_errors import (
    DECISION_ID_HEADER,
    OpenAIError,
    error_for_decision,
    invalid_request,
)

__all__ = ["RateLimitService", "SERVICE_NAME", "tightest"]

SERVICE_NAME: str = rls.DESCRIPTOR.services_by_name["RateLimitService"].full_name

_Limit = rls.RateLimitResponse.RateLimit
_UNITS = {
    1: _Limit.SECOND,
    60: _Limit.MINUTE,
    3600: _Limit.HOUR,
    86400: _Limit.DAY,
    7 * 86400: _Limit.WEEK,
}
_CALENDAR_UNITS = {"day": _Limit.DAY, "week": _Limit.WEEK, "month": _Limit.MONTH}
_IDENTITY = ("user", "group", "model")
_UINT32 = 2**32 - 1


def tightest(quotas: tuple[QuotaStatus, ...]) -> QuotaStatus | None:
    """The quota a client should watch: the exceeded one with the longest wait, else the one
    with the least of its limit left."""
    exceeded = [q for q in quotas if q.exceeded]
    if exceeded:
        return max(exceeded, key=lambda q: q.retry_after)
    live = [q for q in quotas if q.limit > 0]
    return min(live, key=lambda q: q.remaining / q.limit, default=None)


def _unit(window: Window | None) -> int:
    if window is None:
        return _Limit.UNKNOWN
    if window.calendar is not None:
        return _CALENDAR_UNITS[window.calendar]
    return _UNITS.get(window.seconds or 0, _Limit.UNKNOWN)


def _seconds(value: float) -> Duration:
    whole = max(0, math.ceil(value))
    return Duration(seconds=whole)


def _merge(request: rls.RateLimitRequest) -> tuple[dict[str, Any], int | None]:
    """The decide request of all descriptors, and the hits they ask for (None: the default)."""
    entries: dict[str, str] = {}
    hits: int | None = None
    for i, descriptor in enumerate(request.descriptors):
        for entry in descriptor.entries:
            seen = entries.setdefault(entry.key, entry.value)
            if seen != entry.value:
                raise FieldError(
                    f"descriptors[{i}].{entry.key}", f"{entry.value!r} conflicts with {seen!r}"
                )
        if descriptor.HasField("hits_addend"):
            hits = max(hits or 0, descriptor.hits_addend.value)
    if hits is None and request.hits_addend:
        hits = request.hits_addend
    attributes = {k: v for k, v in entries.items() if k not in _IDENTITY}
    if request.domain:
        attributes.setdefault("domain", request.domain)
    wanted: dict[str, Any] = {
        "user": entries.get("user") or None,
        "group": entries.get("group") or None,
        "model": entries.get("model", ""),
        "attributes": attributes,
    }
    return wanted, hits


class RateLimitService(rls_grpc.RateLimitServiceServicer):
    """The rate-limit service over the engine that ``calls`` runs."""

    def __init__(self, calls: EngineCalls, *, clock: Callable[[], float] = time.time) -> None:
        self.calls = calls
        self._clock = clock

    @rpc
    async def ShouldRateLimit(
        self, request: rls.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls.RateLimitResponse:
        count = len(request.descriptors)
        try:
            wanted, hits = _merge(request)
            if hits == 0:
                wanted["dry_run"] = True
            engine = self.calls.engine
            decision = await self.calls(engine.decide, wanted, hits=max(hits or 1, 1))
        except ValueError as exc:
            return self._refusal(invalid_request(exc), None, count)
        if decision.allowed:
            return self._allowed(decision, count)
        return self._refusal(error_for_decision(decision), decision, count)

    def _status(
        self, code: int, decision: Decision | None
    ) -> rls.RateLimitResponse.DescriptorStatus:
        status = rls.RateLimitResponse.DescriptorStatus(code=code)
        quota = tightest(decision.quotas) if decision is not None else None
        if quota is None:
            return status
        declared = self.calls.engine.ruleset.quotas.get(quota.name)
        status.current_limit.CopyFrom(
            _Limit(
                name=quota.name,
                requests_per_unit=min(_UINT32, max(0, math.floor(quota.limit))),
                unit=_unit(declared.window if declared is not None else None),
            )
        )
        status.limit_remaining = min(_UINT32, max(0, math.floor(quota.remaining)))
        if quota.exceeded:
            wait = quota.retry_after
        elif quota.resets_at is not None:
            wait = quota.resets_at - self._clock()
        else:
            wait = 0.0
        status.duration_until_reset.CopyFrom(_seconds(wait))
        return status

    def _allowed(self, decision: Decision, count: int) -> rls.RateLimitResponse:
        status = self._status(rls.RateLimitResponse.OK, decision)
        return rls.RateLimitResponse(
            overall_code=rls.RateLimitResponse.OK,
            statuses=[status] * count,
            request_headers_to_add=[
                HeaderValue(key=name, value=value) for name, value in decision_headers(decision)
            ],
            response_headers_to_add=[
                HeaderValue(key=DECISION_ID_HEADER, value=decision.decision_id)
            ],
        )

    def _refusal(
        self, err: OpenAIError, decision: Decision | None, count: int
    ) -> rls.RateLimitResponse:
        status = self._status(rls.RateLimitResponse.OVER_LIMIT, decision)
        headers = [HeaderValue(key="content-type", value="application/json")]
        headers += [HeaderValue(key=name, value=value) for name, value in err.headers]
        return rls.RateLimitResponse(
            overall_code=rls.RateLimitResponse.OVER_LIMIT,
            statuses=[status] * count,
            response_headers_to_add=headers,
            raw_body=err.body_bytes(),
        )
