"""What the three Envoy services share: reading Envoy's view of an HTTP request.

Headers arrive as a map (ext_authz) or as a ``HeaderMap`` whose values may be in
``raw_value`` (ext_proc, and ext_authz with ``encode_raw_headers``); both become one
``{lower-case name: value}`` dict. ``decide_request`` turns headers and body into the
mapping ``Engine.decide`` takes, through the one identity function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from tollway.server.identity import identity_from_http
from tollway.server.openai_body import request_json

__all__ = ["headers_of", "decide_request", "REQUEST_ID_HEADER"]

REQUEST_ID_HEADER = "x-request-id"


class _HeaderValue(Protocol):
    key: str
    value: str
    raw_value: bytes


def headers_of(values: Iterable[_HeaderValue]) -> dict[str, str]:
    """``HeaderMap.headers`` as a dict; a repeated header keeps its values joined by ``,``."""
    out: dict[str, str] = {}
    for h in values:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def decide_request(
    headers: Mapping[str, str], body: bytes, attribute_headers: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``Engine.decide`` request of an HTTP request, and its JSON body (None if not JSON).

    ``request_id`` is Envoy's ``x-request-id``. Raises ``ValueError`` naming the field.
    """
    parsed = request_json(body, headers.get("content-type", ""))
    request = identity_from_http(headers, parsed, attribute_headers=attribute_headers)
    request["request_id"] = headers.get(REQUEST_ID_HEADER, "")
    return request, parsed
