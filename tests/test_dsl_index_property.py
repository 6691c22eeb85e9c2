"""Property: the indexed, compiled ruleset answers exactly as the reference interpreter.

Random rulesets over a few paths and a small alphabet of literals (null, bools, 1 and 1.0,
lists) meet random contexts (with or without user and group, metadata of mixed types);
the index plus closures must select the same rules, in the same order, as interpreting
every rule's syntax tree, and the tracer must agree on which rules matched.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.dsl.ast import (
    Action,
    Allow,
    And,
    Compare,
    Deny,
    Exists,
    Expr,
    Glob,
    In,
    ListLiteral,
    Literal,
    Not,
    Or,
    Path,
    Rule,
    RuleFile,
    RulesetAst,
    Scalar,
    Value,
)
from tollway.dsl.compiled import EvalContext
from tollway.dsl.compiler import compile_ruleset

PATHS = [Path(tuple(p.split("."))) for p in (
    "user.tier", "user.id", "user.categories", "user.n", "user.flag", "user.org.team",
    "group.id", "group.plan", "request.model", "request.region",
)]
SCALARS: list[Scalar] = [None, True, False, 0, 1, 1.0, 2.5, "a", "b", "free", "1", "vip"]

paths = st.sampled_from(PATHS)
scalars = st.sampled_from(SCALARS)
literals = scalars.map(Literal)
operands = st.one_of(paths, literals)
list_literals = st.lists(scalars, max_size=4).map(lambda xs: ListLiteral(tuple(xs)))
patterns = st.text(alphabet="ab*?/1", max_size=5)

equality = st.builds(lambda p, v, flip: Compare("==", v, p) if flip else Compare("==", p, v),
                     paths, literals, st.booleans())
atoms: st.SearchStrategy[Expr] = st.one_of(
    equality,
    equality,
    st.builds(Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), operands, operands),
    st.builds(In, paths, list_literals),
    st.builds(In, literals, paths),
    st.builds(In, operands, st.one_of(paths, list_literals)),
    st.builds(Glob, paths, patterns),
    st.builds(Exists, paths),
    literals,
)
conditions: st.SearchStrategy[Expr] = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: Or(tuple(xs))),
        inner.map(Not),
    ),
    max_leaves=8,
)


@st.composite
def rulesets(draw: st.DrawFn) -> RulesetAst:
    count = draw(st.integers(0, 12))
    rules = []
    for i in range(count):
        condition = draw(st.none() | conditions)
        choices: list[Action] = [Allow(), Deny(f"no {i}")]
        action = draw(st.sampled_from(choices))
        rules.append(Rule(f"r{i}", condition, (action,), priority=draw(st.sampled_from([0, 1, 5])),
                          shadow=draw(st.booleans()), order=i))
    return RulesetAst((RuleFile("prop.rules", rules=tuple(rules)),))


metadata_values: st.SearchStrategy[Value] = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(["team", "x"]), scalars, max_size=2),
)


def entity(keys: list[str]) -> st.SearchStrategy[dict[str, Value]]:
    return st.dictionaries(st.sampled_from(keys), metadata_values, max_size=len(keys))


contexts = st.builds(
    EvalContext,
    user_id=st.sampled_from([None, "a", "b", "u1"]),
    user=entity(["tier", "categories", "n", "flag", "org", "id"]),
    group_id=st.sampled_from([None, "a", "vip"]),
    group=entity(["plan", "id"]),
    request=st.dictionaries(st.sampled_from(["model", "region"]),
                            st.one_of(st.sampled_from(["a", "b", "ab", "a/b", "free", "1", ""]),
                                      metadata_values), max_size=2),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rulesets(), st.lists(contexts, min_size=1, max_size=4))
def test_index_and_closures_match_the_reference(ast: RulesetAst, ctxs: list[EvalContext]) -> None:
    rs = compile_ruleset(ast)
    for ctx in ctxs:
        got = rs.match(ctx)
        want = rs.match_reference(ctx)
        assert [r.name for r in got] == [r.name for r in want]
        assert all(a is b for a, b in zip(got, want, strict=True))
        candidates = rs.index.candidates(ctx)
        assert candidates == sorted(set(candidates))
        traces = rs.trace(ctx)
        assert [t.rule for t in traces if t.matched] == [r.name for r in want]
        assert all(t.candidate for t in traces if t.matched)
        for r in rs.rules:
            assert r.test(ctx) is rs.reference_test(r.rule, ctx)


@settings(max_examples=200, deadline=None)
@given(conditions, contexts)
def test_trace_agrees_with_evaluation(condition: Expr, ctx: EvalContext) -> None:
    rs = compile_ruleset(RulesetAst((RuleFile("one.rules", rules=(
        Rule("only", condition, (Allow(),)),)),)))
    (trace,) = rs.trace(ctx)
    assert trace.matched is rs.rules[0].test(ctx)
    assert all(t.text for t in trace.tests)
