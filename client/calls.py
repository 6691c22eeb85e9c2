"""Each client method, defined once: the request it sends and how its answer is read.

A builder validates its arguments with the engine's own parsers (so a bad request raises
the same ``ValueError``, naming the same field, as the in-process ``Engine``, and before
anything is sent), converts them to the message, and returns a ``Call``: the RPC to
invoke, the message, how to turn the reply into the engine's dataclass, and what to
answer instead when the sidecar fails (``recover``). ``Client`` and ``AsyncClient`` run
the same ``Call``s; they differ only in how they wait for the reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypedDict, TypeVar, Unpack

from grpc_health.v1 import health_pb2

from tollway.policy.entities import EntityView
from tollway.policy.model import (
    DecideRequest,
    Decision,
    EntityRef,
    Explanation,
    ReportAck,
    UsageReport,
)
from tollway.policy.usage import UsageDetail
from tollway.policy.usage_query import UsagePage, UsageQuery
from tollway.policy.validate import need_groups, need_id, need_kind
from tollway.server import convert, usage_convert
from tollway.server.convert import dict_to_struct
from tollway.v1 import tollway_pb2 as pb

from .errors import SidecarError

if TYPE_CHECKING:
    from .failure import FailurePolicy

__all__ = [
    "Call",
    "EntityLike",
    "DecideFields",
    "ReportFields",
    "SERVICE",
    "decide",
    "explain",
    "report",
    "upsert_entity",
    "get_entity",
    "get_usage",
    "list_usage",
    "ready",
]

R = TypeVar("R")

SERVICE: str = pb.DESCRIPTOR.services_by_name["Tollway"].full_name

# A user or group: its id, or {"id": ..., "metadata": {...}}.
EntityLike: TypeAlias = str | Mapping[str, Any]
CallKind = Literal["decide", "report", "admin"]


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One RPC to make: ``method`` is a Tollway RPC name or ``"Health.Check"``."""

    method: str
    request: Any
    answer: Callable[[Any], R]
    kind: CallKind = "admin"
    # what to answer when the sidecar fails; None: raise the failure
    recover: Callable[[SidecarError, FailurePolicy], R] | None = None
    timeout: float | None = None  # None: the client's default for ``kind``
    wait_for_ready: bool = False


class DecideFields(TypedDict, total=False):
    """The fields of a ``DecideRequest``, as ``Engine.decide`` takes them in a mapping."""

    request_id: str
    user: EntityLike | None
    group: EntityLike | None
    model: str
    attributes: Mapping[str, str] | None
    estimate: Mapping[str, float] | None
    dry_run: bool


class ReportFields(TypedDict, total=False):
    """The fields of a ``UsageReport``, as ``Engine.report`` takes them in a mapping."""

    request_id: str
    decision_id: str
    user: EntityLike | None
    group: EntityLike | None
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: float
    duration_seconds: float
    status: str
    attributes: Mapping[str, str] | None


def _merged(request: Any, fields: Mapping[str, Any], name: str) -> Any:
    """The request a call names: a mapping (or parsed value), keyword fields, or both
    (the keywords win)."""
    if not fields:
        return {} if request is None else request
    if request is None:
        return fields
    if not isinstance(request, Mapping):
        raise TypeError(f"{name}: pass keyword fields with a mapping, not with a {type(request).__name__}")
    return {**request, **fields}


def _decide_request(request: Any, fields: Mapping[str, Any]) -> DecideRequest:
    return DecideRequest.parse(_merged(request, fields, "request"))


def decide(
    request: Mapping[str, Any] | DecideRequest | None = None,
    /,
    *,
    timeout: float | None = None,
    **fields: Unpack[DecideFields],
) -> Call[Decision]:
    """May this request go, under which quotas, with which checks, to which model?

    Takes what ``Engine.decide`` takes (a mapping), keyword fields, or both. When the
    sidecar fails or misses the deadline, answers by the client's ``on_error`` with
    reason ``STORE_UNAVAILABLE`` (and counts it) instead of raising. Raises
    ``ValueError`` naming the field for a malformed request.
    """
    req = _decide_request(request, fields)
    model = req.model
    return Call(
        "Decide",
        convert.decide_request_to_proto(req),
        convert.decision_from_proto,
        "decide",
        lambda error, policy: policy.decision(error, model),
        timeout,
    )


def explain(
    request: Mapping[str, Any] | DecideRequest | None = None,
    /,
    *,
    timeout: float | None = None,
    **fields: Unpack[DecideFields],
) -> Call[Explanation]:
    """The decision ``decide`` would give, with the rule trace; nothing consumed or stored."""
    req = _decide_request(request, fields)
    return Call(
        "Explain",
        convert.decide_request_to_proto(req),
        convert.explanation_from_proto,
        timeout=timeout,
    )


def report(
    report: Mapping[str, Any] | UsageReport | None = None,
    /,
    *,
    timeout: float | None = None,
    **fields: Unpack[ReportFields],
) -> Call[ReportAck]:
    """What a request really used; idempotent per ``request_id`` (required).

    When the sidecar fails or misses the deadline, the report is queued and sent again,
    with the same ``request_id``, in the background; the answer is then a ``ReportAck``
    whose ``outcome`` is ``"queued"`` (or ``"dropped"`` when the queue is full).
    """
    rep = UsageReport.parse(_merged(report, fields, "report"))
    message = convert.usage_report_to_proto(rep)
    return Call(
        "Report",
        message,
        convert.ack_from_proto,
        "report",
        lambda error, policy: policy.report_failed(error, message),
        timeout,
    )


def upsert_entity(
    kind: str,
    id: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    groups: Sequence[str] = (),
    replace: bool = False,
    timeout: float | None = None,
) -> Call[EntityView]:
    """Set a user's or group's metadata ahead of time; ``groups`` links a user to groups."""
    # the engine's checks, in the engine's order: the same request fails the same way
    entity_kind = need_kind(kind)
    ref = EntityRef.of(id, metadata, entity_kind)
    group_ids = need_groups(groups, entity_kind)
    message = pb.UpsertEntityRequest(kind=entity_kind, id=ref.id, groups=group_ids, replace=replace)
    if ref.metadata is not None:
        dict_to_struct(ref.metadata, message.metadata)
    return Call("UpsertEntity", message, convert.entity_from_proto, timeout=timeout)


def _none_if_not_found(error: SidecarError, policy: FailurePolicy) -> None:
    if error.code == "NOT_FOUND":
        return None
    raise error


def get_entity(kind: str, id: str, *, timeout: float | None = None) -> Call[EntityView | None]:
    """The stored user or group with its metadata and links; None if never seen."""
    message = pb.GetEntityRequest(kind=need_kind(kind), id=need_id(id, "id"))
    return Call(
        "GetEntity", message, convert.entity_from_proto, recover=_none_if_not_found,
        timeout=timeout,
    )


def get_usage(kind: str, id: str, *, timeout: float | None = None) -> Call[UsageDetail | None]:
    """One user's or group's usage: aggregates, cost by model, recent reports; None if none."""
    entity_kind = need_kind(kind)
    message = usage_convert.get_request_to_proto(entity_kind, need_id(id, f"{entity_kind}_id"))
    return Call(
        "GetUsage", message, usage_convert.detail_from_proto, recover=_none_if_not_found,
        timeout=timeout,
    )


def list_usage(
    query: Mapping[str, Any] | UsageQuery | None = None,
    /,
    *,
    timeout: float | None = None,
    **params: Any,
) -> Call[UsagePage]:
    """A page of users or groups (``kind``), sorted, searched and filtered."""
    parsed = UsageQuery.parse(query, **params)
    return Call(
        "ListUsage",
        usage_convert.list_request_to_proto(parsed),
        lambda reply: usage_convert.page_from_proto(reply, parsed),
        timeout=timeout,
    )


def _serving(reply: health_pb2.HealthCheckResponse) -> bool:
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _not_ready(error: SidecarError, policy: FailurePolicy) -> bool:
    return False


def ready(*, timeout: float = 5.0) -> Call[bool]:
    """True once the sidecar answers health checks as SERVING; waits up to ``timeout``."""
    return Call(
        "Health.Check",
        health_pb2.HealthCheckRequest(service=SERVICE),
        _serving,
        recover=_not_ready,
        timeout=timeout,
        wait_for_ready=True,
    )
