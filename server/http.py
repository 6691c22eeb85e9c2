"""The HTTP port: ``/metrics``, ``/healthz``, ``/readyz``, and routes other modules add.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: scrapes and probes are rare and
small, so it adds no dependency and stays off the gRPC event loop. Routing is a small
table: a module listed in ``ROUTE_MODULES`` defines ``install(router, engine)`` and
registers its handlers (``/v1/usage/...``, ``/v1/activity``) without touching this file's
logic.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tollway.policy.engine import STORE_UNREACHABLE, Engine
from tollway.policy.stores.base import StoreRejected

from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = [
    "Request", "Response", "Handler", "Router", "Readiness", "HttpServer", "ROUTE_MODULES",
    "build_router", "start_http",
]

log = logging.getLogger("tollway.server.http")

# Modules that add routes; each defines ``install(router: Router, engine: Engine) -> None``.
# A module that is not present in this installation is skipped.
ROUTE_MODULES: tuple[str, ...] = ("tollway.server.usage_http",)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    params: Mapping[str, str]  # from ``{name}`` segments of the route pattern
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True, slots=True)
class Response:
    """A whole body (``bytes``) or a stream of chunks sent with chunked transfer encoding."""

    status: int
    body: bytes | Iterable[bytes]
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data).encode() + b"\n", "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Response]


@dataclass(slots=True)
class _Route:
    method: str
    parts: tuple[str, ...]
    handler: Handler


@dataclass(slots=True)
class Router:
    """Method + path pattern -> handler; ``{name}`` segments capture one path segment."""

    routes: list[_Route] = field(default_factory=list)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        parts = tuple(p for p in pattern.strip("/").split("/") if p)
        self.routes.append(_Route(method.upper(), parts, handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return decorate

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | int:
        """The handler and its params, or 404 (no such path) / 405 (path exists, not method)."""
        segments = tuple(unquote(p) for p in path.strip("/").split("/") if p)
        path_found = False
        for r in self.routes:
            params = _match(r.parts, segments)
            if params is None:
                continue
            if r.method == method or (method == "HEAD" and r.method == "GET"):
                return r.handler, params
            path_found = True
        return 405 if path_found else 404


def _match(parts: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for p, s in zip(parts, segments, strict=True):
        if p.startswith("{") and p.endswith("}"):
            params[p[1:-1]] = s
        elif p != s:
            return None
    return params


class Readiness:
    """Ready when rules are loaded, the store answers, and the server is not draining."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._draining = False

    def drain(self) -> None:
        self._draining = True

    def check(self) -> tuple[bool, str]:
        if self._draining:
            return False, "shutting down"
        if self._engine.ruleset is None:
            return False, "rules not loaded"
        ping = getattr(self._engine.store, "ping", None)
        if ping is not None:
            # probes are open to anyone: the store's own words (host, port, driver) go to
            # the log, the reason says only what is wrong
            try:
                ok = ping()
            except StoreRejected as exc:
                log.warning("not ready: the counter store refused the credentials: %s", exc)
                return False, "counter store refused the credentials"
            except Exception as exc:
                log.warning("not ready: %s: %s", STORE_UNREACHABLE, exc)
                return False, STORE_UNREACHABLE
            if ok is False:
                return False, STORE_UNREACHABLE
        return True, "ready"


def build_router(engine: Engine, metrics: Metrics, readiness: Readiness) -> Router:
    router = Router()

    @router.route("GET", "/metrics")
    def _metrics(_: Request) -> Response:
        return Response(200, metrics.exposition(), CONTENT_TYPE_LATEST)

    @router.route("GET", "/healthz")
    def _healthz(_: Request) -> Response:
        return Response.text("ok\n")

    @router.route("GET", "/readyz")
    def _readyz(_: Request) -> Response:
        ok, reason = readiness.check()
        body: dict[str, Any] = {"ready": ok, "reason": reason}
        if ok:
            body["ruleset_version"] = engine.ruleset.version
        return Response.json(body, 200 if ok else 503)

    for name in ROUTE_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).install(router, engine)
    return router


def _handler_class(router: Router) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        server_version = "tollway"
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlsplit(self.path)
            found = router.resolve(self.command, url.path)
            if isinstance(found, int):
                resp = Response.json(
                    {"error": "not found" if found == 404 else "method not allowed"}, found
                )
            else:
                handler, params = found
                request = Request(
                    self.command, url.path, params, parse_qs(url.query), dict(self.headers)
                )
                try:
                    resp = handler(request)
                except ValueError as exc:
                    resp = Response.json({"error": str(exc)}, 400)
                except Exception:
                    log.exception("HTTP %s %s failed", self.command, url.path)
                    resp = Response.json({"error": "internal error"}, 500)
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            if isinstance(resp.body, bytes):
                self.send_header("Content-Length", str(len(resp.body)))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            for k, v in resp.headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                return
            if isinstance(resp.body, bytes):
                self.wfile.write(resp.body)
            else:
                self._stream(resp.body)

        def _stream(self, chunks: Iterable[bytes]) -> None:
            """Chunked transfer: an export of any size without holding it in memory."""
            try:
                for chunk in chunks:
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away mid-export
            except Exception:
                # the status line is gone already: cut the stream short so the client
                # sees a truncated transfer, never a silently incomplete export
                log.exception("HTTP %s %s failed while streaming", self.command, self.path)
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return _Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass(slots=True)
class HttpServer:
    server: ThreadingHTTPServer
    thread: threading.Thread
    address: str  # as bound: the real port when asked for port 0

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_http(listen: str, router: Router) -> HttpServer:
    """Serve ``router`` on ``HOST:PORT`` in a daemon thread; raises ``OSError`` if it cannot bind."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--http: expected HOST:PORT or 'off', got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, int(port)), _handler_class(router))
    bound_host, bound_port = server.server_address[:2]
    thread = threading.Thread(
        target=server.serve_forever, name="tollway-http", kwargs={"poll_interval": 0.5},
        daemon=True,
    )
    thread.start()
    host_text = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
    shown = f"[{host_text}]" if ":" in host_text else host_text
    return HttpServer(server, thread, f"{shown}:{bound_port}")
