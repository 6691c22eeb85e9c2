"""Signing in to the dashboard: a token kept in a cookie, and forms that only come from it.

When the server asks for tokens, a browser cannot send an ``Authorization`` header on
its own; the login form takes a token once and keeps it in the ``tollway_session``
cookie: ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
makes the browser send it), ``Path=/ui/``, ``Secure`` when the page came over TLS. It
lasts as long as the browser session. Tokens never appear in a URL.

The pages only read, so a forged cross-site GET changes nothing. The forms that post
(sign in, sign out, the explain box) are accepted only from the dashboard's own pages:
besides the SameSite cookie, a browser's ``Origin`` (or, lacking it, ``Referer``) must
name this server's host; a request with neither did not come from a browser page.

Whether a token opens the dashboard (the ``admin`` role) is asked of a ``TokenCheck``
kept in the application under ``TOKEN_CHECK``; without one the server asks for no
tokens and the login page says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "COOKIE",
    "PATH",
    "MAX_TOKEN_BYTES",
    "Verdict",
    "TokenCheck",
    "TOKEN_CHECK",
    "session_token",
    "same_origin",
    "sign_in",
    "sign_out",
    "safe_next",
]

COOKIE = "tollway_session"
PATH = "/ui/"
MAX_TOKEN_BYTES = 512

Verdict = Literal["ok", "unauthenticated", "permission_denied"]
# Does this token open the dashboard? "unauthenticated": unknown; "permission_denied":
# known but without the role.
TokenCheck = Callable[[str], Verdict]
TOKEN_CHECK: web.AppKey[TokenCheck] = web.AppKey("tollway_ui_token_check")


def session_token(request: web.Request) -> str | None:
    """The token the session cookie holds, if any."""
    token = request.cookies.get(COOKIE)
    return token or None


def same_origin(request: web.Request) -> bool:
    """Whether a form post came from a page of this server (see the module docstring).

    Hosts are compared, not schemes: behind a proxy that ends TLS the server sees plain
    HTTP while the browser names an https origin.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        if referer is None:
            return True  # not sent by a browser page
        origin = referer
    if origin == "null":
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == request.host.lower()


def sign_in(response: web.StreamResponse, token: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE, token, path=PATH, httponly=True, samesite="Strict", secure=secure
    )


def sign_out(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=PATH)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this server, else its start page."""
    if (
        not target
        or not target.startswith(PATH)
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 for c in target)
    ):
        return PATH
    return target
