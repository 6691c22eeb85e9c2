"""The pieces of access control that need no server: the token file, bearer values,
the check, ``tollway token new``, and which addresses count as exposed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.server.auth import (
    Authenticator,
    AuthFileError,
    bearer_token,
    new_token,
    parse_token_file,
    token_block,
    token_sha256,
)
from tollway.server.cli import main
from tollway.server.exposure import assess, is_loopback

SHA = "a" * 64


def _entry(**fields: object) -> str:
    lines = ["[[token]]"]
    for key, value in fields.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the file


def test_a_file_of_tokens_and_certificate_names() -> None:
    token = new_token()
    table = parse_token_file(
        token_block("gw", ["decide"], token)
        + _entry(name="billing", cn="billing.internal", roles=["admin", "metrics"])
    )
    principal = table.for_token(token)
    assert principal is not None and principal.name == "gw" and principal.roles == {"decide"}
    assert table.for_token(token + "x") is None and table.for_token("") is None
    billing = table.for_cn("billing.internal")
    assert billing is not None and billing.roles == {"admin", "metrics"}
    assert table.for_cn("BILLING.internal") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [[token]] entries"),
        ("[[token]\n", "not valid TOML"),
        ("tokens = 1\n", "unknown key 'tokens'"),
        ("token = 3\n", "no [[token]] entries"),
        (_entry(sha256=SHA, roles=["decide"]), "token 1: name: must be a non-empty string"),
        (_entry(name="a", roles=["decide"]), "give exactly one of sha256"),
        (_entry(name="a", sha256=SHA, cn="x", roles=["decide"]), "give exactly one of sha256"),
        (_entry(name="a", sha256="abc", roles=["decide"]), "sha256: must be 64 hex digits"),
        (_entry(name="a", sha256=SHA, roles=[]), "roles: must be a non-empty list"),
        (_entry(name="a", sha256=SHA, roles="decide"), "roles: must be a non-empty list"),
        (_entry(name="a", sha256=SHA, roles=["root"]), "unknown role 'root'"),
        (_entry(name="a", sha256=SHA, roles=["decide"], role="x"), "unknown key 'role'"),
        (_entry(name="a", sha256=SHA, roles=["decide"]) + _entry(name="a", cn="c", roles=["admin"]),
         "token 2 (a): name: used by an earlier token"),
        (_entry(name="a", sha256=SHA, roles=["decide"]) + _entry(name="b", sha256=SHA.upper(),
         roles=["admin"]), "the same token is listed twice"),
        (_entry(name="a", cn="c", roles=["decide"]) + _entry(name="b", cn="c", roles=["admin"]),
         "'c' is listed twice"),
    ],
)
def test_a_bad_file_names_the_entry_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(AuthFileError, match=None) as err:
        parse_token_file(text, "tokens.toml")
    assert str(err.value).startswith("tokens.toml") and message in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_a_table_or_an_auth_file_error(text: str) -> None:
    with contextlib.suppress(AuthFileError):
        parse_token_file(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(
    st.sampled_from(["name", "sha256", "cn", "roles", "x"]),
    st.one_of(st.text(max_size=70), st.integers(), st.lists(st.text(max_size=8), max_size=3),
              st.just(SHA), st.just(["decide"])),
    max_size=5,
), max_size=4))
def test_any_structure_is_a_table_or_an_auth_file_error(entries: list[dict[str, object]]) -> None:
    text = "".join(_entry(**e) for e in entries)
    with contextlib.suppress(AuthFileError):
        parse_token_file(text)


# ------------------------------------------------------------------ bearer


@pytest.mark.parametrize(
    ("value", "token"),
    [("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"), ("Basic abc", None),
     ("Bearer", None), ("Bearer ", None), ("abc", None), ("Bearer a b", None), ("", None),
     (None, None)],
)
def test_bearer_values(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


@given(st.text(max_size=100))
def test_any_authorization_value_is_a_token_or_none(value: str) -> None:
    token = bearer_token(value)
    assert token is None or (token and " " not in token and token in value)


# ------------------------------------------------------------------ the check


def test_the_check_says_unauthenticated_or_permission_denied(tmp_path: Path) -> None:
    gw, ops = new_token(), new_token()
    path = tmp_path / "tokens.toml"
    path.write_text(token_block("gw", ["decide"], gw) + token_block("ops", ["admin"], ops)
                    + _entry(name="cert", cn="svc", roles=["metrics"]))
    auth = Authenticator(path, client_certificates=True)
    assert auth.check(f"Bearer {gw}", "decide")[0] == "ok"
    assert auth.check(f"Bearer {gw}", "admin")[0] == "permission_denied"
    assert auth.check(f"Bearer {ops}", "admin")[0] == "ok"
    assert auth.check("Bearer nope", "decide") == ("unauthenticated", None)
    assert auth.check(None, "decide") == ("unauthenticated", None)
    assert auth.check("Basic xyz", "decide") == ("unauthenticated", None)
    assert auth.check(None, "metrics", cn="svc")[0] == "ok"
    assert auth.check(None, "decide", cn="svc")[0] == "permission_denied"
    # a token, when sent, decides: a bad one is not rescued by the certificate
    assert auth.check("Bearer nope", "metrics", cn="svc")[0] == "unauthenticated"
    path.write_text(token_block("ops", ["admin"], ops))
    auth.reload()
    assert auth.check(f"Bearer {gw}", "decide")[0] == "unauthenticated"
    path.write_text("garbage = [")
    with pytest.raises(AuthFileError):
        auth.reload()
    assert auth.check(f"Bearer {ops}", "admin")[0] == "ok"  # the old table stays


def test_certificate_names_need_client_certificates(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(_entry(name="cert", cn="svc", roles=["admin"]))
    with pytest.raises(AuthFileError, match="needs client certificates"):
        Authenticator(path)


# ------------------------------------------------------------- token new


def test_token_new_prints_the_block_to_stdout_and_the_token_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "new", "--name", "gateway eu", "--roles", "decide,metrics"]) == 0
    out, err = capsys.readouterr()
    entry = tomllib.loads(out)["token"][0]
    token = err.strip().splitlines()[-1]
    assert entry == {"name": "gateway eu", "sha256": token_sha256(token),
                     "roles": ["decide", "metrics"]}
    assert token not in out and token.startswith("tw_") and len(token) >= 40
    assert hashlib.sha256(token.encode()).hexdigest() == entry["sha256"]
    table = parse_token_file(out)
    assert table.for_token(token) is not None


def test_token_new_json_and_bad_roles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new", "--name", "x", "--roles", "admin", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["roles"] == ["admin"] and token_sha256(data["token"]) == data["sha256"]
    assert parse_token_file(data["toml"]).for_token(data["token"]) is not None
    assert main(["token", "new", "--name", "x", "--roles", "decide,root"]) == 2
    assert "unknown role 'root'" in capsys.readouterr().err
    assert new_token() != new_token()


# ------------------------------------------------------------- exposure


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1:50051", True), ("127.8.9.1:1", True), ("[::1]:9464", True),
     ("localhost:1", True), ("unix:/run/t.sock", True), ("0.0.0.0:1", False),
     ("[::]:1", False), (":50051", False), ("10.0.0.5:1", False), ("gateway:1", False),
     ("[::ffff:127.0.0.1]:1", False)],
)
def test_which_addresses_are_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_what_serve_demands_of_each_exposure() -> None:
    local = {"--listen": "127.0.0.1:1", "--http": "unix:/x"}
    assert assess(local, auth=False, tls=False, insecure=False).refusal is None
    wide = {"--listen": "127.0.0.1:1", "--http": "0.0.0.0:9464"}
    refused = assess(wide, auth=False, tls=False, insecure=False).refusal
    assert refused is not None and "0.0.0.0:9464 (--http)" in refused and "\n" not in refused
    insecure = assess(wide, auth=False, tls=False, insecure=True)
    assert insecure.refusal is None and "without authentication" in insecure.warnings[0]
    clear = assess(wide, auth=True, tls=False, insecure=False)
    assert clear.refusal is None and "without TLS" in clear.warnings[0]
    assert assess(wide, auth=True, tls=True, insecure=False) == assess(local, auth=False,
                                                                       tls=False, insecure=False)
