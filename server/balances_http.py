"""The balance routes of the HTTP port (docs/api.md): ``GET /v1/balances/{kind}/{id}``
and ``POST /v1/balances/{kind}/{id}/{balance}``; both need ``admin`` (roles.py)."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from tollway.policy.model import BalanceView
from tollway.policy.validate import FieldError, need_kind, need_known_fields, need_object

from .http_errors import json_response
from .http_routes import add_route, offload, query_params, read_json

__all__ = ["install"]

_CREDIT_FIELDS = frozenset({"amount", "reason", "idempotency_key"})


class BalanceEngine(Protocol):
    def credit(
        self, kind: str, id: str, balance: str, amount: float, *, reason: str = "",
        idempotency_key: str,
    ) -> tuple[bool, BalanceView]: ...

    def get_balance(self, kind: str, id: str) -> list[BalanceView]: ...


def install(app: web.Application, engine: BalanceEngine) -> None:
    async def show(request: web.Request) -> web.Response:
        for name in query_params(request):
            raise FieldError(name, "unknown parameter (this route takes none)")
        kind, ident = request.match_info["kind"], request.match_info["id"]
        views = await offload(request, engine.get_balance, kind, ident)
        return json_response({
            "kind": need_kind(kind), "id": ident, "balances": [v.to_dict() for v in views]
        })

    async def credit(request: web.Request) -> web.Response:
        for name in query_params(request):
            raise FieldError(name, "unknown parameter (the credit is in the body)")
        body: Any = need_object(await read_json(request), "body")
        need_known_fields(body, _CREDIT_FIELDS, "body")
        info = request.match_info

        def call() -> tuple[bool, BalanceView]:
            return engine.credit(
                info["kind"], info["id"], info["balance"], body.get("amount"),
                reason=body.get("reason") or "", idempotency_key=body.get("idempotency_key"),
            )

        applied, view = await offload(request, call)
        return json_response({"applied": applied, "balance": view.to_dict()})

    add_route(app, "GET", "/v1/balances/{kind}/{id}", show)
    add_route(app, "POST", "/v1/balances/{kind}/{id}/{balance}", credit)
