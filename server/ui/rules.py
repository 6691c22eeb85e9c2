"""The Rules page: the ruleset in force, the last reload, and an explain box.

The source shown is the canonical layout (``tollway fmt``) of the files the ruleset in
force was compiled from, not what the files on disk hold now (after a failed reload they
differ). It is laid out once per version. The explain box posts a request as JSON and
gets the engine's ``explain`` of it: the decision and the trace, nothing consumed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tollway.dsl.compiled import CompiledRuleset
from tollway.dsl.formatter import format_file
from tollway.policy.engine import Engine
from tollway.policy.model import Explanation

from ..http_errors import HttpError
from ..http_routes import RELOAD_STATUS, offload, read_form
from .pages import layout
from .render import html_response
from .session import same_origin

__all__ = ["EXAMPLE_REQUEST", "SourceFile", "formatted_sources", "rules_page", "explain_page"]

EXAMPLE_REQUEST = '{\n  "user": {"id": "u1", "metadata": {"tier": "free"}},\n  "model": "openai/gpt-5"\n}'
# The explain box's text, at most (the HTTP port's body limit applies first).
MAX_REQUEST_CHARS = 64 * 1024 + 4096


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of the ruleset in force: its path and canonical text."""

    path: str
    anchor: str  # the HTML id of its section
    text: str
    lines: int


_cache_lock = threading.Lock()
_cache: dict[str, tuple[SourceFile, ...]] = {}
_CACHED_VERSIONS = 4


def formatted_sources(ruleset: CompiledRuleset) -> tuple[SourceFile, ...]:
    """The files of ``ruleset`` in the canonical layout (cached by version)."""
    with _cache_lock:
        found = _cache.get(ruleset.version)
    if found is not None:
        return found
    files = []
    for i, rf in enumerate(ruleset.files, 1):
        text = format_file(rf)
        files.append(SourceFile(rf.path, f"file-{i}", text, text.count("\n")))
    made = tuple(files)
    with _cache_lock:
        if len(_cache) >= _CACHED_VERSIONS:
            _cache.clear()
        _cache[ruleset.version] = made
    return made


def _context(request: web.Request, engine: Engine) -> dict[str, Any]:
    ruleset = engine.ruleset
    status = request.app.get(RELOAD_STATUS)
    return {
        "page": layout(request, engine, "Rules", "rules"),
        "ruleset": ruleset,
        "quota_count": len(ruleset.quotas),
        "sources": formatted_sources(ruleset),
        "reload": status.last if status is not None else None,
        "request_text": EXAMPLE_REQUEST,
        "explained": None,
        "explain_error": None,
    }


def rules_page(engine: Engine) -> Any:
    async def handler(request: web.Request) -> web.Response:
        context = await offload(request, _context, request, engine)
        return html_response("rules.html", context)

    return handler


def _parse_request(text: str) -> Any:
    if len(text) > MAX_REQUEST_CHARS:
        raise ValueError(f"request: longer than {MAX_REQUEST_CHARS} characters")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"request: not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("request: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("request: must be a JSON object")
    return data


def _explained(engine: Engine, text: str) -> Explanation:
    return engine.explain(_parse_request(text))


def explain_page(engine: Engine) -> Any:
    async def handler(request: web.Request) -> web.Response:
        if not same_origin(request):
            raise HttpError(403, "this form is accepted only from the dashboard's own pages")
        form = await read_form(request)
        text = form.get("request", "")
        context = await offload(request, _context, request, engine)
        context["request_text"] = text
        try:
            context["explained"] = await offload(request, _explained, engine, text)
        except ValueError as exc:
            context["explain_error"] = str(exc)
        status = 400 if context["explain_error"] else 200
        return html_response("rules.html", context, status=status)

    return handler
