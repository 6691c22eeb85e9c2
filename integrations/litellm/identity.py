"""Whom a LiteLLM proxy request is for: the tollway user and group, by configured sources.

A *source* names where an entity may come from; the settings list sources per entity and
the first that has an id wins:

- ``request``: what the HTTP request says, read by ``tollway.server.identity`` exactly as
  every HTTP transport reads it (body ``metadata.tollway`` > ``x-tollway-*`` headers >
  ``safety_identifier`` > ``user``, the OpenAI end-user field);
- ``key.<field>``: a field of the proxy's authenticated key (``UserAPIKeyAuth``):
  ``key.user_id``, ``key.team_id``, ``key.org_id``, ``key.project_id``, ``key.key_alias``,
  ``key.end_user_id``. The entity's metadata is then the ``tollway`` object of the
  matching LiteLLM metadata (the key's, the team's, the organization's, the project's),
  so ops can give a team ``{"tollway": {"monthly_credits": 500}}`` in LiteLLM and rules
  read ``group.monthly_credits``.

The request is client input: a gateway whose keys are issued per team should take the
group from the key first (the default), or a client could name another team's group.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tollway.server.identity import METADATA_KEY, identity_from_http

__all__ = ["SOURCES", "KEY_SOURCES", "request_identity", "pick"]

log = logging.getLogger("tollway.integrations.litellm")

# key source -> (UserAPIKeyAuth field with the id, field with the LiteLLM metadata or None)
KEY_SOURCES: Mapping[str, tuple[str, str | None]] = {
    "key.user_id": ("user_id", "metadata"),
    "key.team_id": ("team_id", "team_metadata"),
    "key.org_id": ("org_id", "organization_metadata"),
    "key.project_id": ("project_id", "project_metadata"),
    "key.key_alias": ("key_alias", "metadata"),
    "key.end_user_id": ("end_user_id", None),
}
SOURCES: tuple[str, ...] = ("request", *KEY_SOURCES)


def request_identity(
    data: Mapping[str, Any], attribute_headers: Mapping[str, str]
) -> tuple[dict[str, Any], str]:
    """``identity_from_http`` over the request as the client sent it, and the route's path.

    The proxy keeps the client's headers and URL in ``data["proxy_server_request"]``. The
    body fields that name an identity are the client's (``model``, ``user``,
    ``safety_identifier``), but the proxy has already filled the body's ``metadata`` with
    its own keys (``user_api_key_*``, ``headers``…): of it, only the client's ``tollway``
    entry is read, and OpenAI's metadata limits, which guard what reaches a provider, do
    not apply (LiteLLM does not send its metadata upstream). Raises ``ValueError`` naming
    the field for a request it cannot read.
    """
    sent = data.get("proxy_server_request")
    sent = sent if isinstance(sent, Mapping) else {}
    headers = sent.get("headers")
    body = sent.get("body")
    body = body if isinstance(body, Mapping) else data
    fields: dict[str, Any] = {k: body[k] for k in _BODY_FIELDS if body.get(k) is not None}
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get(METADATA_KEY) is not None:
        fields["metadata"] = {METADATA_KEY: metadata[METADATA_KEY]}
    found = identity_from_http(
        headers if isinstance(headers, Mapping) else {}, fields, attribute_headers=attribute_headers
    )
    url = sent.get("url")
    return found, urlsplit(url).path if isinstance(url, str) else ""


_BODY_FIELDS = ("model", "user", "safety_identifier")


def pick(
    sources: Sequence[str],
    from_request: Mapping[str, Any] | None,
    key: Any,
    *,
    request_metadata: bool = True,
) -> dict[str, Any] | None:
    """The entity of the first source that has an id, as a ``DecideRequest`` entity."""
    for source in sources:
        if source == "request":
            if from_request:
                if request_metadata or "metadata" not in from_request:
                    return dict(from_request)
                return {"id": from_request["id"]}
            continue
        id_field, metadata_field = KEY_SOURCES[source]
        ident = getattr(key, id_field, None) if key is not None else None
        if ident is None or ident == "":
            continue
        entity: dict[str, Any] = {"id": str(ident)}
        if metadata_field is not None:
            metadata = _tollway_part(getattr(key, metadata_field, None), source, metadata_field)
            if metadata:
                entity["metadata"] = metadata
        return entity
    return None


def _tollway_part(metadata: Any, source: str, field: str) -> Mapping[str, Any] | None:
    """The ``tollway`` object of a LiteLLM metadata dict; anything else there is LiteLLM's."""
    if not isinstance(metadata, Mapping):
        return None
    part = metadata.get(METADATA_KEY)
    if part is None or isinstance(part, Mapping):
        return part
    log.warning(
        "%s: the %s's %r must be an object of tollway metadata, got %s; ignored",
        source, field, METADATA_KEY, type(part).__name__,
    )
    return None
