"""Every RPC and route the server serves has a declared role; each role opens exactly its own.

RPCs are enumerated from the gRPC server itself (``GrpcServer.methods``: every method
registered on it) and routes from the HTTP application (``route_table``), never from a
list kept here; each is then called over a real connection against ``tollway serve
--auth`` with no token, an unknown token and a token of each role. Adding an RPC or a
route without declaring it in ``server/roles.py`` fails here, saying what to add.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from server_harness import Served, ServerThread, tollway_serve, write_rules

from tollway.policy.engine import Engine
from tollway.server.auth import new_token, token_block
from tollway.server.http import build_app
from tollway.server.http_ops import Readiness
from tollway.server.http_routes import route_table
from tollway.server.metrics import Metrics
from tollway.server.roles import GRPC_ACCESS, HTTP_ACCESS, OPEN, ROLES, grpc_access, http_access

REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """Every method ``tollway serve`` registers: the same ``start_grpc``, in process."""
    rules = write_rules(tmp_path_factory.mktemp("roles"))
    engine = Engine.from_path(rules)
    server = ServerThread(engine)
    try:
        server.start()
        assert server.server is not None
        return server.server.methods
    finally:
        server.stop(grace=0)
        engine.close()


def test_every_registered_rpc_has_a_declared_role(registered: tuple[str, ...]) -> None:
    missing = [m for m in registered if grpc_access(m) is None]
    assert not missing, (
        f"RPCs registered without a role: {', '.join(missing)}. Add each to GRPC_ACCESS in "
        f"server/roles.py with the role a caller needs ({', '.join(ROLES)}), or OPEN for "
        "probes anyone may call; docs/security.md lists the roles."
    )


@pytest.fixture(scope="module")
def routes() -> tuple[tuple[str, str], ...]:
    """Every route ``tollway serve`` installs: the same ``build_app``, every route module."""
    engine = Engine.from_text("default allow")
    try:
        app = build_app(engine, Metrics(), Readiness(engine))
        return tuple((r.method, r.path) for r in route_table(app))
    finally:
        engine.close()


def test_every_route_has_a_declared_role(routes: tuple[tuple[str, str], ...]) -> None:
    # HEAD follows GET: a missing GET route is named once
    missing = [f"{m} {p}" for m, p in routes if m != "HEAD" and http_access(m, p) is None]
    assert not missing, (
        f"HTTP routes served without a role: {', '.join(missing)}. Add each to HTTP_ACCESS in "
        f"server/roles.py as (method, pattern) with the role a caller needs "
        f"({', '.join(ROLES)}), or OPEN for probes anyone may call; docs/security.md lists "
        "the roles."
    )


def test_the_route_table_declares_nothing_that_is_not_served(
    routes: tuple[tuple[str, str], ...],
) -> None:
    stale = [key for key in HTTP_ACCESS if key not in routes]
    assert not stale, f"HTTP_ACCESS in server/roles.py declares routes not served: {stale}"


def test_the_role_table_declares_nothing_that_is_not_served(registered: tuple[str, ...]) -> None:
    services = {m.lstrip("/").split("/", 1)[0] for m in registered}
    stale = [
        key for key in GRPC_ACCESS
        if (key not in registered if key.startswith("/") else key not in services)
    ]
    assert not stale, f"GRPC_ACCESS in server/roles.py declares what is not served: {stale}"


def test_known_rpcs_have_the_roles_the_contract_gives_them() -> None:
    assert grpc_access("/tollway.v1.Tollway/Decide") == "decide"
    assert grpc_access("/tollway.v1.Tollway/Report") == "decide"
    assert grpc_access("/tollway.v1.Tollway/Explain") == "decide"
    for admin in ("UpsertEntity", "GetEntity", "GetUsage", "ListUsage"):
        assert grpc_access(f"/tollway.v1.Tollway/{admin}") == "admin"
    assert grpc_access("/grpc.health.v1.Health/Check") == OPEN
    assert grpc_access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == OPEN
    assert grpc_access("/nope.Service/Method") is None
    assert http_access("GET", "/metrics") == "metrics"
    assert http_access("HEAD", "/metrics") == "metrics"
    assert http_access("GET", "/healthz") == OPEN and http_access("GET", "/readyz") == OPEN
    assert {a for (_, path), a in HTTP_ACCESS.items() if path.startswith("/v1/")} == {"admin"}


# ------------------------------------------------------------- over the wire


@dataclass(frozen=True)
class Tokens:
    by_role: dict[str, str]  # role -> a token with that role only
    path: Path


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    directory = tmp_path_factory.mktemp("tokens")
    by_role = {role: new_token() for role in ROLES}
    path = directory / "tokens.toml"
    path.write_text("\n".join(token_block(f"only-{r}", [r], t) for r, t in by_role.items()))
    return Tokens(by_role, path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[Served]:
    rules = write_rules(tmp_path_factory.mktemp("served"))
    with tollway_serve(rules, "--auth", str(tokens.path)) as served:
        yield served


def _call(channel: grpc.Channel, method: str, token: str | None) -> grpc.StatusCode:
    """Call ``method`` with an empty message (the shape its descriptor says) and return
    the status: OK, or the code it failed with."""
    service, name = method.lstrip("/").split("/", 1)
    desc = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    try:
        if desc.client_streaming and desc.server_streaming:
            responses = channel.stream_stream(method)(iter([b""]), metadata=metadata, timeout=10)
            next(iter(responses), None)  # a stream may end without a message
            responses.cancel()
        elif desc.server_streaming:
            responses = channel.unary_stream(method)(b"", metadata=metadata, timeout=10)
            next(iter(responses), None)  # a stream may end without a message
            responses.cancel()
        elif desc.client_streaming:
            channel.stream_unary(method)(iter([b""]), metadata=metadata, timeout=10)
        else:
            channel.unary_unary(method)(b"", metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_every_rpc_against_every_role(
    served: Served, tokens: Tokens, registered: tuple[str, ...]
) -> None:
    wrong: list[str] = []
    with grpc.insecure_channel(served.grpc) as channel:
        for method in registered:
            access = grpc_access(method)
            got = {
                "no token": _call(channel, method, None),
                "unknown token": _call(channel, method, new_token()),
                **{f"{r} token": _call(channel, method, t) for r, t in tokens.by_role.items()},
            }
            for who, code in got.items():
                if access == OPEN:
                    ok = code not in REFUSED
                elif who in ("no token", "unknown token"):
                    ok = code == grpc.StatusCode.UNAUTHENTICATED
                elif who == f"{access} token":
                    ok = code not in REFUSED
                else:
                    ok = code == grpc.StatusCode.PERMISSION_DENIED
                if not ok:
                    wrong.append(f"{method} ({access}) with {who}: {code.name}")
    assert not wrong, "\n".join(wrong)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is the answer under test


_OPENER = urllib.request.build_opener(_NoRedirects)


def _access(served: Served, method: str, path: str, token: str | None) -> str:
    """What access control made of the request: ``unauthenticated`` (401),
    ``permission_denied`` (403), ``sign-in`` (a dashboard page sending the browser to its
    sign-in form), or ``served`` (whatever the route itself answered)."""
    concrete = (path.replace("{id}", "u1").replace("{name}", "tollway.css")
                .replace("{kind}", "group").replace("{balance}", "credits"))
    request = urllib.request.Request(f"http://{served.http}{concrete}", method=method,
                                     data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=10):
            return "served"
    except urllib.error.HTTPError as err:
        body = err.read()
        if err.code == 303 and err.headers["Location"].startswith("/ui/login?next="):
            return "sign-in"
        if err.code in (401, 403) and err.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            if method != "HEAD":
                code = json.loads(body)["error"]["code"]
                assert code == {401: "unauthenticated", 403: "permission_denied"}[err.code]
            if err.code == 401:
                assert err.headers["WWW-Authenticate"].startswith("Bearer")
            return {401: "unauthenticated", 403: "permission_denied"}[err.code]
        return "served"


def test_every_route_against_every_role(
    served: Served, tokens: Tokens, routes: tuple[tuple[str, str], ...]
) -> None:
    wrong: list[str] = []
    for method, path in routes:
        access = http_access(method, path)
        dashboard = path.startswith("/ui/")
        got = {
            "no token": _access(served, method, path, None),
            "unknown token": _access(served, method, path, new_token()),
            **{f"{r} token": _access(served, method, path, t) for r, t in tokens.by_role.items()},
        }
        for who, outcome in got.items():
            if access == OPEN or who == f"{access} token":
                ok = outcome == "served"
            elif who in ("no token", "unknown token"):
                ok = outcome == ("sign-in" if dashboard else "unauthenticated")
            else:
                ok = outcome == ("sign-in" if dashboard else "permission_denied")
            if not ok:
                wrong.append(f"{method} {path} ({access}) with {who}: {outcome}")
    assert not wrong, "\n".join(wrong)


def test_unmatched_paths_are_the_routers_404_whoever_asks(served: Served) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{served.http}/nowhere", timeout=10)
    assert err.value.code == 404


def test_credentials_are_checked_before_the_message_is_read(served: Served, tokens: Tokens) -> None:
    """Bytes that do not decode: the unauthenticated caller learns nothing about them."""
    garbage = b"\xff\xff\xff\xff"
    with grpc.insecure_channel(served.grpc) as channel:
        decide = channel.unary_unary("/tollway.v1.Tollway/Decide")
        with pytest.raises(grpc.RpcError) as err:
            decide(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            decide(garbage, metadata=(("authorization", f"Bearer {tokens.by_role['decide']}"),),
                   timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_dashboard_signs_in_with_an_admin_token_kept_in_its_cookie(
    served: Served, tokens: Tokens
) -> None:
    base = f"http://{served.http}"

    def get(path: str, cookie: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(base + path)
        if cookie is not None:
            request.add_header("Cookie", cookie)
        try:
            with _OPENER.open(request, timeout=10) as resp:
                return int(resp.status), resp.headers.get("Location", "")
        except urllib.error.HTTPError as err:
            return int(err.code), err.headers.get("Location", "")

    status, location = get("/ui/users?sort=-total_cost")
    target = urllib.parse.urlsplit(location)
    assert status == 303 and target.path == "/ui/login"
    assert urllib.parse.parse_qs(target.query) == {"next": ["/ui/users?sort=-total_cost"]}
    form = urllib.parse.urlencode({"token": tokens.by_role["admin"], "next": "/ui/users"})
    request = urllib.request.Request(base + "/ui/login", data=form.encode(), method="POST",
                                     headers={"Origin": base})
    with pytest.raises(urllib.error.HTTPError) as signed:
        _OPENER.open(request, timeout=10)
    assert signed.value.code == 303
    cookie = signed.value.headers["Set-Cookie"].split(";", 1)[0]
    assert get("/ui/users", cookie)[0] == 200
    # a cookie holding a token without the admin role opens nothing
    assert get("/ui/users", f"tollway_session={tokens.by_role['decide']}")[0] == 303
    # the cookie is the dashboard's only: the JSON API still wants the header
    assert _access(served, "GET", "/v1/usage/users", None) == "unauthenticated"
