"""What one client may hold on the HTTP port: timeouts and sizes (docs/operations.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

__all__ = ["HttpLimits", "LIMITS"]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may hold on the HTTP port (docs/operations.md)."""

    idle_timeout: float = 15.0  # seconds a connection may go without a complete request head
    body_timeout: float = 10.0  # seconds to receive a body a route reads, or to discard one
    max_url_bytes: int = 8192  # the request target (path and query): longer is 414
    max_header_bytes: int = 8190  # one header, name and value: longer is 431
    max_headers: int = 64  # headers per request: more is 400
    max_body_bytes: int = 64 * 1024  # a body a route reads: larger is 413
    threads: int = 4  # the pool that runs engine calls and scrapes off the event loop
    shutdown_timeout: float = 5.0  # seconds in-flight requests get when the port closes

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "body_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive number of seconds, got {value}")
        for name in ("max_url_bytes", "max_header_bytes", "max_headers", "max_body_bytes",
                     "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_url_bytes == self.max_header_bytes:
            # the parser reports both with one exception and its limit: they must differ
            raise ValueError("max_url_bytes: must differ from max_header_bytes")


LIMITS: web.AppKey[HttpLimits] = web.AppKey("tollway_http_limits")
