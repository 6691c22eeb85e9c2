"""Envoy's protocols on tollway's gRPC port: ext_authz, ext_proc and the rate-limit service.

Each is a thin translator between Envoy's messages and the one ``Engine`` (through the
server's shared ``EngineCalls``): it reads identity with ``tollway.server.identity``,
answers refusals with ``tollway.server.openai_errors`` and adds no policy of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc

from tollway.server.engine_calls import EngineCalls

from . import authz, ext_proc, ratelimit

__all__ = ["add_envoy_services", "SERVICE_NAMES"]

SERVICE_NAMES: tuple[str, ...] = (authz.SERVICE_NAME, ext_proc.SERVICE_NAME, ratelimit.SERVICE_NAME)


def add_envoy_services(
    server: grpc.aio.Server, calls: EngineCalls, *, attribute_headers: Mapping[str, str]
) -> tuple[str, ...]:
    """Register the three services on ``server``; returns their full names."""
    authz_grpc.add_AuthorizationServicer_to_server(
        authz.AuthorizationService(calls, attribute_headers), server
    )
    ep_grpc.add_ExternalProcessorServicer_to_server(
        ext_proc.ExternalProcessorService(calls, attribute_headers), server
    )
    rls_grpc.add_RateLimitServiceServicer_to_server(ratelimit.RateLimitService(calls), server)
    return SERVICE_NAMES
