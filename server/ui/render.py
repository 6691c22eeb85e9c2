"""Turning page values into HTML: the Jinja2 environment, its filters, and the response.

Templates live in ``templates/`` beside this module (package data). Everything is
escaped unless a template says otherwise; undefined names are errors, not blanks. Every
page is sent with a Content-Security-Policy that allows no script at all, styles and
images from the dashboard only, and forms that post back to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

__all__ = [
    "SECURITY_HEADERS",
    "environment",
    "html_response",
    "usd",
    "number",
    "when",
    "ago",
    "share",
    "pretty_json",
    "entity_path",
]

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def usd(value: float) -> str:
    """Dollars with separators and up to 6 decimals, at least 2: ``$1,234.50``, ``$0.0031``."""
    if not math.isfinite(value):
        return "—"
    text = f"{abs(value):,.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    text = f"{whole}.{frac.ljust(2, '0')}"
    return f"-${text}" if value < 0 else f"${text}"


def number(value: float) -> str:
    """A count with thousands separators; a fraction keeps up to 3 decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def when(t: float | None) -> str:
    """Unix seconds as ``2026-11-29 20:14:05 UTC``; an em dash when unknown."""
    if t is None or t < 0 or not math.isfinite(t):
        return "—"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(t: float | None) -> str:
    """Unix seconds as the ISO 8601 form of ``<time datetime=…>``."""
    if t is None or t < 0 or not math.isfinite(t):
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(t: float | None, now: float) -> str:
    """How long before ``now``: ``just now``, ``5 min ago``, ``3 h ago``, ``12 d ago``."""
    if t is None or t < 0 or not math.isfinite(t):
        return ""
    seconds = now - t
    if seconds < 0:
        return "in the future"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def share(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole`` with one decimal (``—`` when whole is 0)."""
    if whole <= 0:
        return "—"
    return f"{100.0 * part / whole:.1f}%"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def entity_path(kind: str, ident: str) -> str:
    """The detail page of a user or group (``kind`` singular); any id, escaped whole."""
    return f"/ui/{kind}s/{quote(ident, safe='')}"


def _build() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tollway.server.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        usd=usd, number=number, when=when, iso=iso, share=share, pretty_json=pretty_json
    )
    env.globals.update(ago=ago, entity_path=entity_path)
    return env


environment = _build()


def html_response(
    template: str, context: Mapping[str, Any], *, status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``template`` rendered with ``context``, as a UTF-8 HTML answer with the headers above."""
    body = environment.get_template(template).render(context)
    response = web.Response(
        status=status, text=body, content_type="text/html", charset="utf-8",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )
    return response
