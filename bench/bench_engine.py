"""In-process cost of one decision as the ruleset grows: indexed vs interpreted.

Rulesets of 10 … 10,000 rules test ``user.tier``, ``user.id`` and ``request.model`` by
equality (the shape the decision tree indexes), with and without quotas. For each size
the table shows µs per decision for ``CompiledRuleset.match`` (index + closures), for
``match_reference`` (every rule's syntax tree interpreted), and, when the engine is
importable, for ``Engine.decide`` with the in-memory store. Each figure is the median of
several runs of many iterations (``time.perf_counter_ns``); runs of the four sizes are
interleaved so background load cannot favour one size. The last lines give the ratio of
the 10,000-rule cost to the 10-rule cost.

    python bench/bench_engine.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from tollway.dsl.ast import (
    And,
    Compare,
    Deny,
    Enforce,
    Expr,
    Limit,
    Literal,
    Path,
    Quota,
    Route,
    Rule,
    RuleFile,
    RulesetAst,
    Scope,
    Window,
)
from tollway.dsl.compiled import CompiledRuleset, EvalContext
from tollway.dsl.compiler import compile_ruleset

SIZES = (10, 100, 1_000, 10_000)
RUNS = 7
RUN_SECONDS = 0.1  # target length of one run; iterations are calibrated to it

USER, TIER, MODEL = ("user", "id"), ("user", "tier"), ("request", "model")
QUOTAS = tuple(
    Quota(f"q{i}", "requests", Limit(value=1e12), Window(seconds=3600, text="1h"), Scope("user"))
    for i in range(4)
)


def _eq(parts: tuple[str, ...], value: str) -> Compare:
    return Compare("==", Path(parts), Literal(value))


def make_ruleset(size: int, quotas: bool) -> CompiledRuleset:
    """``size`` rules, three shapes in turn; the probe request matches the same few at any size.

    Shapes: ``user.id == "u<i>"``; ``user.tier == "t<i>" and request.model == "m<i % 50>"``;
    ``request.model == "model-<i>"``. Every rule enforces one of four quotas (when
    ``quotas``) or else routes to a model of its own.
    """
    rules = []
    for i in range(size):
        shape = i % 3
        cond: Expr
        if shape == 0:
            cond = _eq(USER, f"u{i}")
        elif shape == 1:
            cond = And((_eq(TIER, f"t{i}"), _eq(MODEL, f"m{i % 50}")))
        else:
            cond = _eq(MODEL, f"model-{i}")
        action = Enforce((f"q{i % 4}",)) if quotas else Route(f"routed-{i}")
        rules.append(Rule(f"r{i}", cond, (action,), priority=i % 7, order=i))
    # a high-priority deny that never matches the probe: realistic and keeps it allowed
    rules.append(Rule("blocked", _eq(("user", "status"), "suspended"), (Deny("blocked"),),
                      priority=100, order=size))
    file = RuleFile("bench.rules", quotas=QUOTAS if quotas else (), rules=tuple(rules),
                    source=f"{size}:{quotas}")
    return compile_ruleset(RulesetAst((file,)))


# the probe matches r0 (user.id), r1 (tier t1 + model m1) at every size
PROBE_CTX = EvalContext(user_id="u0", user={"tier": "t1"}, request={"model": "m1"})
PROBE_REQUEST: dict[str, Any] = {
    "user": {"id": "u0", "metadata": {"tier": "t1"}}, "model": "m1",
}


def _calibrate(fn: Callable[[], object]) -> int:
    """Iterations that make one run last about ``RUN_SECONDS``."""
    fn()
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed > RUN_SECONDS * 1e9 / 4 or n >= 1 << 20:
            break
        n *= 4
    return max(1, int(n * RUN_SECONDS * 1e9 / max(elapsed, 1)))


def timed(fns: list[Callable[[], object]]) -> list[float]:
    """Median µs per call of each function over ``RUNS`` runs.

    Runs are interleaved (one run of each function per round) so that the machine's
    background load drifts over all sizes alike and the ratios between them stay fair.
    """
    counts = [_calibrate(fn) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(RUNS):
        for fn, n, out in zip(fns, counts, samples, strict=True):
            start = time.perf_counter_ns()
            for _ in range(n):
                fn()
            out.append((time.perf_counter_ns() - start) / n / 1000)
    return [statistics.median(s) for s in samples]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def bench_match() -> None:
    print("## CompiledRuleset.match (index + closures) vs match_reference (interpreter)\n")
    print(_row(["rules", "quotas", "depth", "candidates", "match µs", "reference µs",
                "reference/match"]))
    print(_row(["---"] * 7))
    for quotas in (False, True):
        rulesets = [make_ruleset(size, quotas) for size in SIZES]
        for rs in rulesets:
            got = [r.name for r in rs.match(PROBE_CTX)]
            assert got == [r.name for r in rs.match_reference(PROBE_CTX)]
            assert sorted(got) == ["r0", "r1"], got
        fast = timed([partial(rs.match, PROBE_CTX) for rs in rulesets])
        slow = timed([partial(rs.match_reference, PROBE_CTX) for rs in rulesets])
        for size, rs, f, s in zip(SIZES, rulesets, fast, slow, strict=True):
            depth = getattr(rs.index, "depth", lambda: 0)()
            print(_row([f"{size:,}", "yes" if quotas else "no", str(depth),
                        str(len(rs.index.candidates(PROBE_CTX))), f"{f:.2f}",
                        f"{s:,.1f}", f"{s / f:,.0f}x"]))
        RATIOS.append((f"match, {SIZES[-1]:,} / {SIZES[0]:,} rules, "
                       f"{'with' if quotas else 'no'} quotas", fast[-1] / fast[0]))


def bench_engine() -> None:
    try:
        from tollway import Engine
    except ImportError as exc:  # the engine is optional for this script
        print(f"\n## Engine.decide: skipped ({exc})")
        return
    print("\n## Engine.decide, in-memory store\n")
    print(_row(["rules", "quotas", "decide µs", "matched", "quotas consumed"]))
    print(_row(["---"] * 5))
    for quotas in (False, True):
        engines = [Engine(make_ruleset(size, quotas), store="memory") for size in SIZES]
        try:
            decisions = [e.decide(PROBE_REQUEST) for e in engines]
            assert all(d.allowed for d in decisions), decisions
            costs = timed([partial(e.decide, PROBE_REQUEST) for e in engines])
        finally:
            for e in engines:
                e.close()
        for size, d, cost in zip(SIZES, decisions, costs, strict=True):
            print(_row([f"{size:,}", "yes" if quotas else "no", f"{cost:.1f}",
                        ", ".join(d.matched_rules), str(len(d.quotas))]))
        RATIOS.append((f"Engine.decide, {SIZES[-1]:,} / {SIZES[0]:,} rules, "
                       f"{'with' if quotas else 'no'} quotas", costs[-1] / costs[0]))


RATIOS: list[tuple[str, float]] = []


def main() -> None:
    global RUNS, RUN_SECONDS
    if "--quick" in sys.argv[1:]:
        RUNS, RUN_SECONDS = 3, 0.01
    started = time.perf_counter()
    print(f"python {sys.version.split()[0]}, median of {RUNS} runs, µs per decision\n")
    bench_match()
    bench_engine()
    print("\n## Growth (target <= 1.5 for equality-indexed rules)\n")
    for label, ratio in RATIOS:
        print(f"- {label}: {ratio:.2f}")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
