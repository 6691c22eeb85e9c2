"""Tokens and roles: the ``--auth`` file, and the one check every transport asks.

The file is TOML (docs/security.md)::

    [[token]]
    name = "gateway-eu"
    sha256 = "<hex sha256 of the token>"
    roles = ["decide"]

    [[token]]
    name = "billing-job"
    cn = "billing.internal"        # under mTLS: a client certificate's subject CN
    roles = ["admin"]

Only hashes are kept: a presented token is hashed and compared, in constant time, with
every hash of the table (no early exit, so the time taken says nothing about which hash
came close). Tokens are never logged; a principal is named by its ``name``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .roles import OPEN, ROLES, Access, Role

__all__ = [
    "AuthFileError", "Principal", "TokenTable", "Verdict", "Refusal", "Authenticator",
    "bearer_token", "token_sha256", "new_token", "token_block", "parse_token_file",
    "load_token_file",
]

log = logging.getLogger("tollway.server.auth")

Verdict = Literal["ok", "unauthenticated", "permission_denied"]

_TOKEN_KEYS = frozenset({"name", "sha256", "cn", "roles"})
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_NAME = 128
# "tw_" marks a tollway token for secret scanners; 32 random bytes, URL-safe base64
TOKEN_PREFIX = "tw_"
TOKEN_BYTES = 32


class AuthFileError(ValueError):
    """The ``--auth`` file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a credential belongs to: the ``name`` of its entry, and its roles."""

    name: str
    roles: frozenset[Role]


@dataclass(frozen=True, slots=True)
class TokenTable:
    """The entries of one ``--auth`` file, ready for checks."""

    hashed: tuple[tuple[bytes, Principal], ...] = ()
    by_cn: Mapping[str, Principal] = field(default_factory=dict)

    def for_token(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for expected, principal in self.hashed:  # every entry, whatever matched before
            if hmac.compare_digest(expected, digest):
                found = principal
        return found

    def for_cn(self, cn: str) -> Principal | None:
        return self.by_cn.get(cn)


def token_sha256(token: str) -> str:
    """The hex digest the ``--auth`` file keeps for ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_block(name: str, roles: Iterable[str], token: str) -> str:
    """The ``[[token]]`` block that grants ``roles`` to ``token`` (only its hash is written)."""
    role_list = ", ".join(f'"{r}"' for r in roles)
    return (
        "[[token]]\n"
        f"name = {_toml_string(name)}\n"
        f'sha256 = "{token_sha256(token)}"\n'
        f"roles = [{role_list}]\n"
    )


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value; None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


# ------------------------------------------------------------------ the file


def _need_name(entry: Mapping[str, Any], where: str) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AuthFileError(f"{where}: name: must be a non-empty string")
    if len(name) > _MAX_NAME or not name.isprintable():
        raise AuthFileError(f"{where}: name: must be printable and at most {_MAX_NAME} characters")
    return name


def _need_roles(entry: Mapping[str, Any], where: str) -> frozenset[Role]:
    roles = entry.get("roles")
    if not isinstance(roles, list) or not roles:
        raise AuthFileError(f"{where}: roles: must be a non-empty list of {', '.join(ROLES)}")
    out: set[Role] = set()
    for role in roles:
        if role not in ROLES:
            raise AuthFileError(
                f"{where}: roles: unknown role {role!r}; expected {', '.join(ROLES)}"
            )
        out.add(role)
    return frozenset(out)


def parse_token_file(text: str, source: str = "<auth>") -> TokenTable:
    """Parse and check the TOML text of an ``--auth`` file; raises ``AuthFileError``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AuthFileError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise AuthFileError(f"{source}: unknown key {unknown[0]!r}; expected [[token]] entries")
    entries = data.get("token", [])
    if not isinstance(entries, list) or not entries:
        raise AuthFileError(f"{source}: no [[token]] entries: every call would be refused")
    hashed: list[tuple[bytes, Principal]] = []
    by_cn: dict[str, Principal] = {}
    names: set[str] = set()
    digests: set[bytes] = set()
    for i, entry in enumerate(entries, 1):
        where = f"{source}: token {i}"
        if not isinstance(entry, dict):
            raise AuthFileError(f"{where}: must be a table ([[token]])")
        extra = sorted(set(entry) - _TOKEN_KEYS)
        if extra:
            raise AuthFileError(
                f"{where}: unknown key {extra[0]!r}; expected name, sha256 or cn, roles"
            )
        name = _need_name(entry, where)
        where = f"{source}: token {i} ({name})"
        if name in names:
            raise AuthFileError(f"{where}: name: used by an earlier token")
        names.add(name)
        principal = Principal(name, _need_roles(entry, where))
        sha, cn = entry.get("sha256"), entry.get("cn")
        if (sha is None) == (cn is None):
            raise AuthFileError(f"{where}: give exactly one of sha256 (a token) or cn (mTLS)")
        if sha is not None:
            if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
                raise AuthFileError(
                    f"{where}: sha256: must be 64 hex digits (`tollway token new` prints it)"
                )
            digest = bytes.fromhex(sha)
            if digest in digests:
                raise AuthFileError(f"{where}: sha256: the same token is listed twice")
            digests.add(digest)
            hashed.append((digest, principal))
        else:
            if not isinstance(cn, str) or not cn.strip():
                raise AuthFileError(f"{where}: cn: must be a non-empty string")
            if cn in by_cn:
                raise AuthFileError(f"{where}: cn: {cn!r} is listed twice")
            by_cn[cn] = principal
    return TokenTable(tuple(hashed), by_cn)


def load_token_file(path: str | Path) -> TokenTable:
    """Read and parse an ``--auth`` file; raises ``AuthFileError`` (unreadable files too)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"{path}: cannot read: {exc}") from None
    return parse_token_file(text, str(path))


# ------------------------------------------------------------------ the check


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused: ``unauthenticated`` (no or unknown credentials: 401 and
    UNAUTHENTICATED) or ``permission_denied`` (403 and PERMISSION_DENIED)."""

    verdict: Literal["unauthenticated", "permission_denied"]
    message: str


class Authenticator:
    """The token table in force, and the check both transports ask.

    ``client_certificates``: the servers verify client certificates (``--tls-client-ca``),
    which ``cn`` entries need; without it a file with ``cn`` entries is refused.
    """

    def __init__(self, path: str | Path, *, client_certificates: bool = False) -> None:
        self.path = Path(path)
        self._client_certificates = client_certificates
        self._table = self._load()

    def _load(self) -> TokenTable:
        table = load_token_file(self.path)
        if table.by_cn and not self._client_certificates:
            name = next(iter(table.by_cn.values())).name
            raise AuthFileError(
                f"{self.path}: token {name!r} uses cn, which needs client certificates "
                "(--tls-client-ca)"
            )
        return table

    @property
    def table(self) -> TokenTable:
        return self._table

    @property
    def uses_certificates(self) -> bool:
        """Whether some entry is a certificate CN (the gRPC check then reads the peer)."""
        return bool(self._table.by_cn)

    def reload(self) -> TokenTable:
        """Re-read the file; on ``AuthFileError`` the tokens in force stay."""
        self._table = self._load()
        return self._table

    def principal(self, authorization: str | None, cn: str | None = None) -> Principal | None:
        """Who presents these credentials: a bearer token first, else a certificate CN."""
        table = self._table
        if authorization:
            token = bearer_token(authorization)
            return None if token is None else table.for_token(token)
        if cn:
            return table.for_cn(cn)
        return None

    def check(
        self, authorization: str | None, need: Role, cn: str | None = None
    ) -> tuple[Verdict, Principal | None]:
        """``ok``, ``unauthenticated`` (no or unknown credentials) or ``permission_denied``."""
        principal = self.principal(authorization, cn)
        if principal is None:
            return "unauthenticated", None
        if need not in principal.roles:
            return "permission_denied", principal
        return "ok", principal

    def admit(
        self,
        access: Access | None,
        target: str,
        authorization: str | None,
        cn: str | None = None,
        *,
        hint: str = "send a bearer token",
    ) -> Refusal | None:
        """None when the caller may call ``target`` (an RPC or a route) whose declared
        access is ``access``; else why not. Undeclared targets (``access`` None) are
        refused to everyone. Refusals of known callers are logged by name, never by token.
        """
        if access == OPEN:
            return None
        verdict, principal = self.check(authorization, access or "admin", cn)
        if verdict == "ok":
            if access is not None:
                return None
            message = f"{target} has no declared role, so no one may call it"
            log.warning("refused %s: %s", target, message)
            return Refusal("permission_denied", message)
        if verdict == "unauthenticated":
            log.debug("refused %s: no or unknown credentials", target)
            return Refusal("unauthenticated", f"missing or unknown credentials: {hint}")
        assert principal is not None
        message = f"{principal.name} may not call {target}: it needs the {access} role"
        log.warning("refused %s to %s: %s", target, principal.name, message)
        return Refusal("permission_denied", message)
