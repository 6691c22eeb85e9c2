"""``tollway fmt``: rule files in the canonical layout, rewritten, checked or diffed.

``-`` formats standard input to standard output. ``--check`` and ``--diff`` change
nothing: ``--check`` exits 1 when a file is not formatted, ``--diff`` prints the change
as a unified diff (exit 0, or 1 together with ``--check``). A file that does not parse
is never touched; its errors are printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tempfile
from pathlib import Path

from tollway.dsl.diagnostics import Diagnostic, RulesError
from tollway.dsl.formatter import format_file
from tollway.dsl.parser import parse_text
from tollway.dsl.source import read_rule_file, rule_files

from .ops import FAILED, OK, USAGE, need_paths

__all__ = ["run"]

STDIN = "-"
STDIN_NAME = "<stdin>"


def _print_diagnostics(diags: list[Diagnostic]) -> None:
    for d in diags:
        print(d.render(), file=sys.stderr)


def _write_atomically(path: Path, text: str) -> None:
    # a crash mid-write must never leave a half-formatted rule file behind
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _diff(name: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=f"{name} (current)", tofile=f"{name} (formatted)",
    ))


def _format_one(name: str, source: str, args: argparse.Namespace) -> int:
    """Format one text; print, write or compare as the flags say. OK, or FAILED."""
    try:
        formatted = format_file(parse_text(source, name))
    except RulesError as exc:
        _print_diagnostics(exc.errors)
        return FAILED
    changed = formatted != source
    if args.diff and changed:
        sys.stdout.write(_diff(name, source, formatted))
    if args.check:
        if changed and not args.diff:
            print(f"{name}: not formatted")
        return FAILED if changed else OK
    if args.diff:
        return OK
    if name == STDIN_NAME:
        sys.stdout.write(formatted)
    elif changed:
        _write_atomically(Path(name), formatted)
        print(f"{name}: formatted")
    return OK


def run(args: argparse.Namespace) -> int:
    paths = need_paths(args, hint=" (or - for standard input)")
    if paths is None:
        return USAGE
    status = OK
    for root in paths:
        if root == STDIN:
            status = max(status, _format_one(STDIN_NAME, sys.stdin.read(), args))
            continue
        try:
            files = rule_files(root)  # the same files `check` and `serve` would read
        except RulesError as exc:
            _print_diagnostics(exc.errors)
            status = FAILED
            continue
        for path in files:
            try:
                source = read_rule_file(path)
            except RulesError as exc:
                _print_diagnostics(exc.errors)
                status = FAILED
                continue
            status = max(status, _format_one(str(path), source, args))
    return status
