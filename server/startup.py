"""What ``tollway serve`` prepares before its event loop: TLS, tokens, exposure, secrets.

``prepare`` reads the certificates and the token file, takes the store password and the
attribute headers, and refuses (``Refused``: one line and an exit code) what cannot
work; each worker of ``--workers N`` prepares its own (certificates and tokens are
reloaded per process). ``check_exposure`` runs once, in the process that was started:
a non-loopback address without ``--auth`` is refused unless ``--insecure``
(docs/security.md). ``decision_log`` opens ``--decision-log``, one file per worker.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .auth import Authenticator, AuthFileError
from .decision_log import DecisionLog, open_sink
from .exposure import assess
from .identity import parse_attribute_headers
from .metrics import Metrics
from .reload import Watched
from .tls import ServerTls, TlsError, TlsFiles

__all__ = ["Refused", "Setup", "prepare", "check_exposure", "store_password", "decision_log"]

log = logging.getLogger("tollway.server")


class Refused(Exception):
    """``serve`` will not start; the message is the one line to print, ``code`` the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Setup:
    """What a server process starts with, besides its flags."""

    tls: ServerTls | None = None
    auth: Authenticator | None = None
    store_password: str | None = None
    attribute_headers: dict[str, str] = field(default_factory=dict)

    def watched(self) -> list[Watched]:
        """The files reloaded with the rules (SIGHUP and the watch)."""
        out = []
        if self.auth is not None:
            out.append(Watched("tokens", (self.auth.path,), self.auth.reload))
        if self.tls is not None:
            out.append(Watched("certificates", self.tls.files.paths, self.tls.reload))
        return out

    @property
    def shown(self) -> dict[str, str]:
        """The start line's ``tls=`` and ``auth=``."""
        tls = "off" if self.tls is None else "mtls" if self.tls.mutual else "on"
        return {"tls": tls, "auth": "on" if self.auth is not None else "off"}


def store_password(args: argparse.Namespace) -> str | None:
    """The store's password: ``--store-password-file`` (read when the flags were parsed)
    or ``TOLLWAY_STORE_PASSWORD``, never both, and only for a Redis store."""
    if args.store_password_file is not None and args.store_password is not None:
        raise Refused(
            "--store-password-file and TOLLWAY_STORE_PASSWORD both give a password; give one",
            2,
        )
    password: str | None = args.store_password_file or args.store_password
    if password is not None and args.store == "memory":
        raise Refused("a store password is for a Redis store, and --store is memory", 2)
    return password


def prepare(args: argparse.Namespace) -> Setup:
    """Certificates, tokens, the store password and attribute headers; raises ``Refused``."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise Refused("--tls-cert and --tls-key go together: give both or neither", 2)
    if args.tls_client_ca and not args.tls_cert:
        raise Refused("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS first)", 2)
    try:
        attribute_headers = parse_attribute_headers(f"{h}={a}" for h, a in args.attribute_header)
    except ValueError as exc:  # each flag was checked on parsing; this is one mapped twice
        raise Refused(str(exc), 2) from None
    try:
        tls = (
            ServerTls(TlsFiles(
                Path(args.tls_cert), Path(args.tls_key),
                Path(args.tls_client_ca) if args.tls_client_ca else None,
            ))
            if args.tls_cert
            else None
        )
        auth = (
            Authenticator(args.auth, client_certificates=tls is not None and tls.mutual)
            if args.auth
            else None
        )
    except (AuthFileError, TlsError) as exc:
        raise Refused(str(exc)) from None
    return Setup(tls, auth, store_password(args), attribute_headers)


def check_exposure(args: argparse.Namespace, setup: Setup) -> None:
    """Refuse a non-loopback address without ``--auth`` (or ``--insecure``); warn of
    tokens without TLS. Raises ``Refused``."""
    http = args.http if args.http and args.http.lower() != "off" else ""
    if http.startswith(":"):
        http = "127.0.0.1" + http  # the HTTP port binds an empty host to loopback
    exposure = assess(
        {"--listen": args.listen, "--http": http},
        auth=setup.auth is not None, tls=setup.tls is not None, insecure=args.insecure,
    )
    if exposure.refusal is not None:
        raise Refused(exposure.refusal, 2)
    for warning in exposure.warnings:
        log.warning("%s", warning)


def _worker_path(target: str, worker: int | None) -> str:
    """``decisions.jsonl`` -> ``decisions-w2.jsonl`` for worker 2: each worker rotates its own."""
    if worker is None or target == "-":
        return target
    path = Path(target)
    return str(path.with_name(f"{path.stem}-w{worker}{path.suffix}"))


def decision_log(
    args: argparse.Namespace, metrics: Metrics, worker: int | None = None
) -> DecisionLog | None:
    """The ``--decision-log`` observer (not started), or None; raises ``Refused``."""
    if not args.decision_log:
        return None
    # repeated flags, each possibly a comma-separated list (as the variable is)
    keys = frozenset(
        k.strip() for item in args.decision_log_metadata for k in item.split(",") if k.strip()
    )
    target = _worker_path(args.decision_log, worker)
    try:
        sink = open_sink(target, max_mb=args.decision_log_max_mb, keep=args.decision_log_keep)
    except OSError as exc:
        raise Refused(f"--decision-log {target}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise Refused(str(exc), 2) from None
    return DecisionLog(sink, metadata_keys=keys, on_dropped=metrics.decision_log_line_dropped)
