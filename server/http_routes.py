"""What a route module needs: the route table, engine calls off the loop, strict query parsing.

A route module defines ``install(app, engine)`` and adds each of its routes with
``add_route(app, method, path, handler)``. Who may call a route is declared once, in the
role table (``server/roles.py``, ``HTTP_ACCESS``), beside the gRPC methods;
``route_table(app)`` lists every installed route, which is what the table is checked
against (an undeclared route is refused to everyone under ``--auth``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web

from .http_errors import Handler, HttpError
from .http_limits import LIMITS
from .offload import Offload
from .reload import ReloadStatus

__all__ = [
    "Route",
    "ROUTES",
    "OFFLOAD",
    "RELOAD_STATUS",
    "MAX_QUERY_FIELDS",
    "add_route",
    "route_table",
    "route_of",
    "offload",
    "query_params",
    "first_values",
    "read_json",
    "read_form",
    "stream_response",
    "Handler",
]

log = logging.getLogger("tollway.server.http")

R = TypeVar("R")

# Parameters in one query string; more is a 400, never a long parse.
MAX_QUERY_FIELDS = 64


@dataclass(frozen=True, slots=True)
class Route:
    """One method on one path (the pattern, as ``roles.HTTP_ACCESS`` spells it)."""

    method: str
    path: str


ROUTES: web.AppKey[dict[tuple[str, str], Route]] = web.AppKey("tollway_routes")
OFFLOAD: web.AppKey[Offload] = web.AppKey("tollway_offload")
# The outcome of the last rules (re)load, when the server watches its rules.
RELOAD_STATUS: web.AppKey[ReloadStatus] = web.AppKey("tollway_reload_status")


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Serve ``handler`` for ``method path`` (``GET`` serves ``HEAD`` too)."""
    method = method.upper()
    table = app[ROUTES]
    methods = ("GET", "HEAD") if method == "GET" else (method,)
    for m in methods:
        if (m, path) in table:
            raise ValueError(f"route {m} {path} is already installed")
    if method == "GET":
        app.router.add_get(path, handler)
    else:
        app.router.add_route(method, path, handler)
    for m in methods:
        table[(m, path)] = Route(m, path)


def route_table(app: web.Application) -> tuple[Route, ...]:
    """Every installed route, in installation order."""
    return tuple(app[ROUTES].values())


def route_of(request: web.Request) -> Route | None:
    """The table entry of the route ``request`` matched; None when it matched none."""
    info = request.match_info
    if info.http_exception is not None:
        return None
    resource = info.route.resource
    if resource is None:
        return None
    return request.app[ROUTES].get((info.route.method, resource.canonical))


async def offload(request: web.Request, fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` off the event loop, in the HTTP port's own thread pool."""
    return await request.app[OFFLOAD](fn, *args)


def query_params(request: web.Request) -> dict[str, list[str]]:
    """The query string, parameter -> values in order; more than ``MAX_QUERY_FIELDS`` is a 400.

    Parsed from the raw query, strictly: the server has already refused a query that is
    not UTF-8 once percent-decoded, where a lenient parser would put U+FFFD in its place.
    """
    raw = request.rel_url.raw_query_string
    if raw.count("&") >= MAX_QUERY_FIELDS:
        raise HttpError(400, f"the query string has more than {MAX_QUERY_FIELDS} parameters")
    pairs = parse_qsl(raw, keep_blank_values=True, errors="strict")
    params: dict[str, list[str]] = {}
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    return params


def first_values(query: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """One value per parameter: the first, as most frameworks do."""
    return {k: v[0] for k, v in query.items() if v}


async def _read_body(request: web.Request, content_type: str) -> bytes:
    """The body, declared ``content_type`` (415), at most ``max_body_bytes`` (413),
    within ``body_timeout`` (408)."""
    if request.content_type != content_type:
        raise HttpError(415, f"the body must be {content_type}")
    try:
        async with asyncio.timeout(request.app[LIMITS].body_timeout):
            return await request.read()
    except TimeoutError:
        raise HttpError(408, "the request body did not arrive in time") from None


async def read_form(request: web.Request) -> dict[str, str]:
    """An HTML form's fields (``application/x-www-form-urlencoded``), the first value of
    each, decoded as strictly as ``query_params`` decodes a query string."""
    raw = await _read_body(request, "application/x-www-form-urlencoded")
    try:
        text = raw.decode("ascii")  # the encoding percent-escapes everything else
        if text.count("&") >= MAX_QUERY_FIELDS:
            raise HttpError(400, f"the form has more than {MAX_QUERY_FIELDS} fields")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "the form is not valid UTF-8 once percent-decoded") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


async def read_json(request: web.Request) -> Any:
    """The request body as JSON: at most ``max_body_bytes`` (413), within ``body_timeout``
    (408), declared ``application/json`` (415)."""
    raw = await _read_body(request, "application/json")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "the body is not valid JSON: nested too deeply") from None


async def stream_response(
    request: web.Request, chunks: AsyncGenerator[bytes, None], *, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Send ``chunks`` with chunked transfer encoding, holding one chunk at a time.

    The first chunk is awaited before the status line is sent, so a failure to start
    (the store unreachable, a bad parameter found late) is an ordinary JSON error. A
    failure after that cuts the connection without the final empty chunk: the client
    sees a truncated transfer, never an export that looks complete.
    """
    try:
        chunk = await anext(chunks, None)
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        while chunk is not None:
            if chunk:
                try:
                    await response.write(chunk)
                except ConnectionError:
                    return response  # the client went away
            try:
                chunk = await anext(chunks, None)
            except Exception:
                log.warning("HTTP %s %s: export cut short", request.method, request.path,
                            exc_info=True)
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response
    finally:
        await chunks.aclose()
