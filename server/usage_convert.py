"""Usage values <-> ``tollway.v1`` messages (``GetUsage``, ``ListUsage``), field by field.

Requests become validated ``UsageQuery``s through ``UsageQuery.parse`` (the one place
listing parameters are checked), so gRPC and HTTP reject the same inputs alike. A
response's ``next``/``previous`` are the offsets of the neighbouring pages, unset when
there is none.
"""

from __future__ import annotations

from tollway.policy.usage import (
    DEFAULT_LIMIT,
    EntityKind,
    ModelUsage,
    UsageDetail,
    UsageEvent,
    UsagePage,
    UsageQuery,
    UsageRecord,
)
from tollway.policy.validate import FieldError
from tollway.v1 import tollway_pb2 as pb

from .convert import seconds_of, set_timestamp

__all__ = [
    "get_request",
    "list_request",
    "list_request_to_proto",
    "record_to_proto",
    "detail_to_proto",
    "page_to_proto",
    "get_request_to_proto",
    "record_from_proto",
    "detail_from_proto",
    "page_from_proto",
]


# ------------------------------------------------------------------ requests


def get_request(msg: pb.GetUsageRequest) -> tuple[EntityKind, str]:
    """``(kind, id)`` of a ``GetUsageRequest``; neither id set -> ``ValueError``."""
    which = msg.WhichOneof("subject")
    if which == "user_id":
        return "user", msg.user_id
    if which == "group_id":
        return "group", msg.group_id
    raise FieldError("user_id", "one of user_id or group_id is required")


def list_request(msg: pb.ListUsageRequest) -> UsageQuery:
    """A validated query; proto zero values mean the defaults (``limit`` 0 -> 25)."""
    return UsageQuery.parse(
        {
            "kind": msg.kind,
            "search": msg.search,
            "sort": msg.sort,
            "limit": msg.limit or DEFAULT_LIMIT,
            "offset": msg.offset,
            "start": seconds_of(msg.start) if msg.HasField("start") else None,
            "end": seconds_of(msg.end) if msg.HasField("end") else None,
        }
    )


def get_request_to_proto(kind: EntityKind, ident: str) -> pb.GetUsageRequest:
    """``get_request`` read back: the message that names one user's or group's usage."""
    return pb.GetUsageRequest(user_id=ident) if kind == "user" else pb.GetUsageRequest(group_id=ident)


# ------------------------------------------------------------------ to the wire


def list_request_to_proto(query: UsageQuery) -> pb.ListUsageRequest:
    """The ``ListUsageRequest`` that ``list_request`` reads back as ``query``."""
    msg = pb.ListUsageRequest(
        kind=query.kind, search=query.search, sort=query.sort, limit=query.limit,
        offset=query.offset,
    )
    if query.start is not None:
        set_timestamp(msg.start, query.start)
    if query.end is not None:
        set_timestamp(msg.end, query.end)
    return msg


def record_to_proto(rec: UsageRecord, out: pb.UsageRecord | None = None) -> pb.UsageRecord:
    out = pb.UsageRecord() if out is None else out
    out.user_id = rec.user_id
    out.group_id = rec.group_id
    out.request_count = rec.request_count
    set_timestamp(out.first_seen, rec.first_seen)
    set_timestamp(out.last_seen, rec.last_seen)
    out.total_tokens = rec.total_tokens
    out.input_tokens = rec.input_tokens
    out.output_tokens = rec.output_tokens
    out.total_cost = rec.total_cost
    out.total_duration = rec.total_duration
    for m in rec.models:
        out.models.add(
            model=m.model,
            request_count=m.request_count,
            total_tokens=m.total_tokens,
            total_cost=m.total_cost,
        )
    return out


def _event_to_proto(event: UsageEvent, out: pb.UsageEvent) -> None:
    set_timestamp(out.time, event.time)
    out.request_id = event.request_id
    out.decision_id = event.decision_id
    out.user_id = event.user_id
    out.group_id = event.group_id
    out.model = event.model
    out.input_tokens = event.input_tokens
    out.output_tokens = event.output_tokens
    out.cost_usd = event.cost_usd
    out.duration_seconds = event.duration_seconds
    out.status = event.status


def detail_to_proto(detail: UsageDetail) -> pb.UsageDetail:
    out = pb.UsageDetail()
    record_to_proto(detail.usage, out.usage)
    for model, cost in detail.cost_by_model.items():
        out.cost_by_model[model] = cost
    for event in detail.recent_reports:
        _event_to_proto(event, out.recent_reports.add())
    return out


def page_to_proto(page: UsagePage) -> pb.ListUsageResponse:
    out = pb.ListUsageResponse(count=page.count)
    if page.next is not None:
        out.next = page.next
    if page.previous is not None:
        out.previous = page.previous
    for rec in page.results:
        record_to_proto(rec, out.results.add())
    return out


# ------------------------------------------------------------------ from the wire


def record_from_proto(msg: pb.UsageRecord) -> UsageRecord:
    kind: EntityKind = "group" if msg.group_id and not msg.user_id else "user"
    return UsageRecord(
        kind=kind,
        id=msg.user_id or msg.group_id,
        request_count=msg.request_count,
        first_seen=seconds_of(msg.first_seen),
        last_seen=seconds_of(msg.last_seen),
        total_tokens=msg.total_tokens,
        input_tokens=msg.input_tokens,
        output_tokens=msg.output_tokens,
        total_cost=msg.total_cost,
        total_duration=msg.total_duration,
        models=tuple(
            ModelUsage(m.model, m.request_count, m.total_tokens, m.total_cost)
            for m in msg.models
        ),
    )


def detail_from_proto(msg: pb.UsageDetail) -> UsageDetail:
    recent = tuple(
        UsageEvent(
            time=seconds_of(e.time),
            request_id=e.request_id,
            decision_id=e.decision_id,
            user_id=e.user_id,
            group_id=e.group_id,
            model=e.model,
            input_tokens=e.input_tokens,
            output_tokens=e.output_tokens,
            cost_usd=e.cost_usd,
            duration_seconds=e.duration_seconds,
            status=e.status,
        )
        for e in msg.recent_reports
    )
    return UsageDetail(record_from_proto(msg.usage), dict(msg.cost_by_model), recent)


def page_from_proto(msg: pb.ListUsageResponse, query: UsageQuery) -> UsagePage:
    """A page as received; ``query`` is the one the request was built from."""
    results = tuple(record_from_proto(r) for r in msg.results)
    return UsagePage.build(query, results, msg.count)
