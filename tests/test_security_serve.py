"""``tollway serve`` with TLS, mTLS, tokens and safe defaults, over real channels.

Certificates are made at run time (``pki`` fixture). The token and TLS servers run as
processes, exactly as deployed; every assertion is about what a client sees.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import struct_pb2
from server_harness import RULES, Served, tollway_serve, write_rules

from tollway.server.auth import new_token, token_block
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from pki import Issued, Pki


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _tls_channel(
    address: str, ca: Path, client: Issued | None = None
) -> grpc.Channel:
    chain, key = client.pem() if client is not None else (None, None)
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key, chain)
    return grpc.secure_channel(address, credentials)


def _https(
    address: str, path: str, ca: Path, *, client: Issued | None = None, token: str | None = None
) -> tuple[int, bytes]:
    """GET over TLS: (status, body); raises ``urllib.error.URLError`` when TLS fails."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    request = urllib.request.Request(f"https://{address}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def _decide(channel: grpc.Channel, token: str | None = None) -> pb.Decision | grpc.StatusCode:
    try:
        return pb_grpc.TollwayStub(channel).Decide(
            pb.DecideRequest(model="m"), metadata=_bearer(token) if token else None, timeout=10
        )
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]


# ------------------------------------------------------------------- TLS + tokens


class Secured:
    def __init__(self, served: Served, decide: str, admin: str, directory: Path) -> None:
        self.served = served
        self.decide_token = decide
        self.admin_token = admin
        self.directory = directory


@pytest.fixture(scope="module")
def tls_tokens(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Secured]:
    """TLS without client certificates, tokens for decide and admin."""
    d = tmp_path_factory.mktemp("tls-tokens")
    decide, admin = new_token(), new_token()
    auth = d / "tokens.toml"
    auth.write_text(token_block("gateway", ["decide"], decide) + token_block("ops", ["admin"], admin))
    rules = write_rules(d, "schema user { tier: string admin }\n" + RULES)
    with tollway_serve(
        rules, "--auth", str(auth), "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key), "--log-level", "debug",
    ) as served:
        yield Secured(served, decide, admin, d)


def test_a_plain_client_is_refused_by_a_tls_port(tls_tokens: Secured) -> None:
    with grpc.insecure_channel(tls_tokens.served.grpc) as channel:
        assert _decide(channel, tls_tokens.decide_token) == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_is_served_with_a_token_and_refused_without(
    tls_tokens: Secured, pki: Pki
) -> None:
    with _tls_channel(tls_tokens.served.grpc, pki.ca.cert) as channel:
        d = _decide(channel, tls_tokens.decide_token)
        assert isinstance(d, pb.Decision) and d.allowed
        assert _decide(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert _decide(channel, tls_tokens.admin_token) == grpc.StatusCode.PERMISSION_DENIED


def test_a_client_that_does_not_trust_the_server_certificate_fails(
    tls_tokens: Secured, pki: Pki
) -> None:
    with _tls_channel(tls_tokens.served.grpc, pki.other_ca.cert) as channel:
        assert _decide(channel, tls_tokens.decide_token) == grpc.StatusCode.UNAVAILABLE


def test_admin_keys_and_report_binding_hold_over_the_wire(tls_tokens: Secured, pki: Pki) -> None:
    """The gateway's token can decide and report, but not set an admin key, nor settle
    another user's reservation; the admin's token sets the key."""
    gateway = _bearer(tls_tokens.decide_token)
    with _tls_channel(tls_tokens.served.grpc, pki.ca.cert) as channel:
        stub = pb_grpc.TollwayStub(channel)
        stub.UpsertEntity(pb.UpsertEntityRequest(kind="user", id="w1", metadata=_meta(tier="free")),
                          metadata=_bearer(tls_tokens.admin_token), timeout=10)
        d = stub.Decide(pb.DecideRequest(user=pb.Entity(id="w1", metadata=_meta(tier="pro")),
                                         model="m"), metadata=gateway, timeout=10)
        assert list(d.ignored_metadata) == ["user.tier"]
        assert "per_user" in [q.name for q in d.quotas]  # still free: limited
        with pytest.raises(grpc.RpcError) as err:
            stub.Report(pb.UsageReport(request_id="x", decision_id=d.decision_id,
                                       user=pb.Entity(id="w2"), model="m"),
                        metadata=gateway, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ack = stub.Report(pb.UsageReport(request_id="x", decision_id=d.decision_id,
                                         user=pb.Entity(id="w1"), model="m"),
                          metadata=gateway, timeout=10)
        assert ack.outcome == "settled"


def _meta(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def test_the_http_port_speaks_tls_and_checks_tokens(tls_tokens: Secured, pki: Pki) -> None:
    http = tls_tokens.served.http
    status, body = _https(http, "/v1/usage/users", pki.ca.cert, token=tls_tokens.admin_token)
    assert status == 200 and "results" in json.loads(body)
    status, body = _https(http, "/v1/usage/users", pki.ca.cert, token=tls_tokens.decide_token)
    assert status == 403 and json.loads(body)["error"]["code"] == "permission_denied"
    status, _ = _https(http, "/v1/usage/users", pki.ca.cert)
    assert status == 401
    assert _https(http, "/healthz", pki.ca.cert)[0] == 200  # probes stay open
    with pytest.raises(urllib.error.URLError):  # a client that does not trust it
        _https(http, "/healthz", pki.other_ca.cert)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to a TLS port
        urllib.request.urlopen(f"http://{http}/healthz", timeout=10)


def test_the_start_line_says_tls_and_auth_are_on(tls_tokens: Secured) -> None:
    line = tls_tokens.served.wait_for_line("tollway serving:")
    assert "tls=on" in line and "auth=on" in line


def test_tokens_are_never_logged(tls_tokens: Secured, pki: Pki) -> None:
    """Not the good ones, not the bad ones, not at debug level."""
    bad = new_token()
    with _tls_channel(tls_tokens.served.grpc, pki.ca.cert) as channel:
        _decide(channel, tls_tokens.admin_token)  # refused: logged with its name only
        _decide(channel, bad)
        _decide(channel, tls_tokens.decide_token)
    tls_tokens.served.wait_for_line("ops may not call /tollway.v1.Tollway/Decide")
    log = tls_tokens.served.log()
    for token in (tls_tokens.decide_token, tls_tokens.admin_token, bad):
        assert token not in log and token[3:20] not in log


# ----------------------------------------------------------------------- mTLS


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Secured]:
    """mTLS: the client certificate's CN is an admin; a decide token as well."""
    d = tmp_path_factory.mktemp("mtls")
    decide = new_token()
    auth = d / "tokens.toml"
    auth.write_text(
        token_block("gateway", ["decide"], decide)
        + '[[token]]\nname = "billing"\ncn = "billing.internal"\nroles = ["admin"]\n'
    )
    with tollway_serve(
        write_rules(d), "--auth", str(auth), "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca.cert),
    ) as served:
        yield Secured(served, decide, "", d)


def test_mtls_refuses_a_client_without_a_certificate(mtls: Secured, pki: Pki) -> None:
    with _tls_channel(mtls.served.grpc, pki.ca.cert) as channel:
        assert _decide(channel, mtls.decide_token) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(mtls: Secured, pki: Pki) -> None:
    """Same CN as the admin entry, wrong issuer: the handshake fails."""
    with _tls_channel(mtls.served.grpc, pki.ca.cert, pki.stranger) as channel:
        assert _decide(channel, mtls.decide_token) == grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_a_certificate_by_its_cn_and_a_token_by_its_roles(
    mtls: Secured, pki: Pki
) -> None:
    with _tls_channel(mtls.served.grpc, pki.ca.cert, pki.client) as channel:
        stub = pb_grpc.TollwayStub(channel)
        # the certificate alone: CN billing.internal is an admin, not a gateway
        info = stub.UpsertEntity(pb.UpsertEntityRequest(kind="user", id="u1"), timeout=10)
        assert info.id == "u1"
        assert _decide(channel) == grpc.StatusCode.PERMISSION_DENIED
        # a token, when sent, is who the caller is
        d = _decide(channel, mtls.decide_token)
        assert isinstance(d, pb.Decision) and d.allowed
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEntity(pb.GetEntityRequest(kind="user", id="u1"),
                           metadata=_bearer(mtls.decide_token), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "tls=mtls" in mtls.served.wait_for_line("tollway serving:")


def test_mtls_on_the_http_port(mtls: Secured, pki: Pki) -> None:
    http = mtls.served.http
    for stranger in (None, pki.stranger):  # no certificate, or one from another CA
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            _https(http, "/healthz", pki.ca.cert, client=stranger)
    # the certificate's CN is an admin: usage yes, metrics no
    assert _https(http, "/v1/usage/users", pki.ca.cert, client=pki.client)[0] == 200
    assert _https(http, "/metrics", pki.ca.cert, client=pki.client)[0] == 403
    # a token, when sent, is who the caller is
    status, _ = _https(http, "/v1/usage/users", pki.ca.cert, client=pki.client,
                       token=mtls.decide_token)
    assert status == 403


# --------------------------------------------------- reloading tokens and certificates


def test_sighup_rereads_the_token_file_and_a_broken_one_keeps_the_old(
    tmp_path: Path, pki: Pki
) -> None:
    old, new = new_token(), new_token()
    auth = tmp_path / "tokens.toml"
    auth.write_text(token_block("old", ["decide"], old))
    with (
        tollway_serve(write_rules(tmp_path), "--auth", str(auth), "--http", "off") as served,
        grpc.insecure_channel(served.grpc) as channel,
    ):
        assert isinstance(_decide(channel, old), pb.Decision)
        auth.write_text(token_block("new", ["decide"], new))
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("tokens reloaded (SIGHUP)")
        assert _decide(channel, old) == grpc.StatusCode.UNAUTHENTICATED
        assert isinstance(_decide(channel, new), pb.Decision)
        auth.write_text('[[token]]\nname = "x"\nroles = ["decide"]\n')  # no sha256, no cn
        served.proc.send_signal(signal.SIGHUP)
        line = served.wait_for_line("reload of tokens (SIGHUP) failed")
        assert "exactly one of sha256" in line
        assert isinstance(_decide(channel, new), pb.Decision)


def _install(issued: Issued, directory: Path) -> None:
    """Put a certificate and key where the server reads them (as a secret mount would)."""
    shutil.copyfile(issued.cert, directory / "server.pem")
    shutil.copyfile(issued.key, directory / "server.key")


def test_certificates_rotate_on_sighup_and_on_the_watch(tmp_path: Path, pki: Pki) -> None:
    from pki import Authority

    certs = tmp_path / "certs"
    certs.mkdir()
    _install(pki.server, certs)
    rotated_ca = Authority(tmp_path, "rotated-ca")
    rotated = rotated_ca.issue("tollway.test", server=True, file_name="rotated")
    with tollway_serve(
        write_rules(tmp_path), "--tls-cert", str(certs / "server.pem"),
        "--tls-key", str(certs / "server.key"), "--reload-interval", "0.1",
    ) as served:
        with _tls_channel(served.grpc, pki.ca.cert) as channel:
            assert isinstance(_decide(channel), pb.Decision)
        # a half-written pair (new certificate, old key) is refused and the old pair stays
        shutil.copyfile(rotated.cert, certs / "server.pem")
        served.wait_for_line("reload of certificates (certificates changed) failed")
        with _tls_channel(served.grpc, pki.ca.cert) as channel:
            assert isinstance(_decide(channel), pb.Decision)
        # the whole pair: new connections get the new certificate
        shutil.copyfile(rotated.key, certs / "server.key")
        served.wait_for_line("certificates reloaded (certificates changed)")
        with _tls_channel(served.grpc, rotated_ca.cert) as channel:
            assert isinstance(_decide(channel), pb.Decision)
        with _tls_channel(served.grpc, pki.ca.cert) as channel:
            assert _decide(channel) == grpc.StatusCode.UNAVAILABLE
        assert _https(served.http, "/healthz", rotated_ca.cert)[0] == 200
        with pytest.raises(urllib.error.URLError):
            _https(served.http, "/healthz", pki.ca.cert)
        # and back, by SIGHUP
        _install(pki.server, certs)
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("certificates reloaded (SIGHUP)")
        with _tls_channel(served.grpc, pki.ca.cert) as channel:
            assert isinstance(_decide(channel), pb.Decision)
        assert _https(served.http, "/healthz", pki.ca.cert)[0] == 200


# -------------------------------------------------------------- safe defaults


def _serve_exit(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway", "serve", "--rules", str(write_rules(tmp_path)), *flags],
        capture_output=True, text=True, timeout=60,
    )


def test_a_non_loopback_address_without_auth_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _serve_exit(tmp_path, "--listen", "0.0.0.0:0", "--http", "off")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tollway serve: refusing to listen on 0.0.0.0:0 (--listen) "
                               "without --auth")
    assert "--insecure" in lines[0]


def test_insecure_and_auth_without_tls_start_with_a_warning(tmp_path: Path) -> None:
    with tollway_serve(write_rules(tmp_path), "--http", "off", "--insecure",
                       listen="0.0.0.0:0") as served:
        assert "without authentication" in served.wait_for_line("WARNING")
    auth = tmp_path / "tokens.toml"
    auth.write_text(token_block("gw", ["decide"], new_token()))
    with tollway_serve(write_rules(tmp_path), "--http", "off", "--auth", str(auth),
                       listen="0.0.0.0:0") as served:
        assert "without TLS" in served.wait_for_line("WARNING")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-cert", "x.pem"), "--tls-cert and --tls-key go together"),
        (("--tls-client-ca", "ca.pem"), "--tls-client-ca needs --tls-cert"),
        (("--auth", "/nonexistent/tokens.toml"), "/nonexistent/tokens.toml: cannot read"),
        (("--http", "0.0.0.0:0"), "refusing to listen on 0.0.0.0:0 (--http)"),
    ],
)
def test_unusable_security_flags_stop_the_server(flags: tuple[str, ...], message: str) -> None:
    from tollway.server.cli import parse_args
    from tollway.server.startup import Refused, check_exposure, prepare

    args = parse_args(["serve", "--listen", "127.0.0.1:0", *flags], {})
    with pytest.raises(Refused) as err:
        check_exposure(args, prepare(args))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_key_that_does_not_match_its_certificate_stops_the_server(
    tmp_path: Path, pki: Pki
) -> None:
    result = _serve_exit(
        tmp_path, "--listen", "127.0.0.1:0", "--http", "off",
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.client.key),
    )
    assert result.returncode == 1 and "cannot be used together" in result.stderr


def test_cn_entries_need_client_certificates(tmp_path: Path, pki: Pki) -> None:
    auth = tmp_path / "tokens.toml"
    auth.write_text('[[token]]\nname = "b"\ncn = "billing.internal"\nroles = ["admin"]\n')
    result = _serve_exit(
        tmp_path, "--listen", "127.0.0.1:0", "--http", "off", "--auth", str(auth),
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
    )
    assert result.returncode == 1 and "needs client certificates" in result.stderr
