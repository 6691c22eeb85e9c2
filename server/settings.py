"""Every command, flag and environment variable of ``tollway``, in one table.

``COMMANDS`` lists the subcommands; ``SETTINGS`` lists every flag (and positional
argument) once: its name, value type, default, environment variable (or None), help,
and the subcommands that take it. ``tollway.server.cli`` builds the argparse parsers
from these two tables and nothing else, so adding a flag is adding one row here (and,
when it has a variable, a line in docs/operations.md: a test compares the two).

Environment variables exist only for server and connection settings (the list is in
docs/operations.md): a variable left in a shell never changes what an offline command
(``check``, ``fmt``, …) or a query (``usage --user``) does. A flag given on the command
line wins over its variable; an empty variable counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tollway.policy.usage_query import DEFAULT_LIMIT, DEFAULT_SORT

from .setting_types import (
    Choice,
    Duration,
    FilePath,
    Flag,
    HeaderAttribute,
    Integer,
    Number,
    SecretFile,
    Text,
    ValueType,
)

__all__ = ["Command", "Setting", "COMMANDS", "SETTINGS", "command", "settings_for"]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``module.run(args) -> int`` carries it out."""

    name: str
    module: str
    summary: str  # one line, in ``tollway --help``
    description: str  # the paragraph on top of ``tollway NAME --help``


@dataclass(frozen=True)
class Setting:
    """One flag (``--key-prefix``) or positional argument (``paths``).

    ``repeated``: the flag may be given several times (a list, in command-line order);
    its variable holds the items separated by ``separator``. A repeated positional takes
    any number of words. ``conflicts``: names of settings that may not be given together
    with this one on the command line. ``cli=False``: read from the environment only
    (secrets, which must not appear in a process list).
    """

    name: str
    type: ValueType
    default: Any
    env: str | None
    help: str
    commands: tuple[str, ...]
    repeated: bool = False
    separator: str = ","
    positional: bool = False
    required: bool = False
    short: str | None = None
    conflicts: tuple[str, ...] = ()
    cli: bool = True
    default_text: str | None = None  # how --help shows the default, when not type.show()

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return self.name if self.positional else "--" + self.name

    def parse_env(self, raw: str) -> Any:
        """The variable's value; ``ValueError`` says what is wrong with it."""
        if not self.repeated:
            return self.type.parse(raw)
        return [self.type.parse(item) for item in raw.split(self.separator) if item]

    def shown_default(self) -> str | None:
        if self.default_text is not None:
            return self.default_text
        if self.default in (None, False, [], ""):
            return None
        if self.repeated:
            return self.separator.join(self.type.show(v) for v in self.default)
        return self.type.show(self.default)


SERVE, CHECK, TEST, EXPLAIN, FMT, USAGE, DB = (
    "serve", "check", "test", "explain", "fmt", "usage", "db"
)
TOKEN = "token"
BALANCE = "balance"

COMMANDS: tuple[Command, ...] = (
    Command(
        SERVE, "tollway.server.serve", "run the gRPC and HTTP server",
        "Serve Decide, Report and the rest of the gRPC API, and /metrics, /healthz, "
        "/readyz and the usage API over HTTP, until SIGTERM or SIGINT; reload the rules "
        "when their files change or on SIGHUP. Without --rules the built-in example "
        "ruleset is served. Exit 0 after a clean shutdown, 1 when it cannot start, 2 for "
        "bad flags or environment variables.",
    ),
    Command(
        CHECK, "tollway.server.ops", "compile rule files and report errors and warnings",
        "Compile each PATH (a .rules file or a directory of them) and print every error "
        "and warning as file:line:col, then one summary line per PATH. Exit 0 when all "
        "compile, 1 when one does not (or has warnings, with --strict), 2 for bad flags.",
    ),
    Command(
        TEST, "tollway.server.ops", "run the test blocks of rule files",
        "Run the test blocks of each PATH; a failing case shows what was expected and "
        "what came. Exit 0 when all pass, 1 when one fails or a PATH does not compile.",
    ),
    Command(
        EXPLAIN, "tollway.server.explain_cli", "decide one request offline and show why",
        "Decide one request against the rules at PATH with a fresh in-memory store "
        "(nothing is consumed) and print the decision and a trace: every rule "
        "considered, which tests held, the quotas and their counters.",
    ),
    Command(
        FMT, "tollway.server.fmt_cli", "rewrite rule files in the canonical layout",
        "Rewrite each rule file (or every .rules file under a directory) in the "
        "canonical layout, keeping comments. '-' formats standard input to standard "
        "output. Exit 1 with --check when a file is not formatted.",
    ),
    Command(
        USAGE, "tollway.server.usage_cli", "show per-user usage from a running server",
        "List users (or groups) by usage from a running server over gRPC, or show one "
        "user's or group's detail, or who spikes (--spikes). A table on a terminal; plain "
        "tab-separated lines when standard output is not a terminal; --json or --csv for "
        "machines.",
    ),
    Command(
        DB, "tollway.server.db_cli", "manage the usage database",
        "'tollway db upgrade' migrates the usage database at --usage-db to this version's "
        "schema (serve does it on start). Exit 0 when migrated or already current, 1 when "
        "the database cannot be reached or was migrated by a newer tollway, 2 for bad "
        "flags.",
    ),
    Command(
        TOKEN, "tollway.server.token_cli", "make a token for the --auth file",
        "'tollway token new --name N --roles R[,R]' makes a fresh random token: the "
        "[[token]] block for the --auth file, which holds only the token's sha256, goes to "
        "standard output (append it to the file), the token itself to standard error, "
        "shown once and stored nowhere. Roles: decide, admin, metrics.",
    ),
    Command(
        BALANCE, "tollway.server.balance_cli", "top up or show balances on a running server",
        "'tollway balance credit --group ID --balance NAME --amount X' tops up (or, with a "
        "negative amount, corrects) a balance of a running server over gRPC (Credit); "
        "'tollway balance show --group ID' prints the group's balances with their latest "
        "ledger entries (GetBalance). Exit 0 done, 1 the server refused or could not "
        "answer, 2 bad flags.",
    ),
)

_RULES_PATHS_HELP = (
    "a .rules file or a directory of them (several may be given); the variable holds "
    f"paths separated by '{os.pathsep}'"
)
_USAGE_LISTING = ("user", "group")  # a detail view takes none of the listing's flags

SETTINGS: tuple[Setting, ...] = (
    # ------------------------------------------------------------------ serve
    Setting(
        "rules", FilePath(), None, "TOLLWAY_RULES",
        "rule file or directory to serve", (SERVE,),
        default_text="the built-in example ruleset",
    ),
    Setting(
        "listen", Text(metavar="ADDR", allow_empty=False), "127.0.0.1:50051", "TOLLWAY_LISTEN",
        "gRPC address: HOST:PORT or unix:PATH (port 0 picks a free port)", (SERVE,),
    ),
    Setting(
        "http", Text(metavar="ADDR", allow_empty=False), "127.0.0.1:9464", "TOLLWAY_HTTP",
        "HTTP address for /metrics, /healthz, /readyz and /v1/usage; 'off' disables it",
        (SERVE,),
    ),
    Setting(
        "http-idle-timeout", Duration("s"), 15.0, "TOLLWAY_HTTP_IDLE_TIMEOUT",
        "time an HTTP connection may stay open without a complete request head (new, "
        "idle between requests, or sending its headers slowly)", (SERVE,),
    ),
    Setting(
        "store", Text(metavar="URL", allow_empty=False), "memory", "TOLLWAY_STORE",
        "counter store: memory, or redis://HOST:PORT/DB, "
        "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB] or "
        "redis+cluster://HOST:PORT[,HOST:PORT…][/PREFIX] shared by replicas", (SERVE,),
    ),
    Setting(
        "key-prefix", Text(metavar="PREFIX"), "tollway:", "TOLLWAY_KEY_PREFIX",
        "prefix of every Redis key", (SERVE,),
    ),
    Setting(
        "workers", Integer(low=1, high=64), 1, "TOLLWAY_WORKERS",
        "server processes sharing the gRPC and HTTP ports (SO_REUSEPORT); more than 1 "
        "needs a shared store (redis://…) and a HOST:PORT --listen", (SERVE,),
    ),
    Setting(
        "grace", Duration("s"), 10.0, "TOLLWAY_GRACE",
        "time in-flight calls get to finish on SIGTERM", (SERVE,),
    ),
    Setting(
        "reload-interval", Duration("s"), 1.0, "TOLLWAY_RELOAD_INTERVAL",
        "time between checks of the rules for changes; 0 disables watching (SIGHUP "
        "still reloads)", (SERVE,),
    ),
    Setting(
        "usage-db", Text(metavar="URL", allow_empty=False), "sqlite:///tollway-usage.db",
        "TOLLWAY_USAGE_DB",
        "usage database: sqlite:///PATH, postgresql://USER@HOST:PORT/DB (shared by "
        "replicas), memory, or off", (SERVE, DB),
    ),
    Setting(
        "usage-retention", Duration("d"), 400 * 86400.0, "TOLLWAY_USAGE_RETENTION",
        "how long usage events are kept (the activity export, recent reports); the "
        "hourly, daily and monthly totals are kept for good", (SERVE,),
    ),
    Setting(
        "usage-max-models", Integer(low=1, high=32), 32, "TOLLWAY_USAGE_MAX_MODELS",
        "models kept apart per user or group; later ones are summed under 'other'",
        (SERVE,),
    ),
    Setting(
        "store-timeout", Duration("s", high=60.0), 0.1, "TOLLWAY_STORE_TIMEOUT",
        "Redis store: the time a decision's or report's store work may take in all, "
        "counted from when the call arrived; past it on_store_error decides",
        (SERVE,), default_text="100ms",
    ),
    Setting(
        "max-reservations", Integer(low=1), 100_000, "TOLLWAY_MAX_RESERVATIONS",
        "memory store: open reservations kept for their reports; past it the oldest is "
        "released early (and counted in tollway_store_evictions_total)", (SERVE,),
    ),
    Setting(
        "max-report-ids", Integer(low=1), 200_000, "TOLLWAY_MAX_REPORT_IDS",
        "memory store: request_ids remembered so that a retried report counts once; "
        "past it the oldest is forgotten early (and counted)", (SERVE,),
    ),
    Setting(
        "max-label-values", Integer(low=0), 100, "TOLLWAY_MAX_LABEL_VALUES",
        "metric label values taken from clients (models, report statuses) kept as their "
        "own series beyond those the rules name; later ones are counted as 'other'",
        (SERVE,),
    ),
    Setting(
        "attribute-header", HeaderAttribute(), [], "TOLLWAY_ATTRIBUTE_HEADER",
        "an HTTP request header the Envoy services give the rules as request.ATTRIBUTE, "
        "e.g. x-team=team (repeatable)", (SERVE,), repeated=True,
    ),
    Setting(
        "log-level", Choice(("debug", "info", "warning", "error")), "info",
        "TOLLWAY_LOG_LEVEL", "the least severe log lines written", (SERVE,),
    ),
    Setting(
        "log-format", Choice(("text", "json")), "text", "TOLLWAY_LOG_FORMAT",
        "log lines as text, or one JSON object per line for log shippers", (SERVE,),
    ),
    Setting(
        "auth", FilePath(metavar="FILE"), None, "TOLLWAY_AUTH",
        "TOML file of tokens and their roles (docs/security.md): every call then needs a "
        "token with the right role; re-read with the rules", (SERVE,),
    ),
    Setting(
        "insecure", Flag(), False, "TOLLWAY_INSECURE",
        "allow a non-loopback --listen or --http without --auth", (SERVE,),
    ),
    Setting(
        "tls-cert", FilePath(metavar="FILE"), None, "TOLLWAY_TLS_CERT",
        "PEM certificate chain: serve gRPC and HTTP over TLS (with --tls-key); re-read on "
        "SIGHUP and when the file changes", (SERVE,),
    ),
    Setting(
        "tls-key", FilePath(metavar="FILE"), None, "TOLLWAY_TLS_KEY",
        "PEM private key of --tls-cert", (SERVE,),
    ),
    Setting(
        "tls-client-ca", FilePath(metavar="FILE"), None, "TOLLWAY_TLS_CLIENT_CA",
        "PEM CA certificates: clients must present a certificate signed by one (mTLS)",
        (SERVE,),
    ),
    Setting(
        "store-password-file", SecretFile(), None, "TOLLWAY_STORE_PASSWORD_FILE",
        "file holding the Redis password, kept out of the URL and the process list",
        (SERVE,),
    ),
    Setting(
        "store-password", Text(allow_empty=False), None, "TOLLWAY_STORE_PASSWORD",
        "the Redis password itself (instead of --store-password-file)", (SERVE,), cli=False,
    ),
    Setting(
        "decision-log", Text(metavar="PATH|-", allow_empty=False), None, "TOLLWAY_DECISION_LOG",
        "write one JSON line per Decide to PATH, or '-' for standard output", (SERVE,),
    ),
    Setting(
        "decision-log-max-mb", Number(low=0.001), 100.0, "TOLLWAY_DECISION_LOG_MAX_MB",
        "rotate the decision log file before it grows past this many MiB", (SERVE,),
    ),
    Setting(
        "decision-log-keep", Integer(low=0), 5, "TOLLWAY_DECISION_LOG_KEEP",
        "rotated decision log files kept (PATH.1 … PATH.N)", (SERVE,),
    ),
    Setting(
        "decision-log-metadata", Text(metavar="KEY"), [], "TOLLWAY_DECISION_LOG_METADATA",
        "user or group metadata keys whose values the decision log includes, separated "
        "by commas (none by default: metadata may be personal data)", (SERVE,),
        repeated=True,
    ),
    # ------------------------------------------------------ check, test, explain
    Setting(
        "paths", FilePath(), [], "TOLLWAY_RULES", _RULES_PATHS_HELP, (CHECK, TEST),
        repeated=True, separator=os.pathsep, positional=True,
    ),
    Setting(
        "strict", Flag(), False, None, "fail on warnings too", (CHECK,),
    ),
    Setting(
        "verbose", Flag(), False, None, "list passing tests too", (TEST,), short="-v",
    ),
    Setting(
        "path", FilePath(), None, "TOLLWAY_RULES", "the rules: a .rules file or a directory",
        (EXPLAIN,), positional=True,
    ),
    Setting(
        "request", Text(metavar="JSON|@FILE|@-"), None, None,
        "the request as JSON, @FILE to read it from a file, @- from standard input",
        (EXPLAIN,), required=True,
    ),
    Setting(
        "json", Flag(), False, None,
        "print the explanation as JSON, the gRPC API's JSON mapping of Explanation",
        (EXPLAIN,),
    ),
    # --------------------------------------------------------------------- fmt
    Setting(
        "paths", FilePath(), [], None,
        "rule files or directories to format; '-' reads standard input and writes the "
        "result to standard output", (FMT,), repeated=True, positional=True,
    ),
    Setting(
        "check", Flag(), False, None, "change nothing; exit 1 if a file is not formatted",
        (FMT,),
    ),
    Setting(
        "diff", Flag(), False, None, "change nothing; print what would change as a unified diff",
        (FMT,),
    ),
    # ------------------------------------------------------------------- usage
    Setting(
        "server", Text(metavar="ADDR", allow_empty=False), "127.0.0.1:50051", "TOLLWAY_SERVER",
        "gRPC address of the tollway server: HOST:PORT or unix:PATH", (USAGE,),
    ),
    Setting(
        "sort", Text(metavar="FIELD"), DEFAULT_SORT, None,
        "last_seen, first_seen, request_count, total_cost or total_tokens; a leading '-' "
        "sorts descending", (USAGE,), conflicts=_USAGE_LISTING,
    ),
    Setting(
        "limit", Text(metavar="N"), str(DEFAULT_LIMIT), None, "rows per page, 1..100", (USAGE,),
        conflicts=_USAGE_LISTING,
    ),
    Setting(
        "offset", Text(metavar="N"), "0", None, "rows to skip: where the page starts", (USAGE,),
        conflicts=_USAGE_LISTING,
    ),
    Setting(
        "search", Text(), "", None, "only ids containing this text", (USAGE,),
        conflicts=_USAGE_LISTING,
    ),
    Setting(
        "start", Text(metavar="TIME"), None, None,
        "list what was used from TIME on (ISO 8601, e.g. 2026-03-01 or "
        "2026-03-01T12:00:00Z; no zone means UTC; rounded down to the hour)", (USAGE,),
        conflicts=_USAGE_LISTING,
    ),
    Setting(
        "end", Text(metavar="TIME"), None, None,
        "list what was used before TIME (ISO 8601; rounded up to the hour)",
        (USAGE,), conflicts=_USAGE_LISTING,
    ),
    Setting(
        "groups", Flag(), False, None, "list groups instead of users", (USAGE,),
        conflicts=_USAGE_LISTING,
    ),
    Setting(
        "user", Text(metavar="ID", allow_empty=False), None, None,
        "show one user's totals, cost by model and latest reports", (USAGE,),
        conflicts=("group",),
    ),
    Setting(
        "group", Text(metavar="ID", allow_empty=False), None, None, "show one group's detail",
        (USAGE,),
    ),
    Setting(
        "json", Flag(), False, None, "print JSON: the HTTP usage API's shapes", (USAGE,),
        conflicts=("csv",),
    ),
    Setting(
        "csv", Flag(), False, None,
        "print CSV with a header row (a detail view prints its latest reports)", (USAGE,),
    ),
    Setting(
        "spikes", Flag(), False, None,
        "list who spikes: usage in the last --window over --factor times its average per "
        "window over the --baseline before", (USAGE,),
        conflicts=("user", "group", "sort", "offset", "search", "start", "end"),
    ),
    Setting(
        "metric", Choice(("cost", "tokens", "requests")), "cost", None,
        "with --spikes: what to compare", (USAGE,),
    ),
    Setting(
        "window", Text(metavar="HOURS"), "1h", None,
        "with --spikes: the recent window, whole hours (1h, 6h, 1d)", (USAGE,),
    ),
    Setting(
        "baseline", Text(metavar="HOURS"), "7d", None,
        "with --spikes: the span before the window that sets the usual", (USAGE,),
    ),
    Setting(
        "factor", Text(metavar="X"), "5", None,
        "with --spikes: how many times the usual counts as a spike", (USAGE,),
    ),
    Setting(
        "min", Text(metavar="X"), "1", None,
        "with --spikes: the least amount in the window that counts (USD, tokens or "
        "requests)", (USAGE,),
    ),
    # ---------------------------------------------------------------------- db
    Setting(
        "action", Choice(("upgrade",)), None, None,
        "upgrade: migrate the usage database to this version's schema", (DB,),
        positional=True,
    ),
    # ----------------------------------------------------------------- balance
    Setting(
        "action", Choice(("credit", "show")), None, None, "what to do: credit or show",
        (BALANCE,), positional=True, required=True,
    ),
    Setting(
        "server", Text(metavar="ADDR", allow_empty=False), "127.0.0.1:50051", "TOLLWAY_SERVER",
        "gRPC address of the tollway server: HOST:PORT or unix:PATH", (BALANCE,),
    ),
    Setting(
        "user", Text(metavar="ID", allow_empty=False), None, None, "the user whose balances",
        (BALANCE,), conflicts=("group",),
    ),
    Setting(
        "group", Text(metavar="ID", allow_empty=False), None, None,
        "the group whose balances", (BALANCE,),
    ),
    Setting(
        "balance", Text(metavar="NAME", allow_empty=False), None, None,
        "credit: the balance's name in the rules", (BALANCE,),
    ),
    Setting(
        "amount", Number(), None, None,
        "credit: how much, in the balance's metric (USD for cost); negative corrects",
        (BALANCE,),
    ),
    Setting(
        "reason", Text(metavar="TEXT"), "", None, "credit: why, kept in the ledger", (BALANCE,),
    ),
    Setting(
        "idempotency-key", Text(metavar="KEY", allow_empty=False), None, None,
        "credit: the same key twice applies once (default: a fresh one, printed)", (BALANCE,),
    ),
    Setting(
        "json", Flag(), False, None, "print JSON: the HTTP balance API's shapes", (BALANCE,),
    ),
    # ------------------------------------------------------------------- token
    Setting(
        "action", Choice(("new",)), None, None, "what to do: new", (TOKEN,), positional=True,
        required=True,
    ),
    Setting(
        "name", Text(metavar="NAME", allow_empty=False), None, None,
        "who the token is for; logs name the caller by it", (TOKEN,), required=True,
    ),
    Setting(
        "roles", Text(metavar="ROLE[,ROLE]", allow_empty=False), None, None,
        "the roles the token grants, separated by commas: decide, admin, metrics",
        (TOKEN,), required=True,
    ),
    Setting(
        "json", Flag(), False, None,
        "print name, roles, token, sha256 and the block as one JSON object", (TOKEN,),
    ),
)


def command(name: str) -> Command:
    for cmd in COMMANDS:
        if cmd.name == name:
            return cmd
    raise KeyError(name)


def settings_for(name: str) -> Iterator[Setting]:
    """The settings a subcommand takes, in table order."""
    return (s for s in SETTINGS if name in s.commands)
