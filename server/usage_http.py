"""HTTP usage API: ``/v1/usage/{users,groups}[/{id}[/series]]``, ``/v1/usage/spikes``
and ``/v1/activity``.

The handlers only translate between query strings and the engine's usage calls, which
run off the event loop (they read the usage database). Listing pages link to their
neighbours the way Django REST framework's pagination does: ``next``/``previous`` are
absolute URLs (when the request named a plausible Host) with the same query and the new
offset, or the new ``cursor`` when the request paged by cursor. The activity export is
streamed in batches from a server-side cursor, so its memory does not grow with its
length.

Errors (the shape is in docs/api.md): a bad parameter -> 400 ``invalid_parameter``
naming it; an unknown id -> 404; the usage database unreachable -> 503; a server that
keeps no usage -> 501.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Protocol
from urllib.parse import quote, urlencode

from aiohttp import web

from tollway.policy.usage import Spike, UsageDetail, UsageEvent, UsageSeries
from tollway.policy.usage_query import (
    ActivityQuery,
    SeriesQuery,
    SpikeQuery,
    UsagePage,
    UsageQuery,
)
from tollway.policy.validate import KIND_NAMES, FieldError, need_kind

from .csv_export import CsvEncoder
from .http_errors import Handler, HttpError, json_response
from .http_routes import (
    add_route,
    first_values,
    offload,
    query_params,
    stream_response,
)
from .usage_csv import ACTIVITY_COLUMNS, activity_row

__all__ = ["UsageEngine", "ACTIVITY_COLUMNS", "ACTIVITY_BATCH", "page_link", "install"]

JSONL = "application/x-ndjson"
CSV = "text/csv; charset=utf-8"

# Events read per hop to the store's thread and written per chunk of the export.
ACTIVITY_BATCH = 256

# A Host header good enough to put in a link: a name or an IP literal, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


class UsageEngine(Protocol):
    """What these routes need from the engine."""

    def get_usage(self, kind: str, id: str) -> UsageDetail | None: ...

    def list_usage(self, query: UsageQuery) -> UsagePage: ...

    def usage_series(self, kind: str, id: str, query: SeriesQuery) -> UsageSeries | None: ...

    def list_spikes(self, query: SpikeQuery) -> list[Spike]: ...

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]: ...


def page_link(
    base: str,
    query: Mapping[str, Sequence[str]],
    offset: int | None = None,
    cursor: str | None = None,
) -> str | None:
    """``base`` with the request's query and its ``offset`` (dropped when 0) or its
    ``cursor`` replaced; None when neither is given (no such page)."""
    if offset is None and cursor is None:
        return None
    items = [(k, v) for k, vs in query.items() if k not in ("offset", "cursor") for v in vs[:1]]
    if cursor is not None:
        items.append(("cursor", cursor))
    elif offset:
        items.append(("offset", str(offset)))
    text = urlencode(items, quote_via=quote)
    return f"{base}?{text}" if text else base


def _links(base: str, query: Mapping[str, Sequence[str]], page: UsagePage) -> dict[str, object]:
    """``next``/``previous`` as URLs: by cursor when the request paged by cursor."""
    if "cursor" in query:
        return {"next": page_link(base, query, cursor=page.next_cursor),
                "previous": page_link(base, query, cursor=page.previous_cursor)}
    return {"next": page_link(base, query, page.next),
            "previous": page_link(base, query, page.previous)}


def _base(path: str, request: web.Request) -> str:
    host = request.headers.get("Host")
    return f"http://{host}{path}" if host and _HOST.fullmatch(host) else path


def _take(events: Iterator[UsageEvent], n: int) -> list[UsageEvent]:
    return list(islice(events, n))


def _jsonl(events: list[UsageEvent]) -> bytes:
    return b"".join(
        json.dumps(e.to_dict(), ensure_ascii=False).encode() + b"\n" for e in events
    )


Encode = Callable[[list[UsageEvent]], bytes]


def _export(fmt: str) -> tuple[dict[str, str], bytes, Encode]:
    """Headers, leading bytes and the batch encoder of an export format."""
    if fmt == "jsonl":
        return {"Content-Type": JSONL}, b"", _jsonl
    if fmt != "csv":
        raise FieldError("format", f"must be 'jsonl' or 'csv', got {fmt!r}")
    encoder = CsvEncoder()

    def encode(events: list[UsageEvent]) -> bytes:
        return encoder.encode(activity_row(event) for event in events)

    headers = {
        "Content-Type": CSV,
        "Content-Disposition": 'attachment; filename="tollway-activity.csv"',
    }
    return headers, encoder.encode([ACTIVITY_COLUMNS]), encode


def install(app: web.Application, engine: UsageEngine) -> None:
    """Add the usage routes to ``app``: plural and singular kinds (``admin`` in roles.py)."""

    async def activity(request: web.Request) -> web.StreamResponse:
        params = first_values(query_params(request))
        headers, head, encode = _export(params.pop("format", "") or "jsonl")
        query = ActivityQuery.parse(params)

        async def chunks() -> AsyncGenerator[bytes, None]:
            events = await offload(request, engine.activity, query)
            batch = await offload(request, _take, events, ACTIVITY_BATCH)
            yield head + encode(batch)  # the first read decides the status: 503 before any byte
            while len(batch) == ACTIVITY_BATCH:
                batch = await offload(request, _take, events, ACTIVITY_BATCH)
                yield encode(batch)

        return await stream_response(request, chunks(), headers=headers)

    def listing(kind: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            query = query_params(request)
            params = first_values(query)
            if "kind" in params:
                raise FieldError("kind", "unknown parameter (the kind is in the path)")
            page = await offload(request, engine.list_usage, UsageQuery.parse(params, kind=kind))
            base = _base(f"/v1/usage/{kind}", request)
            return json_response({**_links(base, query, page), **page.to_dict()})

        return handler

    def detail(kind: str) -> Handler:
        entity = need_kind(kind)

        async def handler(request: web.Request) -> web.Response:
            for name in query_params(request):
                raise FieldError(name, "unknown parameter (this route takes none)")
            ident = request.match_info["id"]  # the engine checks it (as user_id / group_id)
            found = await offload(request, engine.get_usage, entity, ident)
            if found is None:
                raise HttpError(404, f"no usage recorded for {entity} {ident!r}")
            return json_response(found.to_dict())

        return handler

    def series(kind: str) -> Handler:
        entity = need_kind(kind)

        async def handler(request: web.Request) -> web.Response:
            query = SeriesQuery.parse(first_values(query_params(request)))
            ident = request.match_info["id"]
            found = await offload(request, engine.usage_series, entity, ident, query)
            if found is None:
                raise HttpError(404, f"no usage recorded for {entity} {ident!r}")
            return json_response(found.to_dict())

        return handler

    async def spikes(request: web.Request) -> web.Response:
        query = SpikeQuery.parse(first_values(query_params(request)))
        found = await offload(request, engine.list_spikes, query)
        return json_response({
            "kind": query.kind,
            "metric": query.metric,
            "window": f"{query.window_hours}h",
            "baseline": f"{query.baseline_hours}h",
            "factor": query.factor,
            "min": query.min,
            "results": [s.to_dict() for s in found],
        })

    add_route(app, "GET", "/v1/usage/spikes", spikes)
    for kind in KIND_NAMES:  # /v1/usage/users/… and the singular /v1/usage/user/…
        add_route(app, "GET", f"/v1/usage/{kind}", listing(kind))
        add_route(app, "GET", f"/v1/usage/{kind}/{{id}}", detail(kind))
        add_route(app, "GET", f"/v1/usage/{kind}/{{id}}/series", series(kind))
    add_route(app, "GET", "/v1/activity", activity)
