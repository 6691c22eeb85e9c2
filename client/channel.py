"""How a client reaches the sidecar: target, channel options, credentials and call metadata.

Built once per client (``ChannelSpec.build``), then asked for as many channels as it
needs: the synchronous client's, the asyncio client's, the background report sender's.
Every one of them gets the same options, credentials and metadata.

The options suit a sidecar on loopback or a Unix socket: reconnect within a second
after the sidecar restarts (gRPC's default backoff grows to two minutes), keepalive
pings that notice a dead peer while idle (the server accepts them from 20 s apart),
and never an HTTP proxy from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc

__all__ = ["DEFAULT_TARGET", "TLS", "TLSLike", "ChannelSpec", "normalize_target", "bearer"]

DEFAULT_TARGET = "127.0.0.1:50051"

# Requests are small and so are answers, except a large Explain or usage page.
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
)

PemSource: TypeAlias = str | os.PathLike[str] | bytes


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS for the channel. Each PEM is a file path or the PEM bytes themselves.

    ``ca``: the roots that sign the server's certificate (None: the system's roots).
    ``cert`` and ``key``: the client's certificate chain and key, for mutual TLS.
    ``server_name``: the name the server's certificate must carry, when the target does
    not say it (an IP address, a Unix socket).
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: cert and key go together (mutual TLS needs both)")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "tls.ca"),
            private_key=_pem(self.key, "tls.key"),
            certificate_chain=_pem(self.cert, "tls.cert"),
        )


TLSLike: TypeAlias = bool | str | os.PathLike[str] | TLS | grpc.ChannelCredentials | None


def _pem(source: PemSource | None, name: str) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {os.fspath(source)!r}: {exc.strerror}") from exc


def _tls(tls: TLSLike) -> tuple[grpc.ChannelCredentials | None, str | None]:
    """``(credentials, server name override)``; no credentials means plaintext."""
    if tls is None or tls is False:
        return None, None
    if tls is True:
        return grpc.ssl_channel_credentials(), None
    if isinstance(tls, grpc.ChannelCredentials):
        return tls, None
    if isinstance(tls, TLS):
        return tls.credentials(), tls.server_name
    if isinstance(tls, str | os.PathLike):
        return TLS(ca=tls).credentials(), None  # a CA bundle's path
    raise ValueError(
        f"tls: expected True, a CA file path, tollway.client.TLS or grpc.ChannelCredentials; "
        f"got {type(tls).__name__}"
    )


def normalize_target(target: str) -> str:
    """``HOST:PORT``, ``unix:PATH``, ``unix:///PATH`` or any gRPC target; a bare absolute
    path is taken as a Unix socket."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError("target: must be HOST:PORT or unix:PATH")
    target = target.strip()
    if target.startswith("/"):
        return "unix:" + target
    return target


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` as ``authorization: Bearer <token>``."""
    if token is None:
        return ()
    if not isinstance(token, str) or not token:
        raise ValueError("token: must be a non-empty string")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("token: must be printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Everything needed to open a channel to the sidecar, checked once."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def build(
        cls,
        target: str,
        *,
        token: str | None = None,
        tls: TLSLike = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> ChannelSpec:
        """``options`` are extra gRPC channel arguments; they win over the defaults."""
        credentials, server_name = _tls(tls)
        merged = dict(CHANNEL_OPTIONS)
        if server_name:
            merged["grpc.ssl_target_name_override"] = server_name
            merged["grpc.default_authority"] = server_name
        merged.update(options)
        return cls(normalize_target(target), credentials, tuple(merged.items()), bearer(token))

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel; create it inside the event loop that will use it."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
