"""Usage values <-> ``tollway.v1`` messages (``GetUsage``, ``ListUsage``,
``GetUsageSeries``, ``ListSpikes``), field by field.

Requests become validated queries through the ``parse`` of ``tollway.policy.usage_query``
(the one place parameters are checked), so gRPC and HTTP reject the same inputs alike.
"""

from __future__ import annotations

from typing import Any

from tollway.policy.usage import (
    ModelUsage,
    Spike,
    UsageDetail,
    UsageEvent,
    UsageRecord,
    UsageSeries,
)
from tollway.policy.usage_query import DEFAULT_LIMIT, SeriesQuery, SpikeQuery, UsagePage, UsageQuery
from tollway.policy.validate import EntityKind, FieldError, need_id
from tollway.v1 import tollway_pb2 as pb

from .convert import seconds_of, set_timestamp

__all__ = [
    "subject",
    "list_request",
    "list_request_to_proto",
    "get_request_to_proto",
    "series_request",
    "spikes_request",
    "record_to_proto",
    "detail_to_proto",
    "page_to_proto",
    "series_to_proto",
    "spikes_to_proto",
    "record_from_proto",
    "detail_from_proto",
    "page_from_proto",
    "spikes_from_proto",
]


def _optional_time(msg: Any, name: str) -> float | None:
    return seconds_of(getattr(msg, name)) if msg.HasField(name) else None


# ------------------------------------------------------------------ requests


def subject(msg: pb.GetUsageRequest | pb.UsageSeriesRequest) -> tuple[EntityKind, str]:
    """``(kind, id)`` of a request's ``subject`` oneof, the id checked; neither id set, or
    a bad id -> ``ValueError`` naming the field."""
    which = msg.WhichOneof("subject")
    if which == "user_id":
        return "user", need_id(msg.user_id, "user_id")
    if which == "group_id":
        return "group", need_id(msg.group_id, "group_id")
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
            "start": _optional_time(msg, "start"),
            "end": _optional_time(msg, "end"),
            "cursor": msg.cursor,
        }
    )


def series_request(msg: pb.UsageSeriesRequest) -> SeriesQuery:
    return SeriesQuery.parse(
        {
            "metric": msg.metric,
            "step": msg.step,
            "start": _optional_time(msg, "start"),
            "end": _optional_time(msg, "end"),
        }
    )


def spikes_request(msg: pb.ListSpikesRequest) -> SpikeQuery:
    return SpikeQuery.parse(
        {
            "kind": msg.kind,
            "metric": msg.metric,
            "window": msg.window,
            "baseline": msg.baseline,
            "factor": msg.factor if msg.HasField("factor") else None,
            "min": msg.min if msg.HasField("min") else None,
            "limit": msg.limit or DEFAULT_LIMIT,
        }
    )


def get_request_to_proto(kind: EntityKind, ident: str) -> pb.GetUsageRequest:
    """``subject`` read back: the message that names one user's or group's usage."""
    return pb.GetUsageRequest(user_id=ident) if kind == "user" else pb.GetUsageRequest(group_id=ident)


# ------------------------------------------------------------------ to the wire


def list_request_to_proto(query: UsageQuery) -> pb.ListUsageRequest:
    """The ``ListUsageRequest`` that ``list_request`` reads back as ``query``."""
    msg = pb.ListUsageRequest(
        kind=query.kind, search=query.search, sort=query.sort, limit=query.limit,
        offset=query.offset, cursor="" if query.cursor is None else query.cursor.encode(),
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
    out = pb.ListUsageResponse(
        count=page.count,
        next_cursor=page.next_cursor or "",
        previous_cursor=page.previous_cursor or "",
    )
    if page.next is not None:
        out.next = page.next
    if page.previous is not None:
        out.previous = page.previous
    if page.period is not None:
        set_timestamp(out.period_start, page.period[0])
        set_timestamp(out.period_end, page.period[1])
    for rec in page.results:
        record_to_proto(rec, out.results.add())
    return out


def series_to_proto(series: UsageSeries) -> pb.UsageSeries:
    out = pb.UsageSeries(metric=series.metric, step=series.step)
    if series.kind == "user":
        out.user_id = series.id
    else:
        out.group_id = series.id
    set_timestamp(out.start, series.start)
    set_timestamp(out.end, series.end)
    for point in series.points:
        set_timestamp(out.points.add(value=point.value).time, point.time)
    return out


def spikes_to_proto(spikes: list[Spike]) -> pb.ListSpikesResponse:
    out = pb.ListSpikesResponse()
    for s in spikes:
        item = out.results.add(window_amount=s.window_amount, baseline_average=s.baseline_average)
        if s.kind == "user":
            item.user_id = s.id
        else:
            item.group_id = s.id
        if s.ratio is not None:
            item.ratio = s.ratio
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
    period = (
        (seconds_of(msg.period_start), seconds_of(msg.period_end)) if msg.HasField("period_start") else None
    )
    return UsagePage(
        results=tuple(record_from_proto(r) for r in msg.results),
        count=msg.count,
        next=msg.next if msg.HasField("next") else None,
        previous=msg.previous if msg.HasField("previous") else None,
        query=query,
        next_cursor=msg.next_cursor or None,
        previous_cursor=msg.previous_cursor or None,
        period=period,
    )


def spikes_from_proto(msg: pb.ListSpikesResponse, kind: EntityKind) -> list[Spike]:
    return [
        Spike(
            kind, s.user_id or s.group_id, s.window_amount, s.baseline_average,
            s.ratio if s.HasField("ratio") else None,
        )
        for s in msg.results
    ]
