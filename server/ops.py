"""``tollway check`` and ``tollway test``: compile rule files, run their test blocks.

They need no server and no store beyond memory: an operator runs them in CI on a rules
repository before a rollout. Diagnostics go to stderr; one summary line per PATH (and,
for ``test``, the failures and a closing count) to stdout.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tollway import dsl
from tollway.dsl.compiled import CompiledRuleset
from tollway.dsl.diagnostics import Diagnostic, RulesError
from tollway.policy.testing import run_tests

__all__ = ["run", "Compiled", "compile_path", "need_paths", "plural", "OK", "FAILED", "USAGE"]

OK, FAILED, USAGE = 0, 1, 2


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Compiled:
    """The outcome of compiling one PATH: the ruleset, or the errors that stopped it."""

    path: str
    ruleset: CompiledRuleset | None
    errors: tuple[Diagnostic, ...]
    warnings: tuple[Diagnostic, ...]


def compile_path(path: str) -> Compiled:
    """Compile ``path`` and print every diagnostic to stderr, errors and warnings in order."""
    try:
        ruleset = dsl.load(path)
    except RulesError as exc:
        found = Compiled(path, None, tuple(exc.errors), tuple(exc.warnings))
    else:
        found = Compiled(path, ruleset, (), tuple(ruleset.warnings))
    for d in sorted((*found.errors, *found.warnings), key=Diagnostic.sort_key):
        print(d.render(), file=sys.stderr)
    return found


def need_paths(args: argparse.Namespace, hint: str = " (or set TOLLWAY_RULES)") -> list[str] | None:
    paths: list[str] = list(args.paths)
    if not paths:
        print(f"tollway {args.command}: give at least one PATH{hint}", file=sys.stderr)
        return None
    return paths


def _contents(ruleset: CompiledRuleset) -> str:
    return (
        f"{plural(len(ruleset.rules), 'rule')}, {plural(len(ruleset.quotas), 'quota')}, "
        f"{plural(len(ruleset.prices), 'price')}, {plural(len(ruleset.tests), 'test')}"
    )


def run_check(args: argparse.Namespace) -> int:
    paths = need_paths(args)
    if paths is None:
        return USAGE
    status = OK
    for path in paths:
        found = compile_path(path)
        warnings = plural(len(found.warnings), "warning")
        if found.ruleset is None:
            status = FAILED
            counts = plural(len(found.errors), "error")
            print(f"{path}: failed: {counts}" + (f", {warnings}" if found.warnings else ""))
        elif args.strict and found.warnings:
            status = FAILED
            print(f"{path}: failed with --strict: {warnings}; {_contents(found.ruleset)}")
        else:
            print(
                f"{path}: ok: {_contents(found.ruleset)}, {warnings} "
                f"(version {found.ruleset.version})"
            )
    return status


def run_test(args: argparse.Namespace) -> int:
    paths = need_paths(args)
    if paths is None:
        return USAGE
    passed = failed = broken = 0
    for path in paths:
        found = compile_path(path)
        if found.ruleset is None:
            broken += 1
            print(
                f"{path}: does not compile ({plural(len(found.errors), 'error')}): "
                "its tests did not run"
            )
            continue
        for result in run_tests(found.ruleset):
            if result.passed:
                passed += 1
                if args.verbose:
                    print(f"PASS {result.case.name}")
                continue
            failed += 1
            print(f"FAIL {result.case.name}  ({result.case.pos})")
            if result.error:
                print(f"    {result.error}")
            for f in result.failures:
                print(f"    {f.expect.pos}: expect {f.expect.kind}")
                print(f"        expected: {f.expected}")
                print(f"        got:      {f.got}")
    print(f"{passed} passed, {failed} failed" + (f", {broken} not compiled" if broken else ""))
    return FAILED if failed or broken else OK


_RUNNERS = {"check": run_check, "test": run_test}


def run(args: argparse.Namespace) -> int:
    return _RUNNERS[args.command](args)
