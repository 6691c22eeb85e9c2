"""A user's or group's page: totals, a chart of cost and requests over the chosen
period, cost by model, recent reports, metadata and memberships, and the quotas that
apply to it now.

The chart reads the engine's ``usage_series`` for cost and for requests over the same
steps: hourly for a period of up to 7 days, daily beyond.

The quotas come from the engine's ``explain`` of a typical request of the entity (its
latest report's model, group and attributes; else its busiest model): nothing is
consumed, and the page shows the request it asked about.

When the counter store cannot answer, the page still shows the usage, and says that the
metadata, memberships and quota counters cannot be read now.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tollway.policy.engine import Engine
from tollway.policy.entities import EntityView
from tollway.policy.model import Explanation
from tollway.policy.stores.base import StoreUnavailable
from tollway.policy.usage import UsageDetail

from ..http_errors import HttpError
from ..http_routes import first_values, offload, query_params
from .chart import Chart
from .pages import KINDS, layout
from .period import CHOICES, Period
from .render import entity_path, html_response

__all__ = ["MAX_LINKS", "HOURLY_UP_TO", "ModelShare", "typical_request", "usage_chart",
           "detail_page"]

# Memberships shown on the page (a group may have very many members).
MAX_LINKS = 100
# The longest period charted hour by hour; longer ones are charted by day.
HOURLY_UP_TO = 7 * 86400
STEP_SECONDS = {"1h": 3600, "1d": 86400}


@dataclass(frozen=True, slots=True)
class ModelShare:
    model: str
    request_count: int
    total_tokens: int
    total_cost: float
    share: float  # of the entity's cost, 0..1


def typical_request(
    kind: str, ident: str, usage: UsageDetail | None
) -> dict[str, Any] | None:
    """The request an explain of "what applies to it now" asks about; None when the
    entity never named a model (a decision needs one)."""
    latest = usage.recent_reports[0] if usage is not None and usage.recent_reports else None
    model = latest.model if latest is not None else ""
    if not model and usage is not None and usage.usage.models:
        model = max(usage.usage.models, key=lambda m: m.request_count).model
    if not model:
        return None
    request: dict[str, Any] = {kind: {"id": ident}, "model": model}
    if latest is not None:
        if kind == "user" and latest.group_id:
            request["group"] = {"id": latest.group_id}
        if latest.attributes:
            request["attributes"] = dict(latest.attributes)
    return request


def _shares(usage: UsageDetail | None) -> list[ModelShare]:
    if usage is None:
        return []
    total = usage.usage.total_cost
    return [
        ModelShare(
            m.model, m.request_count, m.total_tokens, m.total_cost,
            m.total_cost / total if total > 0 else 0.0,
        )
        for m in usage.usage.models
    ]


def usage_chart(
    engine: Engine, kind: str, ident: str, period: Period, first_seen: float, now: float
) -> Chart | None:
    """Cost and requests per step over ``period`` (from ``first_seen`` when it is open)."""
    start, end = period.span(first_seen, now)
    step = "1h" if end - start <= HOURLY_UP_TO else "1d"
    span = {"step": step, "start": start, "end": end}
    cost = engine.usage_series(kind, ident, {**span, "metric": "cost"})
    requests = engine.usage_series(kind, ident, {**span, "metric": "requests"})
    if cost is None or requests is None:
        return None
    return Chart.of(
        [p.time for p in cost.points],
        [p.value for p in cost.points],
        [p.value for p in requests.points],
        step=step,
        step_seconds=STEP_SECONDS[step],
    )


def _explain(engine: Engine, request: Mapping[str, Any] | None) -> Explanation | None:
    return None if request is None else engine.explain(request)


def _entity(engine: Engine, kind: str, ident: str) -> tuple[EntityView | None, str]:
    """The stored entity, and why it could not be read ("" when it could)."""
    try:
        return engine.get_entity(kind, ident), ""
    except StoreUnavailable as exc:
        return None, f"the counter store cannot be reached now ({exc})"


def detail_page(engine: Engine, segment: str) -> Any:
    kind, title = KINDS[segment]
    other = "group" if kind == "user" else "user"

    async def handler(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        params = first_values(query_params(request))
        now = time.time()
        period = Period.parse(params, now, default="7d")
        usage: UsageDetail | None = await offload(request, engine.get_usage, kind, ident)
        entity, unreadable = await offload(request, _entity, engine, kind, ident)
        if usage is None and entity is None and not unreadable:
            raise HttpError(404, f"tollway has not seen {kind} {ident!r}")
        typical = None if unreadable else typical_request(kind, ident, usage)
        explained = await offload(request, _explain, engine, typical)
        chart = None
        if usage is not None:
            chart = await offload(
                request, usage_chart, engine, kind, ident, period, usage.usage.first_seen, now
            )
        links = entity.links if entity is not None else ()
        context = {
            "page": layout(request, engine, f"{kind.capitalize()} {ident}", segment),
            "kind": kind,
            "ident": ident,
            "list_title": title,
            "list_path": f"/ui/{segment}",
            "usage": usage.usage if usage is not None else None,
            "reports": usage.recent_reports if usage is not None else (),
            "shares": _shares(usage),
            "metadata": dict(entity.metadata) if entity is not None else {},
            "other": other,
            "links": [(g, entity_path(other, g)) for g in links[:MAX_LINKS]],
            "more_links": max(len(links) - MAX_LINKS, 0),
            "typical": typical,
            "explained": explained,
            "unreadable": unreadable,
            "period": period,
            "choices": CHOICES,
            "chart": chart,
        }
        return html_response("detail.html", context)

    return handler
