"""What every dashboard page shares: the handler wrapper, the layout's values, links.

``page(handler)`` turns what a page handler raises into an HTML page with the status and
message ``tollway.server.http_errors.error_info`` gives any other route (so a bad
parameter is a 400 that names it, an unknown id a 404, the store down a 503), inside the
dashboard's layout, and says how long the page took in a ``Server-Timing`` header
(``page;dur=<ms>``: browsers' developer tools show it; bench/bench_ui.py reads it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from tollway.policy.engine import Engine

from ..http_errors import Handler, error_info
from .render import html_response
from .session import TOKEN_CHECK, session_token

__all__ = ["Layout", "PageHandler", "page", "layout", "link", "KINDS"]

log = logging.getLogger("tollway.server.ui")

# URL segment -> (entity kind, plural title)
KINDS: Mapping[str, tuple[str, str]] = {"users": ("user", "Users"), "groups": ("group", "Groups")}


@dataclass(frozen=True, slots=True)
class Layout:
    """What the page frame shows: the section, the ruleset in force, the time, sign-out."""

    title: str
    section: str
    ruleset_version: str
    now: float
    signed_in: bool


def layout(request: web.Request, engine: Engine, title: str, section: str) -> Layout:
    signed_in = TOKEN_CHECK in request.app and session_token(request) is not None
    return Layout(title, section, engine.ruleset.version, time.time(), signed_in)


def link(path: str, params: Iterable[tuple[str, str]]) -> str:
    """``path`` with ``params`` as its query string (none: just the path)."""
    query = urlencode(list(params), quote_via=quote)
    return f"{path}?{query}" if query else path


PageHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page(engine: Engine, handler: PageHandler) -> Handler:
    """``handler``, with what it raises shown as an HTML error page."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects are answers
            response = _error_page(request, engine, exc)
        except Exception as exc:
            response = _error_page(request, engine, exc)
        response.headers["Server-Timing"] = f"page;dur={(time.perf_counter() - start) * 1e3:.2f}"
        return response

    return wrapped


def _error_page(request: web.Request, engine: Engine, exc: BaseException) -> web.Response:
    info = error_info(exc)
    if info.status >= 500 and info.code != "unavailable":
        log.error("UI %s %s failed", request.method, request.path, exc_info=exc)
    elif info.status >= 500:
        log.warning("UI %s %s: %s", request.method, request.path, exc)
    context: dict[str, Any] = {
        "page": layout(request, engine, f"Error {info.status}", ""),
        "error": info,
    }
    return html_response("error.html", context, status=info.status, headers=info.headers)
