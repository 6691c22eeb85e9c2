"""The HTTP port: an aiohttp application on the event loop that also serves gRPC.

``build_app`` assembles the application: the error middleware (every 4xx/5xx is the
JSON error of ``http_errors``), the operational routes of ``http_ops`` and the routes of
each module in ``ROUTE_MODULES``; each such module defines ``install(app, engine)`` and
adds its routes with ``http_routes.add_route``. ``start_http`` serves it on ``HOST:PORT``
within the running loop; ``HttpServer.stop`` closes it.

What a client can hold is bounded (``HttpLimits``, docs/operations.md): a connection
that has not completed a request head within ``idle_timeout`` seconds is closed (new,
kept-alive and slow-header connections alike), request lines and headers have size
limits, request bodies are framed by their length and read only by routes that take
one; a body nobody reads is discarded for at most ``body_timeout`` seconds. Requests
the HTTP parser refuses get the same JSON errors, and are logged at debug level only.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tollway.policy.engine import Engine

from . import http_ops
from .auth import Authenticator
from .http_auth import auth_middleware
from .http_errors import Handler, HttpError, error_for, errors_middleware
from .http_limits import LIMITS, HttpLimits
from .http_ops import Readiness
from .http_routes import OFFLOAD, RELOAD_STATUS, ROUTES
from .metrics import Metrics
from .offload import Offload
from .reload import ReloadStatus
from .ui.session import TOKEN_CHECK

__all__ = [
    "HttpServer",
    "ROUTE_MODULES",
    "SERVER_HEADER",
    "build_app",
    "start_http",
]

log = logging.getLogger("tollway.server.http")

# Modules that add routes; each defines ``install(app: web.Application, engine) -> None``.
ROUTE_MODULES: tuple[str, ...] = (
    "tollway.server.usage_http", "tollway.server.balances_http", "tollway.server.ui",
)

SERVER_HEADER = "tollway"




@web.middleware
async def _decodable_target(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a path or query that is not UTF-8 once percent-decoded: the router would keep
    such escapes in a path as they are, and query parsers put U+FFFD in their place."""
    target = request.raw_path
    if "%" in target:
        path, _, query = target.partition("?")
        for part, name in ((path, "path"), (query, "query string")):
            try:
                unquote_to_bytes(part).decode("utf-8")
            except UnicodeDecodeError:
                raise HttpError(
                    400, f"the {name} is not valid UTF-8 once percent-decoded"
                ) from None
    return await handler(request)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


def build_app(
    engine: Engine,
    metrics: Metrics,
    readiness: Readiness,
    *,
    limits: HttpLimits | None = None,
    route_modules: tuple[str, ...] = ROUTE_MODULES,
    reloads: ReloadStatus | None = None,
    auth: Authenticator | None = None,
) -> web.Application:
    """The application: middlewares, ``/metrics``, ``/healthz``, ``/readyz`` and the routes
    of ``route_modules``; ``reloads`` is the rules watcher's status, when there is one.
    With ``auth`` every route needs its role (``roles.HTTP_ACCESS``)."""
    limits = limits or HttpLimits()
    middlewares: list[Any] = [errors_middleware]
    if auth is not None:  # before anything reads the request
        middlewares.append(auth_middleware(auth, metrics.auth_failed))
    middlewares.append(_decodable_target)
    app = web.Application(middlewares=middlewares, client_max_size=limits.max_body_bytes)
    app[LIMITS] = limits
    if reloads is not None:
        app[RELOAD_STATUS] = reloads
    app[ROUTES] = {}
    pool = Offload(threads=limits.threads, name="tollway-http")
    app[OFFLOAD] = pool

    async def close_pool(app: web.Application) -> None:
        await asyncio.to_thread(pool.close)

    app.on_cleanup.append(close_pool)
    app.on_response_prepare.append(_server_header)
    http_ops.install(app, engine, metrics=metrics, readiness=readiness)
    for name in route_modules:
        importlib.import_module(name).install(app, engine)
    if auth is not None:
        # the dashboard's sign-in form asks whether a token opens its pages
        app[TOKEN_CHECK] = lambda token: auth.check(f"Bearer {token}", "admin")[0]
    return app


# ------------------------------------------------------------------ the server


class _Protocol(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses with our JSON errors.

    aiohttp answers those (an over-long URL, a malformed request line) itself, in plain
    text, outside every middleware, and logs each at error level with a traceback; a
    client could flood the log at will.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            log.debug("HTTP request from %s refused: %r", request.remote, exc)
        else:
            log.error("HTTP request from %s failed", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started")
        reason = message or HTTPStatus(status).phrase.lower()
        response = error_for(exc or HttpError(status, reason), url_limit=self.max_line_size)
        response.headers["Server"] = SERVER_HEADER
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )


@dataclass(slots=True)
class HttpServer:
    """A started HTTP port."""

    runner: web.AppRunner
    address: str  # as bound: the real port when asked for port 0

    async def stop(self) -> None:
        """Stop accepting, give in-flight requests ``shutdown_timeout``, close the rest."""
        await self.runner.cleanup()


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"--http: expected HOST:PORT or 'off', got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start_http(
    listen: str,
    app: web.Application,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> HttpServer:
    """Serve ``app`` on ``HOST:PORT`` in the running loop, over TLS with ``ssl_context``;
    ``OSError`` if it cannot bind.

    ``reuse_port``: bind with ``SO_REUSEPORT``, beside the other workers of
    ``serve --workers N``."""
    host, port = _host_port(listen)
    limits = app[LIMITS]
    runner = _Runner(
        app,
        access_log=None,
        keepalive_timeout=limits.idle_timeout,
        lingering_time=limits.body_timeout,
        max_line_size=limits.max_url_bytes,
        max_field_size=limits.max_header_bytes,
        max_headers=limits.max_headers,
        shutdown_timeout=limits.shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return HttpServer(runner, f"{shown}:{bound_port}")
