"""``tollway serve``: one engine behind gRPC and HTTP, reloading its rules, until SIGTERM.

Without ``--rules`` it serves the built-in example ruleset (``example.rules`` beside this
module, the same text as examples/gateway.rules) and says so. Start-up failures (a rule
file that does not compile, an address in use, a token file or certificate that cannot
be used) exit 1 with the reason on stderr, as one ``tollway serve: …`` line (or one JSON
log record each with ``--log-format json``); a non-loopback address without ``--auth``
or ``--insecure`` exits 2 (docs/security.md). SIGTERM or SIGINT: readiness and gRPC
health turn NOT_SERVING, in-flight calls drain for up to ``--grace`` seconds, then the
process exits 0. SIGHUP reloads the rules, the token file and the certificates.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tollway.dsl.diagnostics import RulesError
from tollway.policy.engine import Engine
from tollway.policy.observer import Fanout, Observer
from tollway.policy.stores import StoreOptions
from tollway.policy.usage import Retention

from .app import start_grpc
from .auth import Authenticator, AuthFileError
from .decision_log import DecisionLog, open_sink
from .exposure import assess
from .grpc_auth import AuthInterceptor
from .health_watch import HealthWatch
from .http import HttpServer, build_app, start_http
from .http_limits import HttpLimits
from .http_ops import Readiness, consequence
from .identity import parse_attribute_headers
from .logs import configure
from .metrics import Metrics
from .reload import Reloader, Watched, fingerprint
from .tls import ServerTls, TlsError, TlsFiles

__all__ = ["run", "builtin_rules"]

log = logging.getLogger("tollway.server")


def _redact(store: str) -> str:
    """The store URL without its password, for logs."""
    parts = urlsplit(store)
    if parts.password is None:
        return store
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def builtin_rules() -> Path:
    """The example ruleset shipped with tollway, served when no ``--rules`` is given."""
    return Path(str(resources.files("tollway.server") / "example.rules"))


def _fail(args: argparse.Namespace, message: str, code: int = 1) -> int:
    """Report why the server cannot start: a plain line, or a JSON record."""
    if args.log_format == "json":
        log.error("%s", message)
    else:
        print(f"tollway serve: {message}", file=sys.stderr)
    return code


class _Refused(Exception):
    """``serve`` will not start; the message is the one line to print, ``code`` the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class _Security:
    """What ``run`` prepares before the event loop starts (and may refuse to start for)."""

    tls: ServerTls | None
    auth: Authenticator | None
    store_password: str | None = None
    attribute_headers: dict[str, str] = field(default_factory=dict)

    def watched(self) -> list[Watched]:
        """The files reloaded with the rules."""
        out = []
        if self.auth is not None:
            out.append(Watched("tokens", (self.auth.path,), self.auth.reload))
        if self.tls is not None:
            out.append(Watched("certificates", self.tls.files.paths, self.tls.reload))
        return out


def _security(args: argparse.Namespace) -> _Security:
    """TLS, tokens and the exposure check; raises ``_Refused``."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise _Refused("--tls-cert and --tls-key go together: give both or neither", 2)
    if args.tls_client_ca and not args.tls_cert:
        raise _Refused("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS first)", 2)
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
        raise _Refused(str(exc)) from None
    http = args.http if args.http and args.http.lower() != "off" else ""
    if http.startswith(":"):
        http = "127.0.0.1" + http  # the HTTP port binds an empty host to loopback
    exposure = assess(
        {"--listen": args.listen, "--http": http},
        auth=auth is not None, tls=tls is not None, insecure=args.insecure,
    )
    if exposure.refusal is not None:
        raise _Refused(exposure.refusal, 2)
    for warning in exposure.warnings:
        log.warning("%s", warning)
    return _Security(tls, auth)


def _store_password(args: argparse.Namespace) -> str | None:
    """The store's password: ``--store-password-file`` (read when the flags were parsed)
    or ``TOLLWAY_STORE_PASSWORD``, never both, and only for a Redis store."""
    if args.store_password_file is not None and args.store_password is not None:
        raise _Refused(
            "--store-password-file and TOLLWAY_STORE_PASSWORD both give a password; give one",
            2,
        )
    password: str | None = args.store_password_file or args.store_password
    if password is not None and args.store == "memory":
        raise _Refused("a store password is for a Redis store, and --store is memory", 2)
    return password


def run(args: argparse.Namespace) -> int:
    configure(args.log_level, args.log_format, sys.stderr)
    try:
        attribute_headers = parse_attribute_headers(f"{h}={a}" for h, a in args.attribute_header)
    except ValueError as exc:  # each flag was checked on parsing; this is one mapped twice
        return _fail(args, str(exc), 2)
    try:
        security = replace(
            _security(args), store_password=_store_password(args),
            attribute_headers=attribute_headers,
        )
    except _Refused as exc:
        return _fail(args, str(exc), exc.code)
    if not args.rules:
        args.rules = str(builtin_rules())
        log.info("no --rules given: serving the built-in example ruleset (%s)", args.rules)
    return asyncio.run(_serve(args, security))


def _decision_log(args: argparse.Namespace, metrics: Metrics) -> DecisionLog | None:
    if not args.decision_log:
        return None
    # repeated flags, each possibly a comma-separated list (as the variable is)
    keys = frozenset(
        k.strip() for item in args.decision_log_metadata for k in item.split(",") if k.strip()
    )
    try:
        sink = open_sink(
            args.decision_log, max_mb=args.decision_log_max_mb, keep=args.decision_log_keep
        )
    except OSError as exc:
        raise _Refused(f"--decision-log {args.decision_log}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _Refused(str(exc), 2) from None
    return DecisionLog(sink, metadata_keys=keys, on_dropped=metrics.decision_log_line_dropped)


async def _serve(args: argparse.Namespace, security: _Security) -> int:
    metrics = Metrics(max_label_values=args.max_label_values)
    try:
        decisions = _decision_log(args, metrics)
    except _Refused as exc:
        return _fail(args, str(exc), exc.code)
    if decisions is None:
        return await _serve_engine(args, security, metrics, metrics)
    decisions.start()
    try:
        return await _serve_engine(args, security, metrics, Fanout(metrics, decisions))
    finally:
        decisions.close()  # every line buffered so far is written


async def _serve_engine(
    args: argparse.Namespace, security: _Security, metrics: Metrics, observer: Observer
) -> int:
    seen = fingerprint(args.rules)  # before loading: a change during start-up is not missed
    try:
        engine = Engine.from_path(
            args.rules,
            store=args.store,
            key_prefix=args.key_prefix,
            observer=observer,
            retention=Retention(
                max_reports=args.activity_max_reports,
                max_age_seconds=args.activity_max_age,
            ),
            store_options=StoreOptions(
                timeout=args.store_timeout,
                max_reservations=args.max_reservations,
                max_report_ids=args.max_report_ids,
                password=security.store_password,
            ),
        )
    except RulesError as exc:
        for d in exc.errors:
            if args.log_format == "json":
                log.error("%s", d.render())
            else:
                print(d.render(), file=sys.stderr)
        return _fail(args, f"{len(exc.errors)} error(s) in {args.rules}; not starting")
    except (ValueError, OSError) as exc:
        return _fail(args, str(exc))
    for w in engine.ruleset.warnings:
        log.warning("%s", w.render())
    metrics.watch_stores(engine)
    metrics.ruleset_loaded(engine.ruleset)

    readiness = Readiness(engine)
    reloader = Reloader(
        engine, args.rules, metrics, interval=args.reload_interval, initial=seen,
        watched=security.watched(),
    )
    http: HttpServer | None = None
    try:
        interceptors = (
            (AuthInterceptor(security.auth, metrics.auth_failed),) if security.auth else ()
        )
        grpc_server = await start_grpc(
            engine, args.listen, attribute_headers=security.attribute_headers,
            tls=security.tls, interceptors=interceptors,
        )
    except OSError as exc:
        engine.close()
        return _fail(args, str(exc))
    try:
        if args.http and args.http.lower() != "off":
            limits = HttpLimits(idle_timeout=args.http_idle_timeout)
            app = build_app(
                engine, metrics, readiness, limits=limits, reloads=reloader.status,
                auth=security.auth,
            )
            ssl_context = security.tls.ssl_context() if security.tls else None
            http = await start_http(args.http, app, ssl_context=ssl_context)
    except (OSError, ValueError) as exc:
        await grpc_server.stop(0)
        engine.close()
        return _fail(args, f"cannot serve HTTP on {args.http}: {exc}")

    reloader.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)

    watch = HealthWatch(readiness, grpc_server.health, grpc_server.health_names)
    store_ok, store_reason = await watch.start()
    ruleset = engine.ruleset
    ready = {
        "grpc": grpc_server.address, "http": http.address if http else "off",
        "rules": args.rules, "version": ruleset.version, "rule_count": len(ruleset.rules),
        "store": _redact(args.store),
        "tls": ("mtls" if security.tls.mutual else "on") if security.tls else "off",
        "auth": "on" if security.auth else "off",
    }
    line = (
        "tollway serving: grpc=%(grpc)s http=%(http)s rules=%(rules)s version=%(version)s "
        "rule_count=%(rule_count)d store=%(store)s tls=%(tls)s auth=%(auth)s"
    )
    if store_ok:
        log.info(line, ready, extra=ready)
    else:  # serving anyway: the log says what decisions do until the store is back
        ready["not_ready"] = store_reason
        ready["meanwhile"] = consequence(store_reason)
        log.warning(line + " NOT READY: %(not_ready)s; %(meanwhile)s", ready, extra=ready)
    await stop.wait()

    log.info("shutting down: draining in-flight calls (grace %gs)", args.grace)
    await watch.stop()
    readiness.drain()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    await grpc_server.stop(args.grace)
    await reloader.stop()
    if http is not None:
        await http.stop()
    engine.close()
    log.info("stopped")
    return 0
