"""The Spikes page: users or groups whose usage in the last window is far over their
baseline (the engine's ``list_spikes``), each linking to its page.

The form's fields are the spike query's own parameters (``kind``, ``metric``, ``window``,
``baseline``, ``factor``, ``min``), checked by the engine's ``SpikeQuery``; what it
refuses is shown above the table with a 400, naming the parameter.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tollway.policy.engine import Engine
from tollway.policy.usage import Spike
from tollway.policy.usage_query import METRICS, SpikeQuery
from tollway.policy.validate import FieldError

from ..http_routes import first_values, offload, query_params
from .pages import layout
from .render import html_response

__all__ = ["spikes_page"]

_PASSED = ("kind", "metric", "window", "baseline", "factor", "min", "limit")
WINDOWS = ("1h", "6h", "1d")
BASELINES = ("1d", "7d", "30d")


def spikes_page(engine: Engine) -> Any:
    async def handler(request: web.Request) -> web.Response:
        params = first_values(query_params(request))
        passed = {k: params[k] for k in _PASSED if params.get(k)}
        error: FieldError | None = None
        found: list[Spike] = []
        query = SpikeQuery()
        try:
            query = SpikeQuery.parse(passed)
            found = await offload(request, engine.list_spikes, query)
        except FieldError as exc:
            error = exc
        context = {
            "page": layout(request, engine, "Spikes", "spikes"),
            "query": query,
            "form": {
                "kind": query.kind, "metric": query.metric,
                "window": params.get("window") or f"{query.window_hours}h",
                "baseline": params.get("baseline") or "7d",
                "factor": params.get("factor") or f"{query.factor:g}",
                "min": params.get("min") or f"{query.min:g}",
            },
            "metrics": METRICS,
            "windows": WINDOWS,
            "baselines": BASELINES,
            "kind": query.entity_kind,
            "spikes": found,
            "error": error,
        }
        return html_response("spikes.html", context, status=400 if error else 200)

    return handler
