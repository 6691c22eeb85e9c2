"""The HTTP port's one error shape and the one place exceptions become status codes.

Every 4xx and 5xx answer has the body ``{"error": {"code", "message"[, "parameter"]}}``
(docs/api.md lists the codes). Routes raise: ``HttpError`` for what they decide
themselves, or the engine's own exceptions (``FieldError``, ``ValueError``,
``StoreUnavailable``…); ``errors_middleware`` maps them with ``error_for``, and the
server maps the HTTP parser's refusals (an over-long URL, a malformed request line) with
the same function, so no answer ever leaves in another shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

from tollway.policy.engine import STORE_UNREACHABLE
from tollway.policy.stores.base import StoreUnavailable
from tollway.policy.usage import UsageUnavailable
from tollway.policy.validate import FieldError

__all__ = [
    "JSON",
    "ERROR_CODES",
    "HttpError",
    "ErrorInfo",
    "json_response",
    "error_response",
    "error_info",
    "error_for",
    "errors_middleware",
    "Handler",
]

log = logging.getLogger("tollway.server.http")

JSON = "application/json"

# The ``code`` of each status tollway answers; ``invalid_parameter`` (400) names the
# query parameter that was refused in ``parameter``.
ERROR_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
}

_MAX_MESSAGE = 300  # characters of a parser's message repeated to the client


class HttpError(Exception):
    """An answer a route decided on: ``raise HttpError(404, "no usage recorded for …")``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, "error")
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error answer says, whatever shape carries it (JSON here, an HTML page in
    the dashboard)."""

    status: int
    code: str
    message: str
    parameter: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``data`` as one JSON document (UTF-8, never NaN or Infinity) and a newline."""
    body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode() + b"\n"
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


def error_response(
    status: int,
    code: str,
    message: str,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The error shape: ``{"error": {"code": …, "message": …, "parameter"?: …}}``."""
    error: dict[str, str] = {"code": code, "message": message}
    if parameter is not None:
        error["parameter"] = parameter
    return json_response({"error": error}, status, headers)


def _from_http_exception(exc: web.HTTPException) -> ErrorInfo:
    status = exc.status
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"method {exc.method} is not allowed here; allowed: {allowed}"
    elif status == 404:
        message = "no such path"
    else:
        message = exc.reason.lower()
    return ErrorInfo(status, ERROR_CODES.get(status, "error"), message, headers=headers)


def _from_parser(exc: HttpProcessingError, url_limit: int | None) -> ErrorInfo:
    if isinstance(exc, LineTooLong):
        # aiohttp reports both limits with one exception; its ``limit`` says which one
        limit = exc.args[1] if len(exc.args) > 1 else None
        if url_limit is not None and limit == url_limit:
            return ErrorInfo(414, "uri_too_long", f"the URL is longer than {limit} bytes")
        return ErrorInfo(
            431, "headers_too_large", f"a request header is longer than {limit} bytes"
        )
    if isinstance(exc, BadHttpMethod):
        return ErrorInfo(405, "method_not_allowed", "unknown request method")
    first_line = (exc.message or "").strip().partition("\n")[0].rstrip(" :")
    return ErrorInfo(400, "bad_request", first_line[:_MAX_MESSAGE] or "malformed request")


def error_info(exc: BaseException, *, url_limit: int | None = None) -> ErrorInfo:
    """The answer for ``exc``: the one mapping of exceptions to statuses.

    ``url_limit`` is the parser's URL limit, which tells an over-long URL (414) from an
    over-long header (431).
    """
    match exc:
        case HttpError():
            return ErrorInfo(exc.status, exc.code, exc.message, exc.parameter, exc.headers)
        case FieldError():
            return ErrorInfo(400, "invalid_parameter", str(exc), exc.field)
        case ValueError():
            return ErrorInfo(400, "bad_request", str(exc))
        case StoreUnavailable():
            return ErrorInfo(503, "unavailable", STORE_UNREACHABLE)
        case UsageUnavailable():
            return ErrorInfo(503, "unavailable", "usage database unavailable")
        case NotImplementedError():
            return ErrorInfo(501, "not_implemented", "not available on this server")
        case web.HTTPException() if exc.status >= 400:
            return _from_http_exception(exc)
        case HttpProcessingError():
            return _from_parser(exc, url_limit)
        case _:
            return ErrorInfo(500, "internal", "internal error")


def error_for(exc: BaseException, *, url_limit: int | None = None) -> web.Response:
    """The JSON error answer for ``exc`` (``error_info`` says which)."""
    info = error_info(exc, url_limit=url_limit)
    return error_response(info.status, info.code, info.message, info.parameter, info.headers)


# What a route (and the rest of a middleware chain) is.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every exception a route (or the router: 404, 405) raises becomes the JSON error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        return error_for(exc)
    except Exception as exc:
        response = error_for(exc)
        if isinstance(exc, StoreUnavailable | UsageUnavailable):
            log.warning("HTTP %s %s: %s", request.method, request.path, exc)
        elif response.status >= 500:
            log.exception("HTTP %s %s failed", request.method, request.path)
        return response
