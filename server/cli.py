"""The ``tollway`` command: argument parsing only; each command lives in its own module.

Exit codes: 0 ok, 1 errors found (bad rules, failing tests), 2 usage errors.
Every flag also reads ``TOLLWAY_<FLAG>`` from the environment (``--key-prefix`` ->
``TOLLWAY_KEY_PREFIX``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# command -> module whose ``run(args) -> int`` carries it out
_COMMANDS = {
    "serve": "tollway.server.serve",
    "check": "tollway.server.ops",
    "test": "tollway.server.ops",
    "explain": "tollway.server.ops",
    "fmt": "tollway.server.ops",
    "usage": "tollway.server.usage_cli",
    "db": "tollway.server.db_cli",
}

_DEFAULT_USAGE_DB = "sqlite:///tollway-usage.db"


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("TOLLWAY_" + flag.upper().replace("-", "_"), default)


def _env_list(flag: str) -> list[str]:
    value = _env(flag)
    return value.split(os.pathsep) if value else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollway", description="Policy decision sidecar for LLM gateways."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the gRPC and HTTP server")
    serve.add_argument(
        "--rules", default=_env("rules"), help="rule file or directory [TOLLWAY_RULES]"
    )
    serve.add_argument(
        "--listen",
        default=_env("listen", "127.0.0.1:50051"),
        help="gRPC address, HOST:PORT or unix:PATH [TOLLWAY_LISTEN]",
    )
    serve.add_argument(
        "--http",
        default=_env("http", "127.0.0.1:9464"),
        help="HTTP address for /metrics, /healthz, /readyz and /v1/usage; 'off' disables [TOLLWAY_HTTP]",
    )
    serve.add_argument(
        "--store",
        default=_env("store", "memory"),
        help="counter store: memory or redis://HOST:PORT/DB [TOLLWAY_STORE]",
    )
    serve.add_argument(
        "--key-prefix",
        default=_env("key-prefix", "tollway:"),
        help="prefix of every Redis key [TOLLWAY_KEY_PREFIX]",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=float(_env("grace", "10") or 10),
        help="seconds to drain in-flight calls on SIGTERM [TOLLWAY_GRACE]",
    )
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=float(_env("reload-interval", "1") or 1),
        help="seconds between checks of the rules path for changes; 0 disables [TOLLWAY_RELOAD_INTERVAL]",
    )
    serve.add_argument(
        "--usage-db",
        default=_env("usage-db", _DEFAULT_USAGE_DB),
        help="usage database: sqlite:///PATH, postgresql://USER@HOST/DB, memory, or off "
        "[TOLLWAY_USAGE_DB]",
    )
    serve.add_argument(
        "--usage-retention",
        type=float,
        default=float(_env("usage-retention", "400") or 400),
        help="days usage events are kept (rollups are kept for good) [TOLLWAY_USAGE_RETENTION]",
    )
    serve.add_argument(
        "--usage-max-models",
        type=int,
        default=int(_env("usage-max-models", "32") or 32),
        help="models kept per user or group (1..32); later ones are summed as 'other' "
        "[TOLLWAY_USAGE_MAX_MODELS]",
    )
    serve.add_argument(
        "--log-level",
        default=_env("log-level", "info"),
        choices=["debug", "info", "warning", "error"],
        help="[TOLLWAY_LOG_LEVEL]",
    )

    check = sub.add_parser("check", help="compile rule files and report errors and warnings")
    check.add_argument("paths", nargs="*", default=_env_list("rules"), metavar="PATH")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")

    test = sub.add_parser("test", help="run the test blocks of rule files")
    test.add_argument("paths", nargs="*", default=_env_list("rules"), metavar="PATH")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")

    explain = sub.add_parser("explain", help="decide one request offline and show why")
    explain.add_argument("path", nargs="?", default=_env("rules"), metavar="PATH")
    explain.add_argument(
        "--request", required=True, help="the request as JSON, or @FILE to read it from a file"
    )
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")

    fmt = sub.add_parser("fmt", help="rewrite rule files in the canonical layout")
    fmt.add_argument("paths", nargs="*", default=_env_list("rules"), metavar="PATH")
    fmt.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is not formatted"
    )

    usage = sub.add_parser("usage", help="show per-user usage from a running server")
    usage.add_argument(
        "--server", default=_env("server", "127.0.0.1:50051"), help="[TOLLWAY_SERVER]"
    )
    usage.add_argument("--sort", default=_env("sort", "-total_cost"))
    usage.add_argument("--limit", type=int, default=int(_env("limit", "25") or 25))
    usage.add_argument("--user", default=_env("user"), help="show one user's detail")
    usage.add_argument("--group", default=_env("group"), help="show one group's detail")
    usage.add_argument("--groups", action="store_true", help="list groups instead of users")
    usage.add_argument("--search", default="", help="only ids containing this text")
    usage.add_argument(
        "--spikes", action="store_true",
        help="show who spikes: usage in --window over --factor times the --baseline average",
    )
    usage.add_argument("--metric", default="cost", help="with --spikes: cost, tokens or requests")
    usage.add_argument("--window", default="1h", help="with --spikes: the recent window (1h)")
    usage.add_argument("--baseline", default="7d", help="with --spikes: the baseline span (7d)")
    usage.add_argument("--factor", type=float, default=5.0, help="with --spikes: 5")
    usage.add_argument(
        "--min", type=float, default=1.0, help="with --spikes: least window amount (1)"
    )

    db = sub.add_parser("db", help="manage the usage database")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    upgrade = db_sub.add_parser(
        "upgrade", help="migrate the usage database to this version's schema"
    )
    upgrade.add_argument(
        "--usage-db", default=_env("usage-db", _DEFAULT_USAGE_DB),
        help="the usage database URL [TOLLWAY_USAGE_DB]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(_COMMANDS[args.command])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tollway test | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
