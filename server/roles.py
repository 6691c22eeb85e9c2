"""Who may call what: the one table of access for every gRPC method and HTTP route.

Every RPC the gRPC server registers and every HTTP route the HTTP port serves must be
declared here, with the role a token needs to call it, or ``OPEN`` for probes and
discovery that need no token. ``tests/test_security_roles.py`` enumerates the running
servers and fails, naming the missing entry, when something is served but not declared;
at run time an undeclared method or route is refused to everyone (fail closed).

Roles (docs/security.md):

- ``decide``: what a gateway needs on its hot path (Decide, Report, Explain, and
  Envoy's ext_authz, ext_proc and rate-limit services, which decide for it);
- ``admin``: entity metadata, usage, every ``/v1/…`` HTTP route and the dashboard's pages;
- ``metrics``: ``GET /metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

__all__ = [
    "Role", "Access", "ROLES", "OPEN", "GRPC_ACCESS", "HTTP_ACCESS", "grpc_access",
    "http_access",
]

Role = Literal["decide", "admin", "metrics"]
Access = Literal["decide", "admin", "metrics", "open"]

ROLES: Final[tuple[Role, ...]] = ("decide", "admin", "metrics")
OPEN: Final = "open"

# gRPC: a full method name ("/package.Service/Method"), or a whole service by its full
# name ("package.Service") when every method of it has the same access.
GRPC_ACCESS: Final[Mapping[str, Access]] = {
    "/tollway.v1.Tollway/Decide": "decide",
    "/tollway.v1.Tollway/Report": "decide",
    "/tollway.v1.Tollway/Explain": "decide",
    "/tollway.v1.Tollway/UpsertEntity": "admin",
    "/tollway.v1.Tollway/GetEntity": "admin",
    "/tollway.v1.Tollway/GetUsage": "admin",
    "/tollway.v1.Tollway/ListUsage": "admin",
    "/tollway.v1.Tollway/GetUsageSeries": "admin",
    "/tollway.v1.Tollway/ListSpikes": "admin",
    "/tollway.v1.Tollway/Credit": "admin",
    "/tollway.v1.Tollway/GetBalance": "admin",
    # Envoy decides through these on the gateway's behalf (docs/envoy.md)
    "/envoy.service.auth.v3.Authorization/Check": "decide",
    "/envoy.service.ext_proc.v3.ExternalProcessor/Process": "decide",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit": "decide",
    "grpc.health.v1.Health": OPEN,
    "grpc.reflection.v1alpha.ServerReflection": OPEN,
}

# HTTP: (method, route pattern as ``add_route`` was given it). HEAD follows GET.
HTTP_ACCESS: Final[Mapping[tuple[str, str], Access]] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): "metrics",
    ("GET", "/v1/usage/users"): "admin",
    ("GET", "/v1/usage/user"): "admin",
    ("GET", "/v1/usage/groups"): "admin",
    ("GET", "/v1/usage/group"): "admin",
    ("GET", "/v1/usage/users/{id}"): "admin",
    ("GET", "/v1/usage/user/{id}"): "admin",
    ("GET", "/v1/usage/groups/{id}"): "admin",
    ("GET", "/v1/usage/group/{id}"): "admin",
    ("GET", "/v1/usage/users/{id}/series"): "admin",
    ("GET", "/v1/usage/user/{id}/series"): "admin",
    ("GET", "/v1/usage/groups/{id}/series"): "admin",
    ("GET", "/v1/usage/group/{id}/series"): "admin",
    ("GET", "/v1/usage/spikes"): "admin",
    ("GET", "/v1/activity"): "admin",
    ("GET", "/v1/balances/{kind}/{id}"): "admin",
    ("POST", "/v1/balances/{kind}/{id}/{balance}"): "admin",
    # the dashboard (docs/dashboard.md): its pages need admin, signing in needs nothing
    ("GET", "/ui/"): "admin",
    ("GET", "/ui/users"): "admin",
    ("GET", "/ui/users/{id}"): "admin",
    ("GET", "/ui/groups"): "admin",
    ("GET", "/ui/groups/{id}"): "admin",
    ("GET", "/ui/spikes"): "admin",
    ("GET", "/ui/rules"): "admin",
    ("POST", "/ui/rules/explain"): "admin",
    ("GET", "/ui/login"): OPEN,
    ("POST", "/ui/login"): OPEN,
    ("POST", "/ui/logout"): OPEN,
    ("GET", "/ui/static/{name}"): OPEN,
}


def grpc_access(method: str) -> Access | None:
    """The access declared for a full gRPC method name; None when it is not declared."""
    access = GRPC_ACCESS.get(method)
    if access is None:
        service = method.lstrip("/").split("/", 1)[0]
        access = GRPC_ACCESS.get(service)
    return access


def http_access(method: str, pattern: str) -> Access | None:
    """The access declared for a route (its pattern, not the concrete path); None if undeclared."""
    return HTTP_ACCESS.get(("GET" if method == "HEAD" else method, pattern))
