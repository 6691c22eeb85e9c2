"""Every RPC the server registers has a declared role, and each role opens exactly its RPCs.

The RPCs are enumerated from the server itself (``GrpcServer.methods``: every method
registered on it), never from a list kept here; each is then called over a real channel
against ``tollway serve --auth`` with no token, an unknown token and a token of each role.
Adding an RPC without declaring it in ``server/roles.py`` fails here, saying what to add.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from server_harness import Served, ServerThread, tollway_serve, write_rules

from tollway.policy.engine import Engine
from tollway.server.auth import new_token, token_block
from tollway.server.roles import GRPC_ACCESS, OPEN, ROLES, grpc_access

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
    with tollway_serve(rules, "--auth", str(tokens.path), "--http", "off") as served:
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
            next(iter(responses))
            responses.cancel()
        elif desc.server_streaming:
            responses = channel.unary_stream(method)(b"", metadata=metadata, timeout=10)
            next(iter(responses))
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
