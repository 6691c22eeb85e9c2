"""Build, start and stop the grpc.aio server: the Tollway and Envoy services, health, reflection.

Health and reflection are wired in one function; shutdown turns health to NOT_SERVING
before ``server.stop(grace)`` drains in-flight calls, so load balancers stop sending
new calls while the old ones finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tollway.policy.engine import Engine
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from .decoding import GuardedServer
from .envoy import add_envoy_services
from .grpc_service import TollwayService
from .health_watch import HealthServicer
from .tls import ServerTls

__all__ = ["GrpcServer", "MAX_MESSAGE_BYTES", "start_grpc", "configure_maintenance"]

log = logging.getLogger("tollway.server")

# Requests are small (ids, a model name, metadata ≤ 64 KiB); anything bigger is refused
# by gRPC with RESOURCE_EXHAUSTED before it reaches the engine.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def server_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES, *, reuse_port: bool = False
) -> list[tuple[str, int]]:
    """The grpc.aio server's options. ``reuse_port``: share the port with the other
    workers of ``serve --workers N`` (otherwise a port is never shared silently with
    another process, which gRPC would allow by default)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # accept the keepalive pings of tollway.client (every 30 s, idle or not): by
        # default gRPC answers pings closer than 5 minutes on an idle connection with GOAWAY
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ]


async def configure_maintenance(
    server: grpc.aio.Server, extra_services: Sequence[str] = ()
) -> tuple[health.aio.HealthServicer, tuple[str, ...]]:
    """Register health (SERVING for "", the Tollway service and ``extra_services``) and
    reflection over all of them; returns the servicer and the names health answers for."""
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    services = (*(s.full_name for s in pb.DESCRIPTOR.services_by_name.values()), *extra_services)
    for name in ("", *services):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*services, reflection.SERVICE_NAME, health.SERVICE_NAME), server
    )
    return servicer, ("", *services)


def bind_failure(listen: str) -> str:
    """Why ``listen`` cannot be bound, in the operating system's words.

    gRPC's own error only says "Failed to bind"; binding a plain socket to the same
    address finds the reason (address already in use, permission denied, no such file).
    """
    try:
        if listen.startswith("unix:"):
            path = listen.removeprefix("unix:")
            with socket.socket(socket.AF_UNIX) as probe:
                probe.bind(path)
            os.unlink(path)
        else:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as probe:
                probe.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return reason[:1].lower() + reason[1:]
    return "gRPC could not bind it"


def _bound_address(listen: str, port: int) -> str:
    if listen.startswith("unix:"):
        return listen
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"


@dataclass(slots=True)
class GrpcServer:
    """A started server and what shutting it down needs."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service: TollwayService
    address: str  # as bound: the real port when ``listen`` asked for port 0
    health_names: tuple[str, ...] = ()  # what health answers for: "" and every service
    # every method registered, "/package.Service/Method" (the role table must know each)
    methods: tuple[str, ...] = ()

    async def stop(self, grace: float, *, quiet: float = 0.1, max_delay: float = 2.0) -> None:
        """NOT_SERVING first, then refuse new calls and wait up to ``grace`` for in-flight ones.

        gRPC core cancels calls it has received but not yet handed to the server when
        ``stop`` begins (they reach the client as CANCELLED, which clients do not retry).
        So calls keep being served until none started for ``quiet`` seconds (at most
        ``max_delay``, and half the grace): queued calls get answered and well-behaved
        clients, watching health, move away; what arrives after ``stop`` is refused
        with UNAVAILABLE, which clients retry elsewhere.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.health.enter_graceful_shutdown()
        deadline = start + max(0.0, min(max_delay, grace / 2))
        while loop.time() < deadline and time.monotonic() - self.service.last_call < quiet:
            await asyncio.sleep(quiet / 4)
        await self.server.stop(max(0.0, grace - (loop.time() - start)))
        self.service.close()


async def start_grpc(
    engine: Engine,
    listen: str,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_workers: int = 32,
    attribute_headers: Mapping[str, str] | None = None,
    tls: ServerTls | None = None,
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
    reuse_port: bool = False,
) -> GrpcServer:
    """Listen on ``HOST:PORT`` or ``unix:PATH`` and start serving; raises ``OSError`` if it cannot bind.

    One port serves ``tollway.v1.Tollway`` and Envoy's ext_authz, ext_proc and rate-limit
    services, all over ``engine``; ``attribute_headers`` (header -> attribute) tells the
    Envoy services which request headers become attributes. ``tls`` serves over TLS (mTLS
    when it has a client CA); ``interceptors`` run before every call of every service,
    ahead of the decode guard (the auth interceptor refuses a call before its message is
    read). ``reuse_port``: bind with ``SO_REUSEPORT``, beside the other workers of
    ``serve --workers N``.
    """
    # every service registers on the guarded server: each method decodes its own requests;
    # interceptors (the auth check) run before that, on the raw call
    server = GuardedServer(
        grpc.aio.server(
            options=server_options(max_message_bytes, reuse_port=reuse_port),
            interceptors=interceptors or None,
        )
    )
    service = TollwayService(engine, max_workers=max_workers)
    pb_grpc.add_TollwayServicer_to_server(service, server)
    envoy = add_envoy_services(server, service.calls, attribute_headers=attribute_headers or {})
    health_servicer, health_names = await configure_maintenance(server, envoy)
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.grpc_credentials())
    except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
        raise OSError(f"cannot listen on {listen}: {bind_failure(listen)}") from exc
    if port == 0 and not listen.startswith("unix:"):
        raise OSError(f"cannot listen on {listen}: {bind_failure(listen)}")
    await server.start()
    return GrpcServer(
        server, health_servicer, service, _bound_address(listen, port), health_names,
        tuple(server.methods),
    )

