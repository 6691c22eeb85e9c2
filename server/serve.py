"""``tollway serve``: one engine behind gRPC and HTTP, reloading its rules, until SIGTERM.

Start-up failures (a rule file that does not compile, an address in use) exit 1 with the
reason on stderr. SIGTERM or SIGINT: readiness and gRPC health turn NOT_SERVING, in-flight
calls drain for up to ``--grace`` seconds, then the process exits 0. SIGHUP reloads the rules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tollway.dsl.diagnostics import RulesError
from tollway.policy.engine import Engine
from tollway.policy.usage import UsageUnavailable
from tollway.policy.usage_db import SchemaTooNew
from tollway.policy.usage_db.database import redact_url
from tollway.policy.usage_query import METRICS, SpikeQuery

from .app import start_grpc
from .http import HttpServer, Readiness, build_router, start_http
from .metrics import Metrics
from .reload import Reloader, fingerprint

__all__ = ["run"]

log = logging.getLogger("tollway.server")


SPIKES_EVERY = 60.0
_SPIKE_COUNT_LIMIT = 1_000_000


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
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    metrics = Metrics()
    seen = fingerprint(args.rules)  # before loading: a change during start-up is not missed
    try:
        engine = Engine.from_path(
            args.rules,
            store=args.store,
            key_prefix=args.key_prefix,
            observer=metrics,
            usage_db=None if args.usage_db == "off" else args.usage_db,
            usage_retention_days=args.usage_retention,
            usage_max_models=args.usage_max_models,
        )
    except RulesError as exc:
        for d in exc.errors:
            print(d.render(), file=sys.stderr)
        print(
            f"tollway serve: {len(exc.errors)} error(s) in {args.rules}; not starting",
            file=sys.stderr,
        )
        return 1
    except (ValueError, OSError, SchemaTooNew) as exc:
        print(f"tollway serve: {exc}", file=sys.stderr)
        return 1
    for w in engine.ruleset.warnings:
        log.warning("%s", w.render())
    metrics.ruleset_loaded(engine.ruleset)

    readiness = Readiness(engine)
    http: HttpServer | None = None
    try:
        grpc_server = await start_grpc(engine, args.listen)
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
    spikes = asyncio.create_task(_watch_spikes(engine, metrics))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)

    ruleset = engine.ruleset
    log.info(
        "tollway serving: grpc=%s http=%s rules=%s version=%s rule_count=%d store=%s "
        "usage_db=%s",
        grpc_server.address, http.address if http else "off", args.rules, ruleset.version,
        len(ruleset.rules), redact_url(args.store), redact_url(args.usage_db),
    )
    await stop.wait()

    log.info("shutting down: draining in-flight calls (grace %gs)", args.grace)
    readiness.drain()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    await grpc_server.stop(args.grace)
    await reloader.stop()
    spikes.cancel()
    if http is not None:
        http.stop()
    await asyncio.to_thread(engine.close, drain=max(1.0, args.grace / 2))
    log.info("stopped")
    return 0


async def _watch_spikes(engine: Engine, metrics: Metrics) -> None:
    """Every minute: how many users and groups spike on each metric (the endpoint's
    defaults), for ``tollway_usage_spiking``."""
    if engine.usage_db is None:
        return
    while True:
        try:
            for kind in ("users", "groups"):
                for metric in METRICS:
                    query = SpikeQuery(kind=kind, metric=metric, limit=_SPIKE_COUNT_LIMIT)
                    found = await asyncio.to_thread(engine.list_spikes, query)
                    metrics.spiking(kind, metric, len(found))
        except UsageUnavailable as exc:
            log.debug("spike gauge not refreshed: %s", exc)
        await asyncio.sleep(SPIKES_EVERY)
