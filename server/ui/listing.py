"""The Users and Groups pages: the usage listing as a table.

Sorting, searching, the period and paging are plain links and GET forms, so the page
works without JavaScript. The query is the engine's (``UsageQuery``): whatever it
refuses is shown above the table with a 400, naming the parameter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tollway.policy.engine import Engine
from tollway.policy.usage import UsageRecord
from tollway.policy.usage_query import DEFAULT_LIMIT, DEFAULT_SORT, UsagePage
from tollway.policy.validate import FieldError

from ..http_routes import first_values, offload, query_params
from .pages import KINDS, layout, link
from .period import CHOICES, Period
from .render import entity_path, html_response

__all__ = ["COLUMNS", "Column", "Row", "listing_page"]

# Parameters of the listing that the page passes on to the engine as they are.
_PASSED = ("search", "sort", "limit", "offset", "cursor")


@dataclass(frozen=True, slots=True)
class Column:
    """A sortable column: its sort field and heading."""

    field: str
    heading: str
    numeric: bool = True


COLUMNS: tuple[Column, ...] = (
    Column("request_count", "Requests"),
    Column("total_tokens", "Tokens"),
    Column("total_cost", "Cost"),
    Column("first_seen", "First seen", numeric=False),
    Column("last_seen", "Last seen", numeric=False),
)


@dataclass(frozen=True, slots=True)
class Header:
    """A column heading as drawn: where clicking it goes and how the table is sorted by it."""

    column: Column
    href: str
    aria_sort: str  # "ascending", "descending" or "none"


@dataclass(frozen=True, slots=True)
class Row:
    record: UsageRecord
    href: str


def _query_of(params: Mapping[str, str], kind: str, period: Period) -> dict[str, Any]:
    query: dict[str, Any] = {k: params[k] for k in _PASSED if params.get(k)}
    query["kind"] = kind
    query["start"] = period.start
    query["end"] = period.end
    return query


def _headers(path: str, sort: str, keep: list[tuple[str, str]]) -> tuple[Header, ...]:
    field, descending = sort.lstrip("-"), sort.startswith("-")
    out = []
    for column in COLUMNS:
        if column.field == field:
            target = column.field if descending else f"-{column.field}"
            aria = "descending" if descending else "ascending"
        else:
            target, aria = f"-{column.field}", "none"
        out.append(Header(column, link(path, [*keep, ("sort", target)]), aria))
    return tuple(out)


def listing_page(engine: Engine, segment: str) -> Any:
    kind, title = KINDS[segment]
    path = f"/ui/{segment}"

    async def handler(request: web.Request) -> web.Response:
        params = first_values(query_params(request))
        now = time.time()
        error: FieldError | None = None
        result: UsagePage | None = None
        try:
            period = Period.parse(params, now)
        except FieldError as exc:
            period, error = Period("all"), exc
        sort = params.get("sort") or DEFAULT_SORT
        if error is None:
            try:
                result = await offload(
                    request, engine.list_usage, _query_of(params, segment, period)
                )
            except FieldError as exc:
                error = exc
        if result is not None:
            sort = result.query.sort
        search = params.get("search", "")
        keep = [*([("search", search)] if search else []), *period.params()]
        context = {
            "page": layout(request, engine, title, segment),
            "kind": kind,
            "path": path,
            "title": title,
            "search": search,
            "sort": sort,
            "period": period,
            "choices": CHOICES,
            "headers": _headers(path, sort, keep),
            "rows": [] if result is None else [
                Row(r, link(entity_path(kind, r.id), period.params())) for r in result.results
            ],
            "result": result,
            "error": error,
            "previous": _page_link(path, result, keep, sort, previous=True),
            "next": _page_link(path, result, keep, sort, previous=False),
        }
        return html_response("listing.html", context, status=400 if error else 200)

    return handler


def _page_link(
    path: str, result: UsagePage | None, keep: list[tuple[str, str]], sort: str,
    *, previous: bool,
) -> str | None:
    if result is None:
        return None
    offset = result.previous if previous else result.next
    if offset is None:
        return None
    params = [*keep, ("sort", sort)]
    if result.query.limit != DEFAULT_LIMIT:
        params.append(("limit", str(result.query.limit)))
    if offset:
        params.append(("offset", str(offset)))
    return link(path, params)
