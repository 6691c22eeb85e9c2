"""``tollway serve``: one engine behind gRPC and HTTP, reloading its rules, until SIGTERM.

Start-up failures (a rule file that does not compile, an address in use) exit 1 with the
reason on stderr. SIGTERM or SIGINT: readiness and gRPC health turn NOT_SERVING, in-flight
calls drain for up to ``--grace`` seconds, then the process exits 0. SIGHUP reloads the rules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

from tollway.dsl.diagnostics import RulesError
from tollway.policy.engine import Engine
from tollway.policy.usage import Retention

from .app import start_grpc
from .http import HttpServer, Readiness, build_router, start_http
from .identity import parse_attribute_headers
from .metrics import Metrics
from .reload import Reloader, fingerprint

__all__ = ["run"]

log = logging.getLogger("tollway.server")


def _redact(store: str) -> str:
    """The store URL without its password, for logs."""
    parts = urlsplit(store)
    if parts.password is None:
        return store
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    if not args.rules:
        print("tollway serve: --rules PATH (or TOLLWAY_RULES) is required", file=sys.stderr)
        return 2
    specs = args.attribute_header
    if specs is None:
        specs = [s for s in os.environ.get("TOLLWAY_ATTRIBUTE_HEADER", "").split(",") if s.strip()]
    try:
        attribute_headers = parse_attribute_headers(specs)
    except ValueError as exc:
        print(f"tollway serve: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, attribute_headers))


async def _serve(args: argparse.Namespace, attribute_headers: dict[str, str]) -> int:
    metrics = Metrics()
    seen = fingerprint(args.rules)  # before loading: a change during start-up is not missed
    try:
        engine = Engine.from_path(
            args.rules,
            store=args.store,
            key_prefix=args.key_prefix,
            observer=metrics,
            retention=Retention(
                max_reports=args.activity_max_reports,
                max_age_seconds=args.activity_max_age * 86400.0,
            ),
        )
    except RulesError as exc:
        for d in exc.errors:
            print(d.render(), file=sys.stderr)
        print(
            f"tollway serve: {len(exc.errors)} error(s) in {args.rules}; not starting",
            file=sys.stderr,
        )
        return 1
    except (ValueError, OSError) as exc:
        print(f"tollway serve: {exc}", file=sys.stderr)
        return 1
    for w in engine.ruleset.warnings:
        log.warning("%s", w.render())
    metrics.ruleset_loaded(engine.ruleset)

    readiness = Readiness(engine)
    http: HttpServer | None = None
    try:
        grpc_server = await start_grpc(engine, args.listen, attribute_headers=attribute_headers)
    except OSError as exc:
        print(f"tollway serve: {exc}", file=sys.stderr)
        engine.close()
        return 1
    try:
        if args.http and args.http.lower() != "off":
            http = start_http(args.http, build_router(engine, metrics, readiness))
    except (OSError, ValueError) as exc:
        print(f"tollway serve: cannot serve HTTP on {args.http}: {exc}", file=sys.stderr)
        await grpc_server.stop(0)
        engine.close()
        return 1

    reloader = Reloader(
        engine, args.rules, metrics, interval=args.reload_interval, initial=seen
    )
    reloader.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)

    ruleset = engine.ruleset
    log.info(
        "tollway serving: grpc=%s http=%s rules=%s version=%s rule_count=%d store=%s",
        grpc_server.address, http.address if http else "off", args.rules, ruleset.version,
        len(ruleset.rules), _redact(args.store),
    )
    await stop.wait()

    log.info("shutting down: draining in-flight calls (grace %gs)", args.grace)
    readiness.drain()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    await grpc_server.stop(args.grace)
    await reloader.stop()
    if http is not None:
        http.stop()
    engine.close()
    log.info("stopped")
    return 0
