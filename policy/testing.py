"""Runs the ``test`` blocks of a ruleset (``tollway test``).

Each test gets a fresh engine on a fresh memory store with a frozen clock, so its
steps see each other's counters and nothing else, and results never depend on when
they run. A step's metadata describes the user and group as stored, admin-only keys
included (``seed_entities``): offline there is no other way to give them values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tollway.dsl.ast import Expect, TestCase
from tollway.dsl.compiled import CompiledRuleset

from .engine import Engine
from .model import DecideRequest, Decision, EntityRef

__all__ = ["Failure", "CaseResult", "run_tests", "seed_entities", "FROZEN_NOW"]

# 2026-01-15T12:00:00Z: mid-month, mid-week, so calendar windows do not roll over mid-test
FROZEN_NOW = 1768478400.0


@dataclass(frozen=True, slots=True)
class Failure:
    expect: Expect
    expected: str
    got: str


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: TestCase
    failures: tuple[Failure, ...] = ()
    error: str = ""  # a request the engine refused (ValueError)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.error


def _names(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(sorted(values)) or "(none)"


def _check(expect: Expect, d: Decision) -> Failure | None:
    """Compare one expectation with a decision; None when it holds."""
    kind, args = expect.kind, expect.args
    verdict = "allow" if d.allowed else f'deny "{d.message}" ({d.reason})'
    if kind == "allow":
        return None if d.allowed else Failure(expect, "allow", verdict)
    if kind == "deny":
        if d.allowed:
            return Failure(expect, f'deny "{args[0]}"' if args else "deny", "allow")
        if args and d.message != args[0]:
            return Failure(expect, f'deny "{args[0]}"', verdict)
        return None
    if kind == "reason":
        return None if d.reason == args[0] else Failure(expect, args[0], d.reason)
    if kind == "route":
        ok = d.routed and d.model == args[0]
        got = f'route "{d.model}"' if d.routed else f'no route (model "{d.model}")'
        return None if ok else Failure(expect, f'route "{args[0]}"', got)
    if kind == "model":
        return None if d.model == args[0] else Failure(expect, args[0], d.model)
    if kind == "quotas":
        got_quotas = [q.name for q in d.quotas]
        ok = set(got_quotas) == set(args)
        return None if ok else Failure(expect, _names(args), _names(got_quotas))
    if kind == "exceeded":
        got_exceeded = [q.name for q in d.quotas if q.exceeded]
        ok = set(got_exceeded) == set(args)
        return None if ok else Failure(expect, _names(args), _names(got_exceeded))
    if kind == "checks":
        ok = set(d.checks) == set(args)
        return None if ok else Failure(expect, _names(args), _names(list(d.checks)))
    if kind == "rules":
        ok = set(d.matched_rules) == set(args)
        return None if ok else Failure(expect, _names(args), _names(list(d.matched_rules)))
    if kind == "annotate":
        key, value = args
        got_value = d.annotations.get(key)
        ok = got_value == value
        shown = "(absent)" if got_value is None else f'"{got_value}"'
        return None if ok else Failure(expect, f'"{key}" = "{value}"', f'"{key}" = {shown}')
    return Failure(expect, f"a known expectation (not {kind!r})", kind)


def seed_entities(engine: Engine, request: Mapping[str, Any] | DecideRequest) -> DecideRequest:
    """Store the request's metadata as an admin would (``UpsertEntity``); return the request
    without it. Offline tools (``test``, ``explain PATH``) start from an empty store, so a
    request's metadata stands for what is stored, ``admin`` keys included."""
    req = DecideRequest.parse(request)
    for kind, ref in (("user", req.user), ("group", req.group)):
        if ref is not None and ref.metadata:
            engine.upsert_entity(kind, ref.id, ref.metadata)
    return replace(
        req,
        user=None if req.user is None else EntityRef(req.user.id),
        group=None if req.group is None else EntityRef(req.group.id),
    )


def run_case(ruleset: CompiledRuleset, case: TestCase) -> CaseResult:
    engine = Engine(ruleset, store="memory", clock=lambda: FROZEN_NOW)
    failures: list[Failure] = []
    try:
        for step in case.steps:
            decision = None
            request = seed_entities(engine, step.request)
            for _ in range(max(step.times, 1)):
                decision = engine.decide(request)
            assert decision is not None
            failures.extend(f for e in step.expects if (f := _check(e, decision)) is not None)
    except ValueError as exc:
        return CaseResult(case, tuple(failures), error=f"bad request: {exc}")
    finally:
        engine.close()
    return CaseResult(case, tuple(failures))


def run_tests(ruleset: CompiledRuleset) -> list[CaseResult]:
    """Run every test case of the ruleset, in source order."""
    return [run_case(ruleset, case) for case in ruleset.tests]
