"""The client's ``token=`` and ``tls=`` against a real gRPC server that checks them.

The server is the real Tollway service over the real engine, with an interceptor that
records the ``authorization`` metadata and refuses calls without the expected token, on a
TLS port with certificates generated for the test (a private CA, a server certificate
for ``tollway.test``, a client certificate for mutual TLS).
"""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import import_or_skip

from tollway.client import TLS, Client, SidecarError
from tollway.policy.engine import Engine
from tollway.server.grpc_service import TollwayService
from tollway.v1 import tollway_pb2_grpc as pb_grpc

x509 = import_or_skip("cryptography.x509", "the TLS tests generate certificates with it")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TOKEN = "s3cr3t-token.value_42"
SERVER_NAME = "tollway.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: bytes
    server_key: bytes
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: Any, issuer_key: Any, *, ca: bool,
    dns: str | None = None,
) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("tollway test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(SERVER_NAME, server_key, ca, ca_key, ca=False, dns=SERVER_NAME)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("gateway", client_key, ca, ca_key, ca=False)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "client.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    (d / "client.key").write_bytes(_key_pem(client_key))
    return Pki(
        d / "ca.pem",
        server.public_bytes(serialization.Encoding.PEM),
        _key_pem(server_key),
        d / "client.pem",
        d / "client.key",
    )


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Records each call's ``authorization`` value; refuses a wrong one with UNAUTHENTICATED."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        metadata = dict(details.invocation_metadata or ())
        value = metadata.get("authorization")
        self.seen.append(value)
        if value == f"Bearer {TOKEN}" or details.method.startswith("/grpc.health"):
            return await continuation(details)

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

        return grpc.unary_unary_rpc_method_handler(refuse)


class SecureServer:
    """The Tollway service behind ``TokenCheck``, on a TLS port, in a loop of its own."""

    def __init__(self, engine: Engine, credentials: grpc.ServerCredentials) -> None:
        self.check = TokenCheck()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server, self.port = self._run(self._start(engine, credentials))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _start(self, engine: Engine, credentials: grpc.ServerCredentials) -> Any:
        server = grpc.aio.server(interceptors=[self.check])
        pb_grpc.add_TollwayServicer_to_server(TollwayService(engine), server)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    def stop(self) -> None:
        self._run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def _serve(pki: Pki, *, mutual: bool) -> Iterator[SecureServer]:
    engine = Engine.from_text("default allow\n")
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)],
        root_certificates=pki.ca.read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    server = SecureServer(engine, credentials)
    yield server
    server.stop()
    engine.close()


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[SecureServer]:
    yield from _serve(pki, mutual=False)


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[SecureServer]:
    yield from _serve(pki, mutual=True)


def _secure(server: SecureServer, tls: Any, **kwargs: Any) -> Client:
    return Client(f"127.0.0.1:{server.port}", tls=tls, timeout=5.0, **kwargs)


def test_the_token_travels_as_a_bearer_header(tls_server: SecureServer, pki: Pki) -> None:
    tls = TLS(ca=pki.ca, server_name=SERVER_NAME)
    with _secure(tls_server, tls, token=TOKEN) as c:
        seen = len(tls_server.check.seen)
        assert c.decide(user="u1", model="m").reason == "ALLOWED"
        assert c.report(request_id="r-token", user="u1").outcome == "added"
        assert tls_server.check.seen[seen:] == [f"Bearer {TOKEN}"] * 2


def test_without_the_token_decide_falls_back_and_report_raises(
    tls_server: SecureServer, pki: Pki
) -> None:
    with _secure(tls_server, TLS(ca=pki.ca, server_name=SERVER_NAME), on_error="deny") as c:
        d = c.decide(model="m")
        assert (d.allowed, d.reason) == (False, "STORE_UNAVAILABLE")
        assert "UNAUTHENTICATED" in d.message
        with pytest.raises(SidecarError) as err:
            c.report(request_id="r-no-token")
        assert err.value.code == "UNAUTHENTICATED"
        assert c.stats.reports_queued == 0  # a refusal is not retried


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param(lambda pki: TLS(ca=pki.ca, server_name=SERVER_NAME), id="TLS-path"),
        pytest.param(lambda pki: TLS(ca=pki.ca.read_bytes(), server_name=SERVER_NAME), id="TLS-bytes"),
        pytest.param(
            lambda pki: grpc.ssl_channel_credentials(pki.ca.read_bytes()), id="credentials",
        ),
    ],
)
def test_tls_forms_verify_the_server(tls_server: SecureServer, pki: Pki, tls: Any) -> None:
    options = [] if not isinstance(tls(pki), grpc.ChannelCredentials) else [
        ("grpc.ssl_target_name_override", SERVER_NAME)
    ]
    with _secure(tls_server, tls(pki), token=TOKEN, options=options) as c:
        assert c.decide(model="m").reason == "ALLOWED"


def test_a_ca_path_alone_needs_a_matching_target_name(tls_server: SecureServer, pki: Pki) -> None:
    # 127.0.0.1 is not the name in the certificate: the handshake must fail
    with _secure(tls_server, str(pki.ca), token=TOKEN, on_error="raise") as c:
        with pytest.raises(SidecarError) as err:
            c.decide(model="m")
        assert err.value.code == "UNAVAILABLE"


@pytest.mark.parametrize(
    "tls", [None, True], ids=["plaintext-to-a-tls-port", "system-roots-do-not-know-the-ca"]
)
def test_tls_is_not_optional_on_a_tls_port(tls_server: SecureServer, tls: Any) -> None:
    with _secure(tls_server, tls, token=TOKEN) as c:
        d = c.decide(model="m")
        assert d.reason == "STORE_UNAVAILABLE" and c.stats.fallback_decisions == 1


def test_mutual_tls(mtls_server: SecureServer, pki: Pki) -> None:
    mutual = TLS(ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name=SERVER_NAME)
    with _secure(mtls_server, mutual, token=TOKEN) as c:
        assert c.decide(model="m").reason == "ALLOWED"
    with _secure(mtls_server, TLS(ca=pki.ca, server_name=SERVER_NAME), token=TOKEN) as c:
        assert c.decide(model="m").reason == "STORE_UNAVAILABLE"  # no client certificate


def test_a_client_certificate_needs_its_key(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"^tls: cert and key go together"):
        Client("127.0.0.1:1", tls=TLS(ca=pki.ca, cert=pki.client_cert))
