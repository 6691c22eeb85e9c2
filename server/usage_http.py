"""HTTP usage API: ``/v1/usage/{users,groups}[/{id}[/series]]``, ``/v1/usage/spikes``
and ``/v1/activity``.

The handlers are pure functions ``(engine, …) -> HttpResult`` (status, headers, body
chunks) that only translate to and from the engine's usage calls; ``install`` plugs them
into the server's router. Listing pages link to their neighbours the way Django REST
framework's pagination does: ``next``/``previous`` are absolute URLs (when the request
named its Host) with the same query and the new offset, or the new ``cursor`` when the
request paged by cursor.

Errors: a bad parameter -> 400 ``{"error", "parameter"}``; an unknown id -> 404; the
usage database unreachable -> 503; an engine without usage -> 501.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from tollway.policy.usage import (
    Spike,
    UsageDetail,
    UsageEvent,
    UsageParamError,
    UsageSeries,
    UsageUnavailable,
    need_id,
)
from tollway.policy.usage_query import (
    ActivityQuery,
    SeriesQuery,
    SpikeQuery,
    UsagePage,
    UsageQuery,
)

__all__ = [
    "HttpResult",
    "UsageEngine",
    "ACTIVITY_COLUMNS",
    "list_usage",
    "get_usage",
    "usage_series",
    "list_spikes",
    "activity",
    "page_link",
    "install",
]

JSON = "application/json"
JSONL = "application/x-ndjson"
CSV = "text/csv; charset=utf-8"

ACTIVITY_COLUMNS: tuple[str, ...] = (
    "time", "kind", "request_id", "decision_id", "user_id", "group_id", "model",
    "input_tokens", "output_tokens", "total_tokens", "cost_usd", "duration_seconds",
    "status", "counts_request", "attributes",
)


class UsageEngine(Protocol):
    """What these handlers need from the engine."""

    def get_usage(self, kind: str, id: str) -> UsageDetail | None: ...

    def list_usage(self, query: UsageQuery) -> UsagePage: ...

    def usage_series(self, kind: str, id: str, query: SeriesQuery) -> UsageSeries | None: ...

    def list_spikes(self, query: SpikeQuery) -> list[Spike]: ...

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]: ...


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: Iterable[bytes]

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "content-type"), JSON)

    def read(self) -> bytes:
        return b"".join(self.body)


def _json(data: Any, status: int = 200) -> HttpResult:
    body = json.dumps(data, ensure_ascii=False).encode() + b"\n"
    return HttpResult(status, (("Content-Type", JSON),), (body,))


def _error(status: int, message: str, parameter: str | None = None) -> HttpResult:
    data = {"error": message}
    if parameter is not None:
        data["parameter"] = parameter
    return _json(data, status)


def _first(query: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """One value per parameter: the first, as most frameworks do."""
    return {k: v[0] for k, v in query.items() if v}


def _guarded(call: Callable[[], HttpResult]) -> HttpResult:
    """The one place errors become status codes."""
    try:
        return call()
    except UsageParamError as exc:
        return _error(400, str(exc), exc.parameter)
    except ValueError as exc:
        return _error(400, str(exc))
    except UsageUnavailable:
        return _error(503, "usage database unavailable")
    except NotImplementedError:
        return _error(501, "usage is not available")


def _engine_call(engine: Any, name: str) -> Callable[..., Any]:
    method = getattr(engine, name, None)
    if method is None:
        raise NotImplementedError(name)
    return method


# ------------------------------------------------------------------ links


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


def _base(path: str, host: str | None) -> str:
    return f"http://{host}{path}" if host else path


# ------------------------------------------------------------------ handlers


def list_usage(
    engine: UsageEngine,
    kind: str,
    query: Mapping[str, Sequence[str]],
    *,
    path: str = "",
    host: str | None = None,
) -> HttpResult:
    """``GET /v1/usage/{users|groups}``: one page with ``results``, ``count``, links."""

    def run() -> HttpResult:
        params = _first(query)
        if "kind" in params:
            raise UsageParamError("kind", "unknown parameter (the kind is in the path)")
        q = UsageQuery.parse(params, kind=kind)
        page: UsagePage = _engine_call(engine, "list_usage")(q)
        base = _base(path or f"/v1/usage/{kind}", host)
        if "cursor" in query:  # the client pages by cursor: so do the links
            links = (page_link(base, query, cursor=page.next_cursor),
                     page_link(base, query, cursor=page.previous_cursor))
        else:
            links = (page_link(base, query, page.next), page_link(base, query, page.previous))
        return _json({"next": links[0], "previous": links[1], **page.to_dict()})

    return _guarded(run)


def get_usage(engine: UsageEngine, kind: str, ident: str) -> HttpResult:
    """``GET /v1/usage/{users|groups}/{id}``: aggregates, cost by model, recent reports."""

    def run() -> HttpResult:
        entity = "user" if kind == "users" else "group"
        need_id(ident)
        detail: UsageDetail | None = _engine_call(engine, "get_usage")(entity, ident)
        if detail is None:
            return _error(404, f"no usage recorded for {entity} {ident!r}")
        return _json(detail.to_dict())

    return _guarded(run)


def usage_series(
    engine: UsageEngine, kind: str, ident: str, query: Mapping[str, Sequence[str]]
) -> HttpResult:
    """``GET /v1/usage/{users|groups}/{id}/series``: a metric per hour or day."""

    def run() -> HttpResult:
        entity = "user" if kind == "users" else "group"
        need_id(ident)
        q = SeriesQuery.parse(_first(query))
        series: UsageSeries | None = _engine_call(engine, "usage_series")(entity, ident, q)
        if series is None:
            return _error(404, f"no usage recorded for {entity} {ident!r}")
        return _json(series.to_dict())

    return _guarded(run)


def list_spikes(engine: UsageEngine, query: Mapping[str, Sequence[str]]) -> HttpResult:
    """``GET /v1/usage/spikes``: who spiked in the last window."""

    def run() -> HttpResult:
        q = SpikeQuery.parse(_first(query))
        spikes: list[Spike] = _engine_call(engine, "list_spikes")(q)
        return _json({
            "kind": q.kind,
            "metric": q.metric,
            "window": f"{q.window_hours}h",
            "baseline": f"{q.baseline_hours}h",
            "factor": q.factor,
            "min": q.min,
            "results": [s.to_dict() for s in spikes],
        })

    return _guarded(run)


def activity(engine: UsageEngine, query: Mapping[str, Sequence[str]]) -> HttpResult:
    """``GET /v1/activity``: the report log, newest first, as JSON lines or CSV."""

    def run() -> HttpResult:
        params = _first(query)
        fmt = params.pop("format", "jsonl") or "jsonl"
        if fmt not in ("jsonl", "csv"):
            raise UsageParamError("format", f"must be 'jsonl' or 'csv', got {fmt!r}")
        q = ActivityQuery.parse(params)
        events = iter(_engine_call(engine, "activity")(q))
        # pull the first event now, so that an unreachable database is a 503, not a cut stream
        first = next(events, None)
        stream = chain(() if first is None else (first,), events)
        if fmt == "csv":
            headers = (
                ("Content-Type", CSV),
                ("Content-Disposition", 'attachment; filename="tollway-activity.csv"'),
            )
            return HttpResult(200, headers, _csv_rows(stream))
        return HttpResult(200, (("Content-Type", JSONL),), _json_lines(stream))

    return _guarded(run)


def _json_lines(events: Iterable[UsageEvent]) -> Iterator[bytes]:
    for event in events:
        yield json.dumps(event.to_dict(), ensure_ascii=False).encode() + b"\n"


def _csv_rows(events: Iterable[UsageEvent]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ACTIVITY_COLUMNS)
    for event in events:
        row = event.to_dict()
        row["attributes"] = json.dumps(row["attributes"], ensure_ascii=False, sort_keys=True)
        row["counts_request"] = "true" if row["counts_request"] else "false"
        writer.writerow([row[c] for c in ACTIVITY_COLUMNS])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # only the header: no events
        yield buffer.getvalue().encode()


# ------------------------------------------------------------------ router adapter


def install(router: Any, engine: Any) -> None:
    """Register the usage routes on the HTTP server's ``Router``.

    Listings and details are sent whole; the activity export is streamed chunk by chunk.
    """
    from .http import Request, Response  # the transport, imported only when serving

    def respond(result: HttpResult, *, stream: bool = False) -> Response:
        headers = tuple((k, v) for k, v in result.headers if k.lower() != "content-type")
        body = iter(result.body) if stream else result.read()
        return Response(result.status, body, result.content_type, headers)

    def host(request: Request) -> str | None:
        return next((v for k, v in request.headers.items() if k.lower() == "host"), None)

    router.add("GET", "/v1/usage/spikes", lambda request: respond(list_spikes(engine, request.query)))
    for kind in ("users", "groups"):

        def listing(request: Request, kind: str = kind) -> Response:
            return respond(
                list_usage(engine, kind, request.query, path=request.path, host=host(request))
            )

        def detail(request: Request, kind: str = kind) -> Response:
            return respond(get_usage(engine, kind, request.params["id"]))

        def series(request: Request, kind: str = kind) -> Response:
            return respond(usage_series(engine, kind, request.params["id"], request.query))

        router.add("GET", f"/v1/usage/{kind}", listing)
        router.add("GET", f"/v1/usage/{kind}/{{id}}", detail)
        router.add("GET", f"/v1/usage/{kind}/{{id}}/series", series)

    router.add(
        "GET",
        "/v1/activity",
        lambda request: respond(activity(engine, request.query), stream=True),
    )
