"""The operational routes: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz``.

``/healthz`` answers ``ok`` while the process runs. ``/readyz`` answers 200 only while the
rules are loaded, the counter store answers and the server is not shutting down; else
503 with the reason. The scrape and the store ping run off the event loop: a large
exposition or a stalled Redis never holds up a decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tollway.policy.engine import STORE_UNREACHABLE, Engine
from tollway.policy.stores.base import StoreRejected

from .http_errors import json_response
from .http_routes import add_route, offload
from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["Readiness", "install", "REFUSED_CREDENTIALS", "consequence"]

log = logging.getLogger("tollway.server.http")

REFUSED_CREDENTIALS = "counter store refused the credentials"


def consequence(reason: str) -> str:
    """What decisions do while the server is not ready for ``reason`` (for the log)."""
    if reason == REFUSED_CREDENTIALS:
        # never answered with on_store_error allow: that would switch every quota off
        return (
            "Decide and Report answer UNAVAILABLE until it accepts them (check "
            "TOLLWAY_STORE_PASSWORD or --store-password-file)"
        )
    return "decisions follow on_store_error"


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
        ok, reason, detail = self._check()
        if ok != self._last:
            self._last = ok
            if detail:  # the store's own words, once per change: they stay in the log
                log.warning("%s: %s", reason, detail)
            for callback in self._watchers:
                callback(ok, reason)
        return ok, reason

    def _check(self) -> tuple[bool, str, str]:
        """(ready, the reason anyone may read, what the store said: for the log only)."""
        if self._draining:
            return False, "shutting down", ""
        if self._engine.ruleset is None:
            return False, "rules not loaded", ""
        ping = getattr(self._engine.store, "ping", None)
        if ping is not None:
            # probes are open to anyone: the store's words (host, port, driver) stay out
            try:
                ok = ping()
            except StoreRejected as exc:
                return False, REFUSED_CREDENTIALS, str(exc)
            except Exception as exc:
                return False, STORE_UNREACHABLE, str(exc)
            if ok is False:
                return False, STORE_UNREACHABLE, ""
        return True, "ready", ""


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

    add_route(app, "GET", "/metrics", scrape)
    add_route(app, "GET", "/healthz", healthz)
    add_route(app, "GET", "/readyz", readyz)
