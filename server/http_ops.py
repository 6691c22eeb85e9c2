"""The operational routes: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``.

``/healthz`` answers ``ok`` while the process runs. ``/readyz`` answers 200 only while the
rules are loaded, the counter store answers and the server is not shutting down; else
503 with the reason. The scrape and the store ping run off the event loop: a large
exposition or a stalled Redis never holds up a decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from tollway.policy.engine import Engine

from .http_errors import json_response
from .http_routes import add_route, offload
from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["Readiness", "install"]


class Readiness:
    """Ready when rules are loaded, the store answers, and the server is not draining.

    Every ``check`` asks the store afresh; ``watch`` registers a callback told of each
    change of the answer (gRPC health follows it: ``health_watch.HealthWatch``).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._draining = False
        self._last: bool | None = None
        self._watchers: list[Callable[[bool, str], None]] = []

    def drain(self) -> None:
        self._draining = True

    def watch(self, callback: Callable[[bool, str], None]) -> None:
        self._watchers.append(callback)

    def check(self) -> tuple[bool, str]:
        ok, reason = self._check()
        if ok != self._last:
            self._last = ok
            for callback in self._watchers:
                callback(ok, reason)
        return ok, reason

    def _check(self) -> tuple[bool, str]:
        if self._draining:
            return False, "shutting down"
        if self._engine.ruleset is None:
            return False, "rules not loaded"
        ping = getattr(self._engine.store, "ping", None)
        if ping is not None:
            try:
                ok = ping()
            except Exception as exc:
                return False, f"counter store unreachable: {exc}"
            if ok is False:
                return False, "counter store unreachable"
        return True, "ready"


def install(
    app: web.Application, engine: Engine, *, metrics: Metrics, readiness: Readiness
) -> None:
    async def scrape(request: web.Request) -> web.Response:
        body = await offload(request, metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ok, reason = await offload(request, readiness.check)
        body: dict[str, Any] = {"ready": ok, "reason": reason}
        if ok:
            body["ruleset_version"] = engine.ruleset.version
        return json_response(body, 200 if ok else 503)

    add_route(app, "GET", "/metrics", scrape, role="metrics")
    add_route(app, "GET", "/healthz", healthz, role=None)
    add_route(app, "GET", "/readyz", readyz, role=None)
