"""Tokens and roles on the HTTP port: one middleware over every route.

The route's access comes from the one table (``roles.http_access``, by the route's
pattern); the ``Authorization: Bearer <token>`` header is checked by the same
``Authenticator`` as gRPC's metadata. No or unknown credentials: 401 with
``WWW-Authenticate: Bearer``; a token without the role: 403. Under mTLS a verified
client certificate's subject CN stands for a token. Paths no route matches fall through
to the router's 404/405.

The dashboard (``/ui/``) is for browsers, which cannot send the header: there the
token of the session cookie its sign-in form sets stands for it, and a refused page
sends the browser to that form instead (303), to come back after signing in.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .auth import Authenticator
from .http_errors import Handler, HttpError
from .roles import http_access
from .ui.session import PATH as DASHBOARD
from .ui.session import session_token

__all__ = ["auth_middleware", "peer_common_name"]

_STATUS = {"unauthenticated": 401, "permission_denied": 403}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tollway"'}
_HINT = "send an `Authorization: Bearer <token>` header"


def peer_common_name(request: web.Request) -> str | None:
    """The subject CN of the client certificate the TLS handshake verified, if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    cert: dict[str, Any] = dict(ssl_object.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def auth_middleware(
    auth: Authenticator, on_refused: Callable[[str], None] | None = None
) -> Any:
    """The middleware; ``on_refused(verdict)`` is told of every refusal (the metrics)."""
    refused = on_refused or (lambda verdict: None)

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info
        resource = info.route.resource
        if info.http_exception is not None or resource is None:
            return await handler(request)  # no such route: the router answers 404/405
        target = f"{request.method} {resource.canonical}"
        dashboard = resource.canonical.startswith(DASHBOARD)
        authorization = request.headers.get("Authorization")
        if authorization is None and dashboard:
            token = session_token(request)
            authorization = f"Bearer {token}" if token else None
        refusal = auth.admit(
            http_access(request.method, resource.canonical), target, authorization,
            peer_common_name(request), hint=_HINT,
        )
        if refusal is None:
            return await handler(request)
        refused(refusal.verdict)
        if dashboard:
            back = quote(request.path_qs if request.method in ("GET", "HEAD") else DASHBOARD)
            raise web.HTTPSeeOther(f"{DASHBOARD}login?next={back}")
        headers = _CHALLENGE if refusal.verdict == "unauthenticated" else None
        raise HttpError(_STATUS[refusal.verdict], refusal.message, headers=headers)

    return check_access
