"""The offline ops commands: ``check``, ``test``, ``explain`` and ``fmt``.

They need no server and no store beyond memory: an operator can run them in CI on a
rules repository before a rollout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from tollway import dsl
from tollway.dsl.compiled import CompiledRuleset, RuleTrace
from tollway.dsl.diagnostics import Diagnostic, RulesError
from tollway.dsl.formatter import format_file
from tollway.dsl.parser import parse_text
from tollway.dsl.source import read_rule_file, rule_files
from tollway.policy.engine import Engine
from tollway.policy.model import Decision, Explanation
from tollway.policy.testing import run_tests

__all__ = ["run"]

OK, FAILED, USAGE = 0, 1, 2


def _print_diagnostics(diags: list[Diagnostic], out: TextIO) -> None:
    for d in diags:
        print(d.render(), file=out)


def _load(path: str) -> CompiledRuleset | None:
    """Compile ``path``; print its diagnostics; None when it does not compile."""
    try:
        ruleset = dsl.load(path)
    except RulesError as exc:
        _print_diagnostics(exc.errors + exc.warnings, sys.stderr)
        return None
    _print_diagnostics(list(ruleset.warnings), sys.stderr)
    return ruleset


def _need_paths(args: argparse.Namespace) -> list[str] | None:
    paths: list[str] = list(args.paths)
    if not paths:
        print(
            f"tollway {args.command}: give at least one PATH (or set TOLLWAY_RULES)",
            file=sys.stderr,
        )
        return None
    return paths


def run_check(args: argparse.Namespace) -> int:
    paths = _need_paths(args)
    if paths is None:
        return USAGE
    status = OK
    for path in paths:
        ruleset = _load(path)
        if ruleset is None:
            status = FAILED
            continue
        if args.strict and ruleset.warnings:
            status = FAILED
        print(
            f"{path}: ok: {len(ruleset.rules)} rules, {len(ruleset.quotas)} quotas, "
            f"{len(ruleset.prices)} prices, {len(ruleset.tests)} tests, {len(ruleset.warnings)} warnings "
            f"(version {ruleset.version})"
        )
    return status


def run_test(args: argparse.Namespace) -> int:
    paths = _need_paths(args)
    if paths is None:
        return USAGE
    passed = failed = 0
    for path in paths:
        ruleset = _load(path)
        if ruleset is None:
            failed += 1
            continue
        for result in run_tests(ruleset):
            where = str(result.case.pos)
            if result.passed:
                passed += 1
                if args.verbose:
                    print(f"PASS {result.case.name}")
                continue
            failed += 1
            print(f"FAIL {result.case.name}  ({where})")
            if result.error:
                print(f"    {result.error}")
            for f in result.failures:
                print(f"    {f.expect.pos}: expect {f.expect.kind}")
                print(f"        expected: {f.expected}")
                print(f"        got:      {f.got}")
    print(f"{passed} passed, {failed} failed")
    return FAILED if failed else OK


def _read_request(spec: str) -> Any:
    text = Path(spec[1:]).read_text(encoding="utf-8") if spec.startswith("@") else spec
    return json.loads(text)


def jsonable(value: Any) -> Any:
    """Dataclasses (decisions, traces) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _print_decision(d: Decision) -> None:
    verdict = "ALLOW" if d.allowed else "DENY"
    print(f"decision: {verdict} ({d.reason}){': ' + d.message if d.message else ''}")
    print(f"model:    {d.model}{'  (routed)' if d.routed else ''}")
    print(f"rules:    {', '.join(d.matched_rules) or '(none matched)'}")
    if d.checks:
        print(f"checks:   {', '.join(d.checks)}")
    for key, value in d.annotations.items():
        print(f"annotate: {key} = {value}")
    for q in d.quotas:
        flag = "EXCEEDED" if q.exceeded else "ok"
        print(
            f"quota:    {q.name} [{q.metric}, {q.scope} {q.key}] "
            f"used {q.used:g} of {q.limit:g}, remaining {q.remaining:g}: {flag}"
        )
    if d.shadow.matched_rules:
        s = d.shadow
        would = f'deny "{s.message}"' if s.denied else "allow"
        route = f", route {s.model}" if s.routed else ""
        print(f"shadow:   {', '.join(s.matched_rules)} would {would}{route}")
    print(f"ruleset:  {d.ruleset_version}")


def _print_trace(trace: tuple[RuleTrace, ...]) -> None:
    for rt in trace:
        mark = "MATCH" if rt.matched else ("no   " if rt.candidate else "skip ")
        flags = " shadow" if rt.shadow else ""
        print(f"  {mark} rule {rt.rule} (priority {rt.priority}{flags})")
        if not rt.candidate and not rt.matched:
            continue  # the index ruled it out; its tests are shown only when asked for in JSON
        for t in rt.tests:
            seen = ", ".join(f"{k} = {json.dumps(v)}" for k, v in t.values)
            print(
                f"      {'held' if t.held else 'failed'}: {t.text}{'   [' + seen + ']' if seen else ''}"
            )


def run_explain(args: argparse.Namespace) -> int:
    if not args.path:
        print("tollway explain: give the rules PATH (or set TOLLWAY_RULES)", file=sys.stderr)
        return USAGE
    try:
        request = _read_request(args.request)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"tollway explain: --request: {exc}", file=sys.stderr)
        return USAGE
    ruleset = _load(args.path)
    if ruleset is None:
        return FAILED
    engine = Engine(ruleset, store="memory")
    try:
        explanation: Explanation = engine.explain(request)
    except ValueError as exc:
        print(f"tollway explain: bad request: {exc}", file=sys.stderr)
        return USAGE
    finally:
        engine.close()
    if args.json:
        print(json.dumps(jsonable(explanation), indent=2))
        return OK
    _print_decision(explanation.decision)
    print(
        f"trace:    {explanation.candidates} of {explanation.total_rules} rules selected by the index"
    )
    _print_trace(explanation.trace)
    return OK


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


def run_fmt(args: argparse.Namespace) -> int:
    paths = _need_paths(args)
    if paths is None:
        return USAGE
    status = OK
    for root in paths:
        try:
            files = rule_files(root)  # the same files `check` and `serve` would read
        except RulesError as exc:
            _print_diagnostics(exc.errors, sys.stderr)
            status = FAILED
            continue
        for path in files:
            try:
                source = read_rule_file(path)
                rule_file = parse_text(source, str(path))
            except RulesError as exc:
                _print_diagnostics(exc.errors, sys.stderr)
                status = FAILED
                continue
            formatted = format_file(rule_file)
            if formatted == source:
                continue
            if args.check:
                print(f"{path}: not formatted")
                status = FAILED
            else:
                _write_atomically(path, formatted)
                print(f"{path}: formatted")
    return status


_RUNNERS = {"check": run_check, "test": run_test, "explain": run_explain, "fmt": run_fmt}


def run(args: argparse.Namespace) -> int:
    return _RUNNERS[args.command](args)
