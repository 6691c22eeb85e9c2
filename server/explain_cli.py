"""``tollway explain``: decide one request offline against a ruleset and show why.

The request comes as JSON text, ``@FILE`` or ``@-`` (standard input). The engine runs on
a fresh in-memory store, so nothing is consumed anywhere. ``--json`` prints the gRPC
API's ``Explanation`` in its JSON mapping: the same shape ``Explain`` gives through
grpcurl or any proto JSON client.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tollway.dsl.compiled import RuleTrace
from tollway.policy.engine import Engine
from tollway.policy.model import Decision, Explanation
from tollway.policy.testing import seed_entities

from .convert import explanation_to_proto, message_to_json
from .ops import FAILED, OK, USAGE, compile_path, plural

__all__ = ["run"]


def read_request(spec: str) -> Any:
    """The request of ``--request``: JSON text, ``@FILE`` or ``@-`` for standard input.

    Raises ``OSError`` (unreadable file) or ``ValueError`` (not JSON).
    """
    if spec == "@-":
        text = sys.stdin.read()
    elif spec.startswith("@"):
        text = Path(spec[1:]).read_text(encoding="utf-8")
    else:
        text = spec
    return json.loads(text)


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
    if d.ignored_metadata:
        print(f"ignored:  {', '.join(d.ignored_metadata)} (only UpsertEntity sets these keys)")
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


def run(args: argparse.Namespace) -> int:
    if not args.path:
        print("tollway explain: give the rules PATH (or set TOLLWAY_RULES)", file=sys.stderr)
        return USAGE
    try:
        request = read_request(args.request)
    except (OSError, ValueError) as exc:
        print(f"tollway explain: --request: {exc}", file=sys.stderr)
        return USAGE
    found = compile_path(args.path)
    ruleset = found.ruleset
    if ruleset is None:
        print(f"{args.path}: does not compile ({plural(len(found.errors), 'error')})",
              file=sys.stderr)
        return FAILED
    engine = Engine(ruleset, store="memory")
    try:
        # offline, the request's metadata stands for what is stored (admin keys too)
        explanation: Explanation = engine.explain(seed_entities(engine, request))
    except ValueError as exc:
        print(f"tollway explain: bad request: {exc}", file=sys.stderr)
        return USAGE
    finally:
        engine.close()
    if args.json:
        print(json.dumps(message_to_json(explanation_to_proto(explanation)), indent=2))
        return OK
    _print_decision(explanation.decision)
    print(
        f"trace:    {explanation.candidates} of {explanation.total_rules} rules selected by the index"
    )
    _print_trace(explanation.trace)
    return OK
