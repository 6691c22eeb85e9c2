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
import os
import signal
import sys
from collections.abc import Callable
from importlib import resources
from multiprocessing import parent_process
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tollway.dsl import load as load_rules
from tollway.dsl.diagnostics import RulesError
from tollway.policy.engine import Engine
from tollway.policy.observer import Fanout, Observer
from tollway.policy.stores import StoreOptions
from tollway.policy.usage import UsageUnavailable
from tollway.policy.usage_db import SchemaTooNew, UsageDatabase
from tollway.policy.usage_db.database import redact_url
from tollway.policy.usage_query import METRICS, SpikeQuery

from .app import start_grpc
from .grpc_auth import AuthInterceptor
from .health_watch import HealthWatch
from .http import HttpServer, build_app, start_http
from .http_limits import HttpLimits
from .http_ops import Readiness, consequence
from .logs import configure
from .metrics import Metrics
from .reload import Reloader, fingerprint
from .startup import Refused, Setup, check_exposure, decision_log, prepare
from .workers import check_workers, die_with_parent, supervise

__all__ = ["run", "builtin_rules"]

log = logging.getLogger("tollway.server")


SPIKES_EVERY = 60.0
_SPIKE_COUNT_LIMIT = 1_000_000


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


def run(args: argparse.Namespace) -> int:
    configure(args.log_level, args.log_format, sys.stderr)
    refused = check_workers(args.workers, args.store, args.listen, args.usage_db)
    if refused is not None:
        print(f"tollway serve: {refused}", file=sys.stderr)
        return 2
    try:
        setup = prepare(args)
        check_exposure(args, setup)
    except Refused as exc:
        return _fail(args, str(exc), exc.code)
    if not args.rules:
        args.rules = str(builtin_rules())
        log.info("no --rules given: serving the built-in example ruleset (%s)", args.rules)
    if args.workers > 1:
        return _supervise(args)
    return asyncio.run(_serve(args, setup, _announce))


_SERVING = (
    "tollway serving: grpc=%(grpc)s http=%(http)s rules=%(rules)s version=%(version)s "
    "rule_count=%(rule_count)d store=%(store)s usage_db=%(usage_db)s workers=%(workers)d "
    "tls=%(tls)s auth=%(auth)s"
)


def _announce(ready: dict[str, Any]) -> None:
    """The one line that says the server is up (tests and scripts wait for it)."""
    if "not_ready" in ready:
        ready = {**ready, "meanwhile": consequence(ready["not_ready"])}
        log.warning(_SERVING + " NOT READY: %(not_ready)s; %(meanwhile)s", ready, extra=ready)
    else:
        log.info(_SERVING, ready, extra=ready)


async def _refresh_stores(metrics: Metrics, every: float = 5.0) -> None:
    """Under ``--workers N`` another worker may answer the scrape: keep this worker's store
    sizes in the shared metrics fresh."""
    while True:
        await asyncio.sleep(every)
        metrics.refresh_stores()


def _rules_failed(args: argparse.Namespace, exc: RulesError) -> int:
    for d in exc.errors:
        if args.log_format == "json":
            log.error("%s", d.render())
        else:
            print(d.render(), file=sys.stderr)
    return _fail(args, f"{len(exc.errors)} error(s) in {args.rules}; not starting")


def _supervise(args: argparse.Namespace) -> int:
    """``--workers N``: reserve the ports and run N worker processes (``workers.py``)."""
    try:  # once here, so that broken rules are reported once, not by every worker
        load_rules(args.rules)
    except RulesError as exc:
        return _rules_failed(args, exc)
    if args.usage_db != "off":  # migrate once here, not in N workers at the same time
        database = UsageDatabase(args.usage_db)
        try:
            database.prepare()
        except SchemaTooNew as exc:
            return _fail(args, str(exc))
        except UsageUnavailable as exc:
            log.warning("%s; usage waits until it answers", exc)
        finally:
            database.close()
    try:
        return supervise(args, _worker, _announce)
    except OSError as exc:  # a port could not be reserved
        return _fail(args, str(exc))


def _worker(args: argparse.Namespace, index: int, ready: Connection) -> None:
    """One worker process of ``--workers N`` (started by ``spawn``): a whole server on the
    ports the supervisor reserved, that tells it over ``ready`` once it serves."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor alone, which passes it on
    die_with_parent()
    parent = parent_process()
    if parent is not None and os.getppid() != parent.pid:
        raise SystemExit(1)  # the supervisor died before the line above could notice
    configure(args.log_level, args.log_format, sys.stderr)
    try:  # the supervisor prepared the same once: this refuses only what changed since
        setup = prepare(args)
    except Refused as exc:
        raise SystemExit(_fail(args, str(exc), exc.code)) from None

    def report(serving: dict[str, Any]) -> None:
        log.debug("worker %d (pid %d) ready", index, os.getpid())
        ready.send(serving)
        ready.close()

    code = asyncio.run(_serve(args, setup, report, reuse_port=True, worker=index))
    raise SystemExit(code)


async def _serve(
    args: argparse.Namespace,
    setup: Setup,
    announce: Callable[[dict[str, Any]], None],
    *,
    reuse_port: bool = False,
    worker: int | None = None,
) -> int:
    metrics = Metrics(max_label_values=args.max_label_values)
    try:
        decisions = decision_log(args, metrics, worker)
    except Refused as exc:
        return _fail(args, str(exc), exc.code)
    if decisions is None:
        return await _serve_engine(args, setup, announce, metrics, metrics, reuse_port)
    decisions.start()
    try:
        return await _serve_engine(
            args, setup, announce, metrics, Fanout(metrics, decisions), reuse_port
        )
    finally:
        decisions.close()  # every line buffered so far is written


async def _serve_engine(
    args: argparse.Namespace,
    setup: Setup,
    announce: Callable[[dict[str, Any]], None],
    metrics: Metrics,
    observer: Observer,
    reuse_port: bool,
) -> int:
    seen = fingerprint(args.rules)  # before loading: a change during start-up is not missed
    try:
        engine = Engine.from_path(
            args.rules,
            store=args.store,
            key_prefix=args.key_prefix,
            observer=observer,
            store_options=StoreOptions(
                timeout=args.store_timeout,
                max_reservations=args.max_reservations,
                max_report_ids=args.max_report_ids,
                password=setup.store_password,
            ),
            usage_db=None if args.usage_db == "off" else args.usage_db,
            usage_retention_days=args.usage_retention / 86400.0,
            usage_max_models=args.usage_max_models,
        )
    except RulesError as exc:
        return _rules_failed(args, exc)
    except (ValueError, OSError, SchemaTooNew) as exc:
        return _fail(args, str(exc))
    for w in engine.ruleset.warnings:
        log.warning("%s", w.render())
    metrics.watch_stores(engine)
    metrics.ruleset_loaded(engine.ruleset)

    readiness = Readiness(engine)
    reloader = Reloader(
        engine, args.rules, metrics, interval=args.reload_interval, initial=seen,
        watched=setup.watched(),
    )
    http: HttpServer | None = None
    try:
        interceptors = (
            (AuthInterceptor(setup.auth, metrics.auth_failed),) if setup.auth else ()
        )
        grpc_server = await start_grpc(
            engine, args.listen, attribute_headers=setup.attribute_headers, tls=setup.tls,
            interceptors=interceptors, reuse_port=reuse_port,
        )
    except OSError as exc:
        engine.close()
        return _fail(args, str(exc))
    try:
        if args.http and args.http.lower() != "off":
            limits = HttpLimits(idle_timeout=args.http_idle_timeout)
            app = build_app(
                engine, metrics, readiness, limits=limits, reloads=reloader.status,
                auth=setup.auth,
            )
            ssl_context = setup.tls.ssl_context() if setup.tls else None
            http = await start_http(
                args.http, app, ssl_context=ssl_context, reuse_port=reuse_port
            )
    except (OSError, ValueError) as exc:
        await grpc_server.stop(0)
        engine.close()
        return _fail(args, f"cannot serve HTTP on {args.http}: {exc}")

    reloader.start()
    spikes = asyncio.create_task(_watch_spikes(engine, metrics))
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
        "store": redact_url(args.store), "usage_db": redact_url(args.usage_db),
        "workers": args.workers, **setup.shown,
    }
    if not store_ok:  # serving anyway: the start line says what decisions do meanwhile
        ready["not_ready"] = store_reason
    announce(ready)
    refresh = asyncio.create_task(_refresh_stores(metrics)) if metrics.shared else None
    await stop.wait()
    if refresh is not None:
        refresh.cancel()

    log.info("shutting down: draining in-flight calls (grace %gs)", args.grace)
    await watch.stop()
    readiness.drain()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    await grpc_server.stop(args.grace)
    await reloader.stop()
    spikes.cancel()
    if http is not None:
        await http.stop()
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
