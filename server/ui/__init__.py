"""The dashboard: HTML pages of usage and policy on the HTTP port, under ``/ui/``.

Pages (docs/dashboard.md): Users and Groups (``/ui/users``, ``/ui/groups``), a user's or
group's detail (``/ui/users/{id}``, ``/ui/groups/{id}``), Spikes (``/ui/spikes``), Rules
(``/ui/rules``, with the explain box posting to ``/ui/rules/explain``), and the sign-in
form (``/ui/login``). They are Jinja2 templates rendered on the server over the one
``Engine`` (called off the event loop like every route) and one stylesheet; no script,
no build step, nothing fetched from elsewhere. The pages only read; they need the
``admin`` role, except the sign-in form and the stylesheet (``server/roles.py``).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from tollway.policy.engine import Engine

from ..http_errors import HttpError
from ..http_routes import add_route, read_form
from .detail import detail_page
from .listing import listing_page
from .pages import KINDS, layout, page
from .render import SECURITY_HEADERS, html_response
from .rules import explain_page, rules_page
from .session import (
    MAX_TOKEN_BYTES,
    TOKEN_CHECK,
    safe_next,
    same_origin,
    sign_in,
    sign_out,
)
from .spikes import spikes_page

__all__ = ["install", "STATIC_TYPES"]

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The files of ``static/`` (package data), read once: name -> (bytes, type)."""
    out = {}
    for entry in resources.files(__name__).joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


def install(app: web.Application, engine: Engine) -> None:
    """Add the dashboard's routes to ``app``."""
    files = _static_files()

    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise HttpError(404, "no such file")
        body, content_type = found
        return web.Response(
            body=body,
            headers={
                "Content-Type": content_type,
                "Cache-Control": "public, max-age=3600",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def start(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/users")

    async def login_form(request: web.Request) -> web.Response:
        context = {
            "page": layout(request, engine, "Sign in", "login"),
            "tokens": TOKEN_CHECK in request.app,
            "next": safe_next(request.query.get("next")),
            "error": None,
        }
        return html_response("login.html", context)

    async def login(request: web.Request) -> web.Response:
        if not same_origin(request):
            raise HttpError(403, "this form is accepted only from the dashboard's own pages")
        form = await read_form(request)
        target = safe_next(form.get("next"))
        check = request.app.get(TOKEN_CHECK)
        if check is None:
            raise web.HTTPSeeOther(target)
        token = form.get("token", "").strip()
        verdict = (
            check(token)
            if token and len(token.encode()) <= MAX_TOKEN_BYTES and token.isprintable()
            else "unauthenticated"
        )
        if verdict == "ok":
            response = web.HTTPSeeOther(target, headers=SECURITY_HEADERS)
            sign_in(response, token, secure=request.secure)
            raise response
        context = {
            "page": layout(request, engine, "Sign in", "login"),
            "tokens": True,
            "next": target,
            "error": (
                "This token may not read the dashboard: it needs the admin role."
                if verdict == "permission_denied"
                else "Unknown token."
            ),
        }
        return html_response("login.html", context, status=401)

    async def logout(request: web.Request) -> web.Response:
        if not same_origin(request):
            raise HttpError(403, "this form is accepted only from the dashboard's own pages")
        response = web.HTTPSeeOther("/ui/login", headers=SECURITY_HEADERS)
        sign_out(response)
        raise response

    add_route(app, "GET", "/ui/static/{name}", static)
    add_route(app, "GET", "/ui/login", page(engine, login_form))
    add_route(app, "POST", "/ui/login", page(engine, login))
    add_route(app, "POST", "/ui/logout", page(engine, logout))
    add_route(app, "GET", "/ui/", page(engine, start))
    for segment in KINDS:
        add_route(app, "GET", f"/ui/{segment}", page(engine, listing_page(engine, segment)))
        add_route(app, "GET", f"/ui/{segment}/{{id}}",
                  page(engine, detail_page(engine, segment)))
    add_route(app, "GET", "/ui/spikes", page(engine, spikes_page(engine)))
    add_route(app, "GET", "/ui/rules", page(engine, rules_page(engine)))
    add_route(app, "POST", "/ui/rules/explain", page(engine, explain_page(engine)))
