"""Safe defaults: who can reach the ports decides what ``serve`` demands before it listens.

A sidecar on loopback or a Unix socket is reachable only from its own host (or pod);
anything else is a shared deployment, which needs ``--auth`` (or an explicit
``--insecure``), and should carry the tokens over TLS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Exposure", "is_loopback", "assess"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` (or ``unix:PATH``) can be reached from this host only.

    Names other than ``localhost`` count as reachable from elsewhere: what they resolve
    to can change, and an empty host or ``0.0.0.0``/``[::]`` listens everywhere.
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0] if ":" in address else address
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Exposure:
    """What ``serve`` must say before it listens: a refusal (one line), or warnings."""

    refusal: str | None
    warnings: tuple[str, ...] = ()


def assess(
    addresses: dict[str, str], *, auth: bool, tls: bool, insecure: bool
) -> Exposure:
    """``addresses`` maps a flag (``--listen``, ``--http``) to the address it asks for."""
    exposed = [(flag, a) for flag, a in addresses.items() if a and not is_loopback(a)]
    if not exposed:
        return Exposure(None)
    flag, address = exposed[0]
    if not auth and not insecure:
        return Exposure(
            f"refusing to listen on {address} ({flag}) without --auth: anyone who can reach "
            "it could decide, report and read usage; give --auth FILE (docs/security.md), "
            "listen on loopback or a Unix socket, or pass --insecure"
        )
    warnings: list[str] = []
    if not auth:
        warnings.append(
            f"--insecure: serving on {address} ({flag}) without authentication; anyone who "
            "can reach it can decide, report and read usage"
        )
    elif not tls:
        warnings.append(
            f"serving on {address} ({flag}) with --auth but without TLS: tokens cross the "
            "network in clear text; give --tls-cert and --tls-key"
        )
    return Exposure(None, tuple(warnings))
