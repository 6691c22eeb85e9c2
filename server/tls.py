"""TLS and mTLS for both ports, with certificates that rotate without a restart.

``ServerTls`` reads ``--tls-cert``/``--tls-key`` (and ``--tls-client-ca`` for mTLS) once
at start and again on ``reload()`` (SIGHUP and the reload watch). A pair that does not
load (a key that does not match its certificate, a half-written file) keeps the
certificates in force. New connections get the new certificates; open connections
keep the ones they were made with.

- gRPC: ``dynamic_ssl_server_credentials``, whose fetcher gRPC calls before each new
  handshake; it hands over a new configuration only when a reload changed it.
- HTTP: one ``ssl.SSLContext`` is given to the server; its SNI callback, which OpenSSL
  calls for every handshake (with or without a server name), moves the connection to
  the context of the certificates in force.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TlsFiles", "TlsError", "ServerTls"]

log = logging.getLogger("tollway.server.tls")


class TlsError(ValueError):
    """Certificates or keys that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


@dataclass(frozen=True, slots=True)
class _Material:
    """One consistent read of the files: what both servers serve until the next reload."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"{what} {path}: not a PEM file")
    return data


def _load(files: TlsFiles) -> _Material:
    cert = _read(files.cert, "--tls-cert")
    key = _read(files.key, "--tls-key")
    client_ca = _read(files.client_ca, "--tls-client-ca") if files.client_ca else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # the files again, by path (the ssl module reads keys from files only); a file
        # swapped between the two reads shows up as a mismatch or as the next change
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"--tls-cert {files.cert} / --tls-key {files.key}: cannot be used together: {exc}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"--tls-client-ca {files.client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return _Material(cert, key, client_ca, context)


class ServerTls:
    """The certificates in force for the gRPC and HTTP ports."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._material = _load(files)
        self._generation = 0
        self._grpc_generation = 0  # the generation gRPC was last handed
        self._lock = threading.Lock()

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (mTLS)."""
        return self.files.client_ca is not None

    def reload(self) -> None:
        """Re-read the files; on ``TlsError`` the certificates in force stay."""
        material = _load(self.files)
        with self._lock:
            self._material = material
            self._generation += 1

    # ------------------------------------------------------------------ gRPC

    def _grpc_config(self, material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.client_ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration after a reload, else None."""
        with self._lock:
            if self._grpc_generation == self._generation:
                return None
            self._grpc_generation = self._generation
            material = self._material
        return self._grpc_config(material)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            material = self._material
            self._grpc_generation = self._generation
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(material), self._fetch, require_client_authentication=self.mutual
        )

    # ------------------------------------------------------------------ HTTP

    def ssl_context(self) -> ssl.SSLContext:
        """The context to give the HTTP server; connections move to the current material."""
        base = _load(self.files).context

        def current(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            context = self._material.context
            if connection.context is not context:
                connection.context = context
            return None

        base.sni_callback = current
        return base
