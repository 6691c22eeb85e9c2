"""The compiler: closures agree with the reference interpreter, fields are filled as
specified, and the decision tree selects exactly the rules that can match."""

from __future__ import annotations

import importlib

import pytest

from tollway.dsl import reference, render
from tollway.dsl.ast import (
    Allow,
    And,
    Annotate,
    Check,
    Compare,
    Default,
    Deny,
    Enforce,
    Exists,
    Expect,
    Expr,
    Glob,
    In,
    InlineLimit,
    Limit,
    ListLiteral,
    Literal,
    Not,
    Or,
    Path,
    Quota,
    Route,
    Rule,
    RuleFile,
    RulesetAst,
    Scalar,
    Scope,
    TestCase,
    Value,
    Window,
)
from tollway.dsl.ast import TestStep as _Step
from tollway.dsl.compiled import CompiledRuleset, EvalContext
from tollway.dsl.compiler import PASSES, compile_condition, compile_ruleset
from tollway.dsl.diagnostics import Diagnostic
from tollway.dsl.index import MAX_CLAUSES, DecisionTree, clauses_of


def P(text: str) -> Path:
    return Path(tuple(text.split(".")))


def L(value: Scalar) -> Literal:
    return Literal(value)


def eq(path: str, value: Scalar) -> Compare:
    return Compare("==", P(path), L(value))


def ruleset(*rules: Rule) -> CompiledRuleset:
    numbered = tuple(
        Rule(r.name, r.condition, r.actions, r.priority, r.shadow, order=i)
        for i, r in enumerate(rules)
    )
    return compile_ruleset(RulesetAst((RuleFile("main.rules", rules=numbered),)))


def names(rs: CompiledRuleset, ctx: EvalContext) -> list[str]:
    got = [r.name for r in rs.match(ctx)]
    assert got == [r.name for r in rs.match_reference(ctx)]
    return got


FREE = EvalContext(
    user_id="u1",
    user={"tier": "free", "categories": ["vip", 1, True], "risky": True, "credits": 10,
          "score": 2.5, "nested": {"k": "v"}},
    group_id="acme", group={"plan": "team"},
    request={"model": "openai/gpt-5", "endpoint": "/v1/chat"},
)
ANON = EvalContext(request={"model": "openai/gpt-5"})


# ------------------------------------------------------- conditions, both ways

CASES: list[tuple[Expr, EvalContext, bool]] = [
    (eq("user.tier", "free"), FREE, True),
    (Compare("==", L("free"), P("user.tier")), FREE, True),
    (eq("user.tier", "pro"), FREE, False),
    (eq("user.tier", None), FREE, False),
    (eq("user.missing", None), FREE, True),
    (eq("user.tier", None), ANON, True),
    (Compare("!=", P("user.missing"), L(None)), FREE, False),
    (Compare("!=", P("user.tier"), L("pro")), FREE, True),
    (eq("user.risky", True), FREE, True),
    (eq("user.risky", 1), FREE, False),
    (eq("user.credits", 10.0), FREE, True),
    (eq("user.credits", True), FREE, False),
    (eq("user.credits", "10"), FREE, False),
    (eq("user.id", "u1"), FREE, True),
    (eq("user.id", "u1"), ANON, False),
    (eq("group.id", "acme"), FREE, True),
    (eq("user.nested.k", "v"), FREE, True),
    (eq("user.categories", "vip"), FREE, False),
    (Compare("==", P("user.tier"), P("user.tier")), FREE, True),
    (Compare("==", P("user.missing"), P("group.missing")), FREE, True),
    (Compare("==", P("user.risky"), P("user.credits")), FREE, False),
    (Compare("==", L(1), L(1.0)), ANON, True),
    (Compare("==", L(True), L(1)), ANON, False),
    (Compare("!=", L(True), L(1)), ANON, True),
    (Compare(">", P("user.credits"), L(5)), FREE, True),
    (Compare(">=", P("user.credits"), L(10.0)), FREE, True),
    (Compare("<", P("user.score"), L(2)), FREE, False),
    (Compare("<=", L(2), P("user.score")), FREE, True),
    (Compare("<", P("user.tier"), L("g")), FREE, True),
    (Compare("<", P("user.tier"), L(1)), FREE, False),
    (Compare("<", P("user.missing"), L(1)), FREE, False),
    (Compare(">", P("user.risky"), L(0)), FREE, False),
    (Compare(">=", P("user.missing"), P("user.missing")), FREE, False),
    (In(P("user.tier"), ListLiteral(("free", "pro"))), FREE, True),
    (In(P("user.tier"), ListLiteral(("pro",))), FREE, False),
    (In(P("user.credits"), ListLiteral((1, 10.0))), FREE, True),
    (In(P("user.risky"), ListLiteral((1,))), FREE, False),
    (In(P("user.risky"), ListLiteral((True,))), FREE, True),
    (In(P("user.missing"), ListLiteral((None, "a"))), FREE, False),
    (In(P("user.tier"), ListLiteral(())), FREE, False),
    (In(L("vip"), P("user.categories")), FREE, True),
    (In(L(1.0), P("user.categories")), FREE, True),
    (In(L(True), P("user.categories")), FREE, True),
    (In(L(False), P("user.categories")), FREE, False),
    (In(L("x"), P("user.categories")), FREE, False),
    (In(L("f"), P("user.tier")), FREE, False),  # a string is not a list
    (In(L("vip"), P("user.missing")), FREE, False),
    (In(L(None), P("user.categories")), FREE, False),
    (In(L("vip"), P("user.categories")), ANON, False),
    (In(L("a"), ListLiteral(("a", "b"))), ANON, True),
    (In(P("user.tier"), P("user.categories")), FREE, False),
    (Glob(P("request.model"), "openai/*"), FREE, True),
    (Glob(P("request.model"), "anthropic/*"), FREE, False),
    (Glob(P("request.model"), "*gpt-?"), FREE, True),
    (Glob(P("request.model"), "openai/gpt-5"), FREE, True),
    (Glob(P("user.credits"), "*"), FREE, False),
    (Glob(P("user.missing"), "*"), FREE, False),
    (Exists(P("user.tier")), FREE, True),
    (Exists(P("user.missing")), FREE, False),
    (Exists(P("user.tier")), ANON, False),
    (Exists(P("request.model")), ANON, True),
    (Not(eq("user.tier", "free")), FREE, False),
    (Not(Exists(P("user.missing"))), FREE, True),
    (And((eq("user.tier", "free"), Exists(P("request.model")))), FREE, True),
    (And((eq("user.tier", "free"), eq("user.tier", "pro"))), FREE, False),
    (And((eq("user.tier", "free"), eq("user.id", "u1"), Exists(P("group.id")))), FREE, True),
    (Or((eq("user.tier", "pro"), In(L("vip"), P("user.categories")))), FREE, True),
    (Or((eq("user.tier", "pro"), eq("user.tier", "team"))), FREE, False),
    (Or((eq("user.tier", "pro"), eq("user.tier", "team"), eq("user.tier", "free"))), FREE, True),
    (Literal(True), ANON, True),
    (Literal(False), ANON, False),
    (Literal(1), ANON, False),
    (Literal("true"), ANON, False),
    (Literal(None), ANON, False),
    (Not(Literal(None)), ANON, True),
]


@pytest.mark.parametrize(("expr", "ctx", "expected"), CASES)
def test_compiled_closure_and_reference_agree(expr: Expr, ctx: EvalContext, expected: bool) -> None:
    assert reference.evaluate(expr, ctx) is expected
    assert compile_condition(expr)(ctx) is expected


@pytest.mark.parametrize(("expr", "ctx", "expected"), CASES)
def test_index_never_drops_a_matching_rule(expr: Expr, ctx: EvalContext, expected: bool) -> None:
    rs = ruleset(Rule("r", expr, (Allow(),)))
    assert (0 in rs.index.candidates(ctx)) or not expected
    assert names(rs, ctx) == (["r"] if expected else [])


def test_short_circuit_skips_the_rest() -> None:
    calls: list[str] = []

    class Spy(dict[str, Value]):
        def get(self, key: str, default: Value = None) -> Value:  # type: ignore[override]
            calls.append(key)
            return super().get(key, default)

    ctx = EvalContext(user_id="u", user=Spy(tier="free"))
    expr = Or((eq("user.tier", "free"), eq("user.other", "x")))
    assert compile_condition(expr)(ctx) is True
    assert reference.evaluate(expr, ctx) is True
    assert "other" not in calls


# --------------------------------------------------------------- fields

HOURLY = Quota("hourly", "requests", Limit(value=100), Window(seconds=3600, text="1h"),
               Scope("user"))
DAILY = Quota("daily", "tokens", Limit(value=1000), Window(calendar="day", text="day"),
              Scope("group"))
INLINE = Quota("busy.limit1", "requests", Limit(value=5), Window(seconds=60, text="1m"),
               Scope("everyone"))
TEST = TestCase("t", (_Step({"model": "m"}, 1, (Expect("allow"),)),))


def test_compiled_fields() -> None:
    rules = (
        Rule("low", eq("user.tier", "free"), (Enforce(("hourly",)),), order=0),
        Rule("busy", None, (
            Check(("pii",)), Enforce(("daily", "hourly")), InlineLimit(INLINE),
            Route("cheap", eq("request.model", "big")), Route("fallback"),
            Annotate("a", "1"), Deny("first"), Allow(), Deny("second"), Check(("mod", "pii")),
            Annotate("b", "2"),
        ), priority=10, order=1),
        Rule("tie", None, (Allow(),), priority=10, order=2, shadow=True),
    )
    warning = Diagnostic("main.rules", 3, 1, "never matches", "warning")
    ast = RulesetAst((RuleFile("main.rules", Default("deny", "no"), (), (HOURLY, DAILY), rules,
                               (TEST,), source="src"),))
    rs = compile_ruleset(ast, [warning])
    assert [r.name for r in rs.rules] == ["busy", "tie", "low"]
    busy, tie, low = rs.rules
    assert busy.deny == "first" and busy.allow is True
    assert busy.quotas == ("daily", "hourly", "busy.limit1")
    assert busy.checks == ("pii", "mod", "pii")
    assert busy.annotations == (("a", "1"), ("b", "2"))
    assert [r.model for r in busy.routes] == ["cheap", "fallback"]
    cheap_if = busy.routes[0].test
    assert cheap_if is not None and busy.routes[1].test is None
    assert cheap_if(EvalContext(request={"model": "big"})) is True
    assert cheap_if(EvalContext(request={"model": "small"})) is False
    assert busy.test(ANON) is True
    assert tie.shadow is True and tie.priority == 10 and tie.deny is None
    assert low.quotas == ("hourly",) and low.allow is False and low.routes == ()
    assert low.test(FREE) is True and low.test(ANON) is False
    assert dict(rs.quotas) == {"hourly": HOURLY, "daily": DAILY, "busy.limit1": INLINE}
    assert rs.default == Default("deny", "no")
    assert rs.paths == ("main.rules",)
    assert rs.tests == (TEST,)
    assert rs.warnings == (warning,)
    assert rs.schemas == ()
    assert len(rs.version) == 12 and int(rs.version, 16) >= 0
    assert rs.reference_test(low.rule, FREE) is True
    assert rs.reference_test(busy.rule, ANON) is True
    matched, tests = rs.tracer(low.rule, FREE)
    assert matched is True and tests[0].text == 'user.tier == "free"'


def test_default_is_allow_and_files_merge_in_order() -> None:
    a = RuleFile("a.rules", rules=(Rule("one", None, (Allow(),), order=0),), quotas=(HOURLY,),
                 source="a")
    b = RuleFile("b.rules", rules=(Rule("two", None, (Allow(),), order=1),), quotas=(DAILY,),
                 tests=(TEST,), source="b")
    rs = compile_ruleset(RulesetAst((a, b)))
    assert rs.default == Default("allow")
    assert rs.paths == ("a.rules", "b.rules")
    assert [r.name for r in rs.rules] == ["one", "two"]
    assert list(rs.quotas) == ["hourly", "daily"]
    assert rs.tests == (TEST,)


def test_version_depends_on_paths_and_text_only() -> None:
    def version(*files: tuple[str, str]) -> str:
        ast = RulesetAst(tuple(RuleFile(p, source=s) for p, s in files))
        return compile_ruleset(ast).version

    base = version(("a.rules", "x"), ("b.rules", "y"))
    assert base == version(("a.rules", "x"), ("b.rules", "y"))
    assert base != version(("a.rules", "x"), ("b.rules", "z"))
    assert base != version(("a.rules", "x"), ("c.rules", "y"))
    # moving text across the boundary between path and source changes the version
    assert version(("ab", "c")) != version(("a", "bc"))


def test_passes_are_named_and_end_with_the_index() -> None:
    assert [name for name, _ in PASSES][-1] == "build_index"
    assert len({name for name, _ in PASSES}) == len(PASSES)


def test_empty_ruleset() -> None:
    rs = compile_ruleset(RulesetAst(()))
    assert rs.rules == () and rs.match(ANON) == [] and rs.index.candidates(ANON) == []
    assert rs.default == Default("allow")
    assert "0 rules" in rs.index.describe()


# ---------------------------------------------------------------- the tree


def _tree(*conditions: Expr | None) -> DecisionTree:
    return DecisionTree(conditions, [f"r{i}" for i in range(len(conditions))])


def test_equality_rules_are_selected_only_when_they_can_match() -> None:
    tree = _tree(eq("user.tier", "free"), eq("user.tier", "pro"), eq("request.model", "m"),
                 None, Not(eq("user.tier", "free")))
    assert tree.candidates(FREE) == [0, 3, 4]
    assert tree.candidates(EvalContext(user_id="u", user={"tier": "pro"},
                                       request={"model": "m"})) == [1, 2, 3, 4]
    assert tree.candidates(ANON) == [3, 4]


def test_equality_keys_keep_bools_numbers_and_null_apart() -> None:
    tree = _tree(eq("user.x", True), eq("user.x", 1), eq("user.x", 1.0), eq("user.x", None),
                 eq("user.x", "1"))

    def cands(value: Value) -> list[int]:
        return tree.candidates(EvalContext(user_id="u", user={"x": value}))

    assert cands(True) == [0]
    assert cands(1) == [1, 2]
    assert cands(1.0) == [1, 2]
    assert cands(None) == [3]
    assert cands("1") == [4]
    assert cands([1]) == []
    assert cands({"a": 1}) == []
    assert tree.candidates(ANON) == [3]  # no user: user.x is null


def test_list_membership_branches_once_per_element() -> None:
    tree = _tree(In(P("request.model"), ListLiteral(("a", "b", None))),
                 In(P("request.model"), ListLiteral(("b", "c"))),
                 In(P("request.model"), ListLiteral(())))
    assert tree.candidates(EvalContext(request={"model": "b"})) == [0, 1]
    assert tree.candidates(EvalContext(request={"model": "a"})) == [0]
    assert tree.candidates(EvalContext(request={})) == []


def test_literal_in_path_looks_up_each_element() -> None:
    tree = _tree(In(L("vip"), P("user.categories")), In(L(1), P("user.categories")),
                 In(L(None), P("user.categories")), eq("user.categories", "vip"))
    ctx = EvalContext(user_id="u", user={"categories": ["vip", 1.0, None, "vip", {"a": [1]}]})
    assert tree.candidates(ctx) == [0, 1]
    assert tree.candidates(EvalContext(user_id="u", user={"categories": "vip"})) == [3]
    assert tree.candidates(EvalContext(user_id="u", user={"categories": [True]})) == []


def test_or_registers_each_clause_and_and_intersects() -> None:
    tree = _tree(
        Or((eq("user.tier", "free"), eq("request.model", "m"))),
        And((In(P("user.tier"), ListLiteral(("free", "pro"))), eq("user.tier", "pro"))),
        And((eq("user.tier", "free"), eq("user.tier", "pro"))),  # contradiction: never
        And((Or((eq("user.tier", "free"), eq("user.tier", "pro"))),
             Or((eq("request.model", "m"), eq("request.model", "n"))))),
    )
    pro_m = EvalContext(user_id="u", user={"tier": "pro"}, request={"model": "m"})
    assert tree.candidates(pro_m) == [0, 1, 3]
    assert tree.candidates(FREE) == [0]
    assert tree.candidates(EvalContext(request={"model": "m"})) == [0]
    assert "1 that can never match" in tree.describe()


def test_prefix_and_exists_are_indexed() -> None:
    tree = _tree(Glob(P("request.model"), "openai/*"), Glob(P("request.model"), "*gpt"),
                 Exists(P("user.tier")), Glob(P("request.model"), "anthropic/??"))
    assert tree.candidates(FREE) == [0, 1, 2]
    assert tree.candidates(EvalContext(request={"model": "anthropic/x1"})) == [1, 3]
    assert tree.candidates(EvalContext(request={"model": 5})) == [1]
    assert clauses_of(Glob(P("request.model"), "*gpt")) == [{}]


def test_unindexable_conditions_are_always_candidates() -> None:
    wide = Or(tuple(eq("user.tier", f"t{i}") for i in range(MAX_CLAUSES + 1)))
    tree = _tree(
        Compare("<", P("user.credits"), L(5)),
        Not(eq("user.tier", "free")),
        Compare("==", P("user.tier"), P("group.tier")),
        Compare("!=", P("user.tier"), L("x")),
        wide,
        Or((eq("user.tier", "zzz"), Exists(P("user.nothing")), Literal(True))),
        eq("user.tier", "zzz"),
    )
    assert tree.candidates(FREE) == [0, 1, 2, 3, 4, 5]
    assert tree.candidates(ANON) == [0, 1, 2, 3, 4, 5]
    assert "6 always candidates (6 with unindexable conditions)" in tree.describe()


def test_large_products_keep_only_what_fits() -> None:
    """An `and` of wide `or`s keeps indexing the parts whose product stays small."""
    many = Or(tuple(eq("request.model", f"m{i}") for i in range(MAX_CLAUSES)))
    cond = And((eq("user.tier", "free"), many, Or((eq("group.id", "a"), eq("group.id", "b")))))
    constraints = clauses_of(cond)
    assert len(constraints) == MAX_CLAUSES
    tree = _tree(cond)
    assert tree.candidates(EvalContext(user_id="u", user={"tier": "pro"})) == []
    assert tree.candidates(EvalContext(user_id="u", user={"tier": "free"},
                                       request={"model": "m3"})) == [0]


def test_constant_conditions_are_folded() -> None:
    tree = _tree(Literal(False), Compare("==", L(1), L(True)), Literal(True),
                 And((Literal(False), eq("user.tier", "free"))),
                 In(L("a"), ListLiteral(("a",))))
    assert tree.candidates(FREE) == [2, 4]


def test_describe_reads_like_a_tree() -> None:
    rs = ruleset(
        Rule("free", eq("user.tier", "free"), (Allow(),)),
        Rule("pro", eq("user.tier", "pro"), (Allow(),)),
        Rule("vip", In(L("vip"), P("user.categories")), (Allow(),)),
        Rule("all", None, (Allow(),)),
    )
    text = rs.index.describe()
    assert text.splitlines()[0].startswith("decision tree over 4 rules: 1 always candidates")
    assert "switch user.tier ==" in text
    assert 'case "free":' in text and "free#0" in text
    assert "switch … in user.categories" in text
    assert "rules: all#3" in text


def test_candidates_keep_priority_order_and_trace_marks_them() -> None:
    rs = ruleset(
        Rule("low", Or((eq("user.tier", "free"), In(L("vip"), P("user.categories")))),
             (Allow(),), priority=1),
        Rule("high", eq("user.tier", "free"), (Deny("no"),), priority=9),
        Rule("other", eq("user.tier", "pro"), (Allow(),), priority=5),
    )
    assert rs.index.candidates(FREE) == [0, 2]
    assert names(rs, FREE) == ["high", "low"]
    traces = {t.rule: t for t in rs.trace(FREE)}
    assert traces["other"].candidate is False and traces["other"].matched is False
    assert traces["high"].candidate and traces["high"].matched


# ---------------------------------------------------------------- tracing


def test_trace_lists_each_test_as_written_with_values() -> None:
    rule = Rule("r", And((
        eq("user.tier", "free"),
        Not(Glob(P("request.model"), "azure-eu/*")),
        Or((Compare(">", P("user.credits"), L(100)), In(L("vip"), P("user.categories")))),
        Not(And((Exists(P("user.x")), eq("group.id", "x")))),
        In(P("request.model"), ListLiteral(("openai/gpt-5", 1.5, None, True))),
    )), (Allow(),))
    matched, tests = reference.trace_rule(rule, FREE)
    assert matched is True
    assert [t.text for t in tests] == [
        'user.tier == "free"',
        'not request.model ~ "azure-eu/*"',
        "user.credits > 100",
        '"vip" in user.categories',
        "user.x exists",
        'request.model in ["openai/gpt-5", 1.5, null, true]',
    ]
    assert [t.held for t in tests] == [True, True, False, True, False, True]
    assert tests[0].values == (("user.tier", "free"),)
    assert tests[3].values == (("user.categories", ["vip", 1, True]),)
    assert tests[4].values == (("user.x", None),)


def test_trace_stops_where_evaluation_stops() -> None:
    rule = Rule("r", And((eq("user.tier", "pro"), eq("user.id", "u1"))), (Allow(),))
    matched, tests = reference.trace_rule(rule, FREE)
    assert matched is False and [t.text for t in tests] == ['user.tier == "pro"']
    assert reference.trace_rule(Rule("n", None, ()), FREE) == (True, ())
    assert reference.trace_rule(Rule("l", Literal(False), ()), FREE) == (
        False, (reference.TestTrace("false", False, ()),))


def test_expr_text_parenthesises_nested_groups() -> None:
    expr = And((Or((eq("user.a", 1), eq("user.b", 2.5))), Not(Or((Exists(P("user.c")),
                                                                    Literal(None))))))
    assert render.expr_text(expr) == "(user.a == 1 or user.b == 2.5) and not (user.c exists or null)"
    assert render.expr_text(Compare("!=", L("a\"b"), P("group.id"))) == '"a\\"b" != group.id'


# ------------------------------------------------------- through the parser

GATEWAY = """
default allow
quota free_hourly   limits requests to 100 per 1h for each user
quota model_rpm     limits requests to 60 per 1m for each user and model

rule suspended priority 1000 {
    when user.status == "suspended"
    deny "account suspended"
}
rule free_tier {
    when user.tier == "free"
    enforce free_hourly
    route "openai/gpt-4.1-mini" if request.model in ["openai/gpt-4.1", "openai/gpt-5"]
}
rule risky_users priority 100 {
    when user.risky == true or "risky" in user.categories
    check "output-moderation", "pii-scan"
}
rule vip {
    when "vip" in user.categories
    route "anthropic/claude-sonnet-4.6" if request.model ~ "openai/*"
    annotate "priority" = "high"
}
rule eu_residency {
    when user.region == "eu" and not request.model ~ "azure-eu/*"
    route "azure-eu/gpt-4.1"
}
rule everyone {
    enforce model_rpm
}
"""


def _parsed(text: str) -> CompiledRuleset:
    try:
        parser = importlib.import_module("tollway.dsl.parser")
    except ImportError:
        pytest.skip("parser not available")
    return compile_ruleset(RulesetAst((parser.parse_text(text, "gateway.rules"),)))


def test_through_the_parser() -> None:
    rs = _parsed(GATEWAY)
    assert [r.name for r in rs.rules] == [
        "suspended", "risky_users", "free_tier", "vip", "eu_residency", "everyone"]
    ctx = EvalContext(user_id="u", user={"tier": "free", "categories": ["vip"], "region": "eu"},
                      request={"model": "openai/gpt-5"})
    assert names(rs, ctx) == ["free_tier", "vip", "eu_residency", "everyone"]
    free = rs.rules[2]
    assert free.quotas == ("free_hourly",) and free.routes[0].test is not None
    assert free.routes[0].test(ctx) is True
    assert names(rs, EvalContext(user_id="u", user={"status": "suspended", "risky": True},
                                 request={"model": "azure-eu/x"})) == [
        "suspended", "risky_users", "everyone"]
    assert names(rs, ANON) == ["everyone"]
    text = rs.index.describe()
    assert "switch user.tier ==" in text and "rules: everyone#5" in text
    assert set(rs.quotas) == {"free_hourly", "model_rpm"}


def test_thousands_of_distinct_paths_build_and_look_up() -> None:
    """Each distinct path adds a switch to the `otherwise` chain: no recursion limit hit."""
    count = 3000
    tree = _tree(*(eq(f"user.k{i}", i) for i in range(count)))
    assert tree.depth() == count
    ctx = EvalContext(user_id="u", user={"k7": 7, "k2999": 2999.0, "k5": "5"})
    assert tree.candidates(ctx) == [7, 2999]
    lines = tree.describe().splitlines()
    assert lines[1] == "switch user.k0 ==" and lines[4] == "otherwise switch user.k1 =="
