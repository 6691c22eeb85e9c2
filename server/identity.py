"""Who a request is for, read from an HTTP request to an OpenAI-style API.

One pure function, ``identity_from_http``, shared by every HTTP-facing transport (Envoy's
ext_authz and ext_proc, the LiteLLM integration): headers and the parsed JSON body in, the
``user``, ``group``, ``model`` and ``attributes`` of a ``DecideRequest`` out. No I/O, and
nothing heavier than ``json`` is imported, so gateways can call it in their own process.

Each field is taken from the first source that has it:

====================  ==============================================================
user id               body ``metadata.tollway`` → ``x-tollway-user`` →
                      body ``safety_identifier`` → body ``user``
user metadata         body ``metadata.tollway`` → ``x-tollway-user-metadata`` (JSON)
group id              body ``metadata.tollway`` → ``x-tollway-group``
group metadata        body ``metadata.tollway`` → ``x-tollway-group-metadata`` (JSON)
model                 body ``model``
attributes            the headers named by ``attribute_headers`` (``x-team`` → ``team``)
====================  ==============================================================

``metadata.tollway`` is a JSON *string* (OpenAI's ``metadata`` holds strings only) of
``{"user": {"id": …, "metadata": {…}}, "group": {"id": …, "metadata": {…}}}``. The body's
``metadata`` must keep OpenAI's limits (16 keys, keys of at most 64 characters, string
values of at most 512), so that a request tollway admits is one the provider accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tollway.policy.validate import FieldError

from .decision_headers import header_name

__all__ = [
    "identity_from_http",
    "parse_attribute_headers",
    "USER_HEADER",
    "GROUP_HEADER",
    "USER_METADATA_HEADER",
    "GROUP_METADATA_HEADER",
    "METADATA_KEY",
    "OPENAI_METADATA_KEYS",
    "OPENAI_METADATA_KEY_CHARS",
    "OPENAI_METADATA_VALUE_CHARS",
]

USER_HEADER = "x-tollway-user"
GROUP_HEADER = "x-tollway-group"
USER_METADATA_HEADER = "x-tollway-user-metadata"
GROUP_METADATA_HEADER = "x-tollway-group-metadata"
METADATA_KEY = "tollway"  # the key of the body's ``metadata`` that carries identity

OPENAI_METADATA_KEYS = 16
OPENAI_METADATA_KEY_CHARS = 64
OPENAI_METADATA_VALUE_CHARS = 512

_ENTITY_KEYS = frozenset({"user", "group"})
_ENTITY_FIELDS = frozenset({"id", "metadata"})


def identity_from_http(
    headers: Mapping[str, str],
    body: Mapping[str, Any] | None,
    *,
    attribute_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``user``, ``group``, ``model`` and ``attributes`` of one HTTP request.

    ``headers`` maps header names to values: a ``dict`` (names in any case), or any other
    mapping whose names are in lower case (as HTTP/2 and Envoy carry them) or that is
    case-insensitive (aiohttp's ``CIMultiDict``, Starlette's ``Headers``); only the
    headers named here are read. ``body`` is the parsed JSON body (None when there is none or it is not JSON);
    ``attribute_headers`` maps header names (lower case) to attribute names, as
    ``parse_attribute_headers`` builds it.

    Returns ``{"user": {"id": …[, "metadata": {…}]} | None, "group": … | None,
    "model": str, "attributes": {str: str}}``, ready for ``Engine.decide`` (which checks
    ids, metadata size and depth). Raises ``FieldError`` (a ``ValueError``) whose
    ``field`` is the part at fault and whose message starts with it
    (``metadata.tollway: …``, ``x-tollway-user-metadata: …``).
    """
    if type(headers) is dict and any(k != k.lower() for k in headers):
        headers = {k.lower(): v for k, v in headers.items()}
    get = headers.get
    tollway: Mapping[str, Any] = {}
    model = ""
    safety_id = end_user = None
    if body is not None:
        tollway = _tollway_metadata(body.get("metadata"))
        model = _optional_str(body, "model") or ""
        safety_id = _optional_str(body, "safety_identifier")
        end_user = _optional_str(body, "user")
    return {
        "user": _entity(
            "user",
            tollway.get("user"),
            (get(USER_HEADER), safety_id, end_user),
            get(USER_METADATA_HEADER),
            USER_METADATA_HEADER,
        ),
        "group": _entity(
            "group",
            tollway.get("group"),
            (get(GROUP_HEADER),),
            get(GROUP_METADATA_HEADER),
            GROUP_METADATA_HEADER,
        ),
        "model": model,
        "attributes": {
            attribute: value
            for header, attribute in (attribute_headers or {}).items()
            if (value := get(header)) is not None
        },
    }


def parse_attribute_headers(specs: Iterable[str]) -> dict[str, str]:
    """``["x-team=team", …]`` -> ``{"x-team": "team"}``; raises ``ValueError`` on a bad spec.

    Header names are matched case-insensitively, and Envoy's pseudo-headers (``:path``,
    ``:authority``, ``:method``) may be named too; ``model`` is not an attribute name
    (``request.model`` is the request's model).
    """
    out: dict[str, str] = {}
    for spec in specs:
        header, sep, attribute = spec.partition("=")
        header, attribute = header.strip().lower(), attribute.strip()
        if not sep or not header or not attribute:
            raise FieldError("attribute-header", f"expected HEADER=ATTRIBUTE, got {spec!r}")
        plain = header.removeprefix(":")  # Envoy's pseudo-headers: :path, :authority, :method
        if not plain or header_name(plain) != plain:
            raise FieldError("attribute-header", f"{header!r} is not a header name")
        if attribute == "model":
            raise FieldError("attribute-header", "'model' is not an attribute (request.model is)")
        if header in out and out[header] != attribute:
            raise FieldError("attribute-header", f"{header!r} is mapped twice")
        out[header] = attribute
    return out


# ----------------------------------------------------------------- internals


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError(f"{key}", f"must be a string, got {type(value).__name__}")
    return value


def _tollway_metadata(metadata: Any) -> Mapping[str, Any]:
    """The decoded ``metadata.tollway`` object (empty when absent), after OpenAI's limits."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise FieldError("metadata", f"must be an object of strings, got {type(metadata).__name__}")
    if len(metadata) > OPENAI_METADATA_KEYS:
        raise FieldError(
            "metadata", f"{len(metadata)} keys is over OpenAI's limit of {OPENAI_METADATA_KEYS}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > OPENAI_METADATA_KEY_CHARS:
            raise FieldError(
                "metadata",
                f"key {str(key)[:80]!r} is over OpenAI's limit of "
                f"{OPENAI_METADATA_KEY_CHARS} characters",
            )
        if not isinstance(value, str):
            raise FieldError(f"metadata.{key}", f"must be a string, got {type(value).__name__}")
        if len(value) > OPENAI_METADATA_VALUE_CHARS:
            raise FieldError(
                f"metadata.{key}",
                f"{len(value)} characters is over OpenAI's limit of {OPENAI_METADATA_VALUE_CHARS}",
            )
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return {}
    decoded = _json_object(raw, f"metadata.{METADATA_KEY}")
    if not decoded.keys() <= _ENTITY_KEYS:
        unknown = set(decoded) - _ENTITY_KEYS
        raise FieldError(
            f"metadata.{METADATA_KEY}",
            f"unknown field {sorted(unknown)[0]!r} (expected user and group)",
        )
    return decoded


def _json_object(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FieldError(f"{name}", f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise FieldError(f"{name}", f"must be a JSON object, got {type(value).__name__}")
    return value


def _entity(
    kind: str,
    from_body: Any,
    ids: tuple[str | None, ...],
    metadata_header: str | None,
    metadata_header_name: str,
) -> dict[str, Any] | None:
    """One entity, each of its id and metadata from the first source that has it."""
    ident: Any = None
    metadata: Any = None
    if isinstance(from_body, str):  # shorthand, as in a DecideRequest: "user": "alice"
        ident = from_body
    elif isinstance(from_body, Mapping):
        ident, metadata = from_body.get("id"), from_body.get("metadata")
        if not from_body.keys() <= _ENTITY_FIELDS:
            unknown = set(from_body) - _ENTITY_FIELDS
            raise FieldError(
                f"metadata.{METADATA_KEY}.{kind}", f"unknown field {sorted(unknown)[0]!r}"
            )
    elif from_body is not None:
        raise FieldError(
            f"metadata.{METADATA_KEY}.{kind}", f"must be an object, got {type(from_body).__name__}"
        )
    if ident is None or ident == "":
        ident = next((i for i in ids if i), None)
    if metadata is None and metadata_header:
        metadata = _json_object(metadata_header, metadata_header_name)
    if ident is None or ident == "":
        if metadata is not None:
            raise FieldError(f"{kind}", f"metadata was sent but no {kind} id")
        return None
    out: dict[str, Any] = {"id": ident}
    if metadata is not None:
        out["metadata"] = metadata
    return out
