"""The ``tollway`` command: parsers built from the settings table, then one module per command.

Exit codes: 0 ok, 1 errors found (bad rules, failing tests, a server that cannot start
or answer), 2 usage errors (a bad flag or environment variable; the message names it).
Values come from the command line, else from the setting's environment variable (server
and connection settings only), else from the table's default. The parsed namespace also
carries ``command`` and ``given``: the settings named on the command line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from tollway import __version__

from .settings import COMMANDS, Setting, command, settings_for

__all__ = ["main", "parse_args"]

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors keep the 'tollway CMD: error: …' form without a traceback."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _type(setting: Setting) -> Any:
    def parse(text: str) -> Any:
        try:
            return setting.type.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name  # argparse names the type in some messages
    return parse


def _help(setting: Setting) -> str:
    notes = []
    default = setting.shown_default()
    if default is not None:
        notes.append(f"default: {default}")
    if setting.env is not None:
        notes.append(f"env: {setting.env}")
    text = setting.help + (f" [{'; '.join(notes)}]" if notes else "")
    return text.replace("%", "%%")


def _add(parser: argparse.ArgumentParser, setting: Setting) -> None:
    common: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(setting)}
    if setting.positional:
        nargs = "*" if setting.repeated else None if setting.required else "?"
        parser.add_argument(
            setting.dest, nargs=nargs, type=_type(setting), metavar=setting.type.metavar,
            **common,
        )
        return
    flags = [setting.flag] if setting.short is None else [setting.short, setting.flag]
    if not setting.type.metavar:  # a switch
        parser.add_argument(*flags, dest=setting.dest, action="store_true", **common)
        return
    parser.add_argument(
        *flags, dest=setting.dest, type=_type(setting), metavar=setting.type.metavar,
        action="append" if setting.repeated else "store", required=setting.required, **common,
    )


def _build() -> tuple[_Parser, dict[str, _Parser]]:
    parser = _Parser(
        prog="tollway",
        description="Policy decision sidecar for LLM gateways.",
        epilog="'tollway COMMAND --help' describes a command's flags. Environment "
        "variables are listed in docs/operations.md.",
    )
    parser.add_argument("--version", action="version", version=f"tollway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    parsers: dict[str, _Parser] = {}
    for cmd in COMMANDS:
        rows = list(settings_for(cmd.name))
        env_only = [s for s in rows if not s.cli]
        epilog = None
        if env_only:
            epilog = "environment only: " + "; ".join(f"{s.env}: {s.help}" for s in env_only)
        parsers[cmd.name] = sub.add_parser(
            cmd.name, help=cmd.summary, description=cmd.description, epilog=epilog,
        )
        for setting in rows:
            if setting.cli:
                _add(parsers[cmd.name], setting)
    return parser, parsers


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--sort -request_count`` -> ``--sort=-request_count``.

    argparse takes any word starting with '-' for a flag, so a value such as a descending
    sort order would be refused; a value-taking flag of the command takes the next word
    as its value unless that word is itself one of the command's flags.
    """
    words = list(argv)
    name = next((w for w in words if not w.startswith("-")), None)
    rows = [s for s in settings_for(name or "") if s.cli and not s.positional]
    valued = {s.flag for s in rows if s.type.metavar}
    flags = {f for s in rows for f in (s.flag, s.short) if f} | {"-h", "--help"}
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if word in valued and nxt and nxt.startswith("-") and nxt != "-" and nxt not in flags:
            out.append(f"{word}={nxt}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """Parse ``argv``, fill what it does not give from ``environ`` and the defaults.

    Raises ``SystemExit(2)`` after printing the reason (naming the flag or variable),
    ``SystemExit(0)`` after ``--help`` or ``--version``.
    """
    parser, parsers = _build()
    args = parser.parse_args(_join_dash_values(argv))
    sub = parsers[args.command]
    rows = list(settings_for(args.command))
    given = frozenset(s.name for s in rows if s.cli and s.dest in vars(args))
    for setting in rows:
        for other in setting.conflicts:
            if setting.name in given and other in given:
                sub.error(f"{setting.flag} cannot be used with --{other}")
    for setting in rows:
        if setting.name in given:
            continue
        raw = environ.get(setting.env, "") if setting.env else ""
        if raw:
            try:
                value = setting.parse_env(raw)
            except ValueError as exc:
                sub.error(f"{setting.env}: {exc}")
        else:
            value = list(setting.default) if setting.repeated else setting.default
        setattr(args, setting.dest, value)
    args.given = given
    return args


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else USAGE_ERROR


def quiet_grpc_core(environ: dict[str, str] | os._Environ[str]) -> None:
    """Keep gRPC core's own stderr lines (``E1129 … add_port.cc:83] …``) out of tollway's
    output: the errors that matter reach tollway as exceptions and are reported once.
    Must run before ``grpc`` is imported; an operator's own ``GRPC_VERBOSITY`` wins."""
    environ.setdefault("GRPC_VERBOSITY", "NONE")


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(words, os.environ)
    except SystemExit as stop:
        return _exit_code(stop.code)
    quiet_grpc_core(os.environ)
    module = importlib.import_module(command(args.command).module)
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tollway test | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
