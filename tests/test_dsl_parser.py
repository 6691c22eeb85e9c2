"""The parser: rule text to the typed syntax tree, and syntax errors in plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway.dsl import ast
from tollway.dsl.ast import (
    And,
    Compare,
    Enforce,
    Exists,
    Glob,
    In,
    InlineLimit,
    ListLiteral,
    Literal,
    Not,
    Or,
)
from tollway.dsl.diagnostics import RulesError
from tollway.dsl.grammar import lark_parser
from tollway.dsl.nowhere import strip_positions
from tollway.dsl.parser import parse_path, parse_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"


def cond(text: str) -> ast.Expr:
    """The condition of a one-rule file, positions erased."""
    rf = parse_text(f"rule r {{ when {text} allow }}", "t.rules")
    assert rf.rules[0].condition is not None
    return strip_positions(rf.rules[0].condition)


def P(*parts: str) -> ast.Path:
    return ast.Path(parts)


def L(value: ast.Scalar) -> Literal:
    return Literal(value)


def errors_of(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(RulesError) as info:
        parse_text(text, "bad.rules")
    return [(d.line, d.column, d.message) for d in info.value.errors]


# ------------------------------------------------------------------ happy paths


def test_the_example_file_parses_with_every_construct() -> None:
    rf = parse_text(EXAMPLE.read_text(), str(EXAMPLE))
    assert rf.default is not None and rf.default.effect == "allow"
    assert {s.entity for s in rf.schemas} == {"user", "group", "request"}
    assert {q.metric for q in rf.quotas} == set(ast.METRICS)
    scopes = {q.scope.name for q in rf.quotas}
    assert {"user", "group+model", "user_in_group", "user_in_group+model", "everyone"} <= scopes
    assert {q.window.calendar for q in rf.quotas} >= {"day", "week", "month"}
    kinds = {e.kind for t in rf.tests for s in t.steps for e in s.expects}
    assert kinds == {
        "allow",
        "deny",
        "reason",
        "route",
        "model",
        "quotas",
        "checks",
        "rules",
        "annotate",
        "exceeded",
    }
    assert [r.order for r in rf.rules] == list(range(len(rf.rules)))


def test_quota_forms() -> None:
    rf = parse_text(
        """
        quota a limits requests to 100 per 1h for each user
        quota b limits tokens to 200_000 per 1d for each user and model
        quota c limits cost to group.monthly_credits per month for each group
        quota d limits cost to 10% of group.monthly_credits per month for each user in group
        quota e limits cost to 12.5% of group.credits or 1_000.25 per week for everyone
        quota f limits input_tokens to user.quota or 500 per 30s for everyone and model
            on_store_error deny
        quota g limits output_tokens to 0.5 per 7d for each user in group and model
            on_store_error allow
        """,
        "q.rules",
    )
    q = {x.name: strip_positions(x) for x in rf.quotas}
    assert q["a"].limit == ast.Limit(value=100) and isinstance(q["a"].limit.value, int)
    assert q["a"].window == ast.Window(seconds=3600, text="1h")
    assert q["b"].limit.value == 200_000
    assert q["b"].scope == ast.Scope("user", per_model=True)
    assert q["c"].limit == ast.Limit(path=P("group", "monthly_credits"))
    assert q["c"].window == ast.Window(calendar="month", text="month")
    assert q["d"].limit == ast.Limit(percent=10, path=P("group", "monthly_credits"))
    assert q["d"].scope.name == "user_in_group"
    assert q["e"].limit == ast.Limit(percent=12.5, path=P("group", "credits"), fallback=1000.25)
    assert q["e"].scope.name == "everyone"
    assert q["f"].scope.name == "everyone+model" and q["f"].on_store_error == "deny"
    assert q["f"].window.seconds == 30
    assert q["g"].limit.value == 0.5 and isinstance(q["g"].limit.value, float)
    assert q["g"].window.seconds == 7 * 86400 and q["g"].on_store_error == "allow"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("7d", 604800), ("2w", 1209600)],
)
def test_sliding_windows(text: str, seconds: int) -> None:
    rf = parse_text(f"quota q limits requests to 1 per {text} for each user", "w.rules")
    assert rf.quotas[0].window.seconds == seconds
    assert rf.quotas[0].window.text == text


def test_rule_modifiers_in_either_order_and_negative_priority() -> None:
    rf = parse_text(
        "rule a priority -5 shadow { allow }\nrule b shadow priority 7 { allow }\nrule c { }",
        "m.rules",
    )
    a, b, c = rf.rules
    assert (a.priority, a.shadow, b.priority, b.shadow) == (-5, True, 7, True)
    assert (c.priority, c.shadow, c.condition, c.actions) == (0, False, None, ())


def test_actions() -> None:
    rf = parse_text(
        """rule r {
            when user.tier == "free"
            deny "no"
            allow
            enforce q1, q2
            limit requests to 5 per 1m for each user
            check "a", "b"
            route "m1"
            route "m2" if request.model ~ "openai/*"
            annotate "k" = "v"
            limit cost to 1 per day for everyone on_store_error deny
        }""",
        "a.rules",
    )
    actions = strip_positions(rf.rules[0].actions)
    assert actions[0] == ast.Deny("no")
    assert actions[1] == ast.Allow()
    assert isinstance(actions[2], Enforce) and actions[2].names == ("q1", "q2")
    assert isinstance(actions[3], InlineLimit) and actions[3].quota.name == "r.limit1"
    assert actions[4] == ast.Check(("a", "b"))
    assert actions[5] == ast.Route("m1")
    assert actions[6] == ast.Route("m2", Glob(P("request", "model"), "openai/*"))
    assert actions[7] == ast.Annotate("k", "v")
    assert isinstance(actions[8], InlineLimit) and actions[8].quota.name == "r.limit2"
    assert actions[8].quota.on_store_error == "deny"


def test_enforce_keeps_the_position_of_each_name() -> None:
    rf = parse_text("rule r {\n  enforce aa,   bb\n}", "e.rules")
    enforce = rf.rules[0].actions[0]
    assert isinstance(enforce, Enforce)
    assert [(p.line, p.column) for p in enforce.name_pos] == [(2, 11), (2, 17)]


def test_positions_point_at_the_source() -> None:
    rf = parse_text("\n\n  rule r {\n    when user.x == 1\n  }", "p.rules")
    rule = rf.rules[0]
    assert (rule.pos.file, rule.pos.line, rule.pos.column) == ("p.rules", 3, 3)
    assert rule.condition is not None and (rule.condition.pos.line, rule.condition.pos.column) == (
        4,
        10,
    )


# ------------------------------------------------------------------- conditions


def test_precedence_not_over_and_over_or() -> None:
    got = cond('user.a == 1 or user.b == 2 and not user.c == "x"')
    assert got == Or(
        (
            Compare("==", P("user", "a"), L(1)),
            And(
                (
                    Compare("==", P("user", "b"), L(2)),
                    Not(Compare("==", P("user", "c"), L("x"))),
                )
            ),
        )
    )


def test_chains_are_flat_but_parentheses_are_kept() -> None:
    flat = cond("user.a == 1 and user.b == 2 and user.c == 3")
    assert isinstance(flat, And) and len(flat.items) == 3
    grouped = cond("(user.a == 1 and user.b == 2) and user.c == 3")
    assert isinstance(grouped, And) and isinstance(grouped.items[0], And)
    either = cond("user.a == 1 or user.b == 2 or user.c == 3")
    assert isinstance(either, Or) and len(either.items) == 3


def test_operators_and_literals() -> None:
    assert cond("user.n >= 1_000.5") == Compare(">=", P("user", "n"), L(1000.5))
    assert cond("user.n < -3") == Compare("<", P("user", "n"), L(-3))
    assert cond("user.n != null") == Compare("!=", P("user", "n"), L(None))
    assert cond("user.b == false") == Compare("==", P("user", "b"), L(False))
    assert cond('request.model in ["a", 1, true, null]') == In(
        P("request", "model"), ListLiteral(("a", 1, True, None))
    )
    assert cond('"vip" in user.categories') == In(L("vip"), P("user", "categories"))
    assert cond("user.tier exists") == Exists(P("user", "tier"))
    assert cond('request.model ~ "openai/*"') == Glob(P("request", "model"), "openai/*")
    assert cond("true") == L(True)
    assert cond("not false") == Not(L(False))
    assert cond("group.id == user.id") == Compare("==", P("group", "id"), P("user", "id"))


def test_keys_may_be_keywords_or_quoted() -> None:
    assert cond("user.in == 1") == Compare("==", P("user", "in"), L(1))
    assert cond("user.limits.rule == 1") == Compare("==", P("user", "limits", "rule"), L(1))
    assert cond('user."x y".z == 1') == Compare("==", P("user", "x y", "z"), L(1))
    assert cond("user.x-y == 1") == Compare("==", P("user", "x-y"), L(1))


def test_string_escapes() -> None:
    rf = parse_text(r'rule r { deny "a\"b\\c\nd\te\u00e9\ud83d\ude00/" }', "s.rules")
    assert rf.rules[0].actions[0] == ast.Deny(
        'a"b\\c\nd\te\u00e9\U0001f600/', rf.rules[0].actions[0].pos
    )


# ------------------------------------------------------------------------ tests


def test_test_blocks() -> None:
    rf = parse_text(
        """test "quota" {
            request { user: {id: "u1", metadata: {tier: "free", n: 1.5, tags: ["a", null]}},
                      "model": "m", dry_run: false, estimate: {} } times 100
            expect allow
            request {}
            expect deny
            expect deny "msg"
            expect reason QUOTA_EXCEEDED
            expect route "r"
            expect model "m"
            expect quotas a, r.limit1, "odd name"
            expect checks "c1", "c2"
            expect rules r1, r2
            expect annotate "k" = "v"
            expect exceeded a
        }""",
        "t.rules",
    )
    case = rf.tests[0]
    assert case.name == "quota"
    first, second = case.steps
    assert first.request == {
        "user": {"id": "u1", "metadata": {"tier": "free", "n": 1.5, "tags": ["a", None]}},
        "model": "m",
        "dry_run": False,
        "estimate": {},
    }
    assert first.times == 100
    assert [e.kind for e in first.expects] == ["allow"]
    assert second.request == {} and second.times == 1
    got = [(e.kind, e.args) for e in second.expects]
    assert got == [
        ("deny", ()),
        ("deny", ("msg",)),
        ("reason", ("QUOTA_EXCEEDED",)),
        ("route", ("r",)),
        ("model", ("m",)),
        ("quotas", ("a", "r.limit1", "odd name")),
        ("checks", ("c1", "c2")),
        ("rules", ("r1", "r2")),
        ("annotate", ("k", "v")),
        ("exceeded", ("a",)),
    ]


def test_comments_are_collected_with_their_place() -> None:
    rf = parse_text("# top\nrule r {  # header\n    # inside\n    allow\n}\n", "c.rules")
    got = [(c.line, c.column, c.text, c.trailing, c.depth) for c in rf.comments]
    assert got == [
        (1, 1, "# top", False, 0),
        (2, 11, "# header", True, 1),
        (3, 5, "# inside", False, 1),
    ]


def test_hash_inside_a_string_is_not_a_comment() -> None:
    rf = parse_text('rule r { deny "# not a comment" }', "h.rules")
    assert rf.comments == ()
    assert rf.rules[0].actions[0] == ast.Deny("# not a comment", rf.rules[0].actions[0].pos)


# --------------------------------------------------------------- parse_path


def test_parse_path_reads_a_directory_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b.rules").write_text("rule b1 { allow }\nrule b2 { allow }\n")
    (tmp_path / "a.rules").write_text("rule a1 { allow }\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.rules").write_text("rule c1 { allow }\n")
    (tmp_path / "notes.txt").write_text("not rules")
    ruleset = parse_path(tmp_path)
    assert [Path(f.path).name for f in ruleset.files] == ["a.rules", "b.rules", "c.rules"]
    rules = [(r.name, r.order) for f in ruleset.files for r in f.rules]
    assert rules == [("a1", 0), ("b1", 1), ("b2", 2), ("c1", 3)]


def test_parse_path_reports_the_errors_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text("rule a { enforce }\n")
    (tmp_path / "b.rules").write_text("quota q limits requests to 1 per 1 for each user\n")
    with pytest.raises(RulesError) as info:
        parse_path(tmp_path)
    assert [Path(d.file).name for d in info.value.errors] == ["a.rules", "b.rules"]


def test_parse_path_of_a_single_file(tmp_path: Path) -> None:
    f = tmp_path / "one.rules"
    f.write_text('default deny "nope"\n')
    ruleset = parse_path(f)
    assert ruleset.files[0].default == ast.Default("deny", "nope", ast.Pos(str(f), 1, 1))


def test_the_parser_is_built_once() -> None:
    assert lark_parser() is lark_parser()


def test_the_grammar_has_no_conflicts_in_strict_mode() -> None:
    pytest.importorskip("interegular")
    from lark import Lark

    import tollway.dsl.grammar as grammar

    Lark.open("rules.lark", rel_to=grammar.__file__, parser="lalr", strict=True)


# ---------------------------------------------------------------- syntax errors

CASES = [
    ("quota q limits requests to 1 per 60 for each user", 1, 34, "expected a duration like 30s"),
    ("quota q limits 5 to 1 per 1h for each user", 1, 16, "expected a metric: requests, tokens"),
    ("quota q limits reqs to 1 per 1h for each user", 1, 16, "did you mean 'requests'"),
    ("quota q limits requests to per 1h for each user", 1, 28, "expected a limit"),
    ("quota q limits requests to 1 per 1h for user", 1, 41, "expected 'each' or 'everyone'"),
    ("quota q limits requests to 1 per 1h for each usr", 1, 46, "expected a scope after"),
    ("rule r {\n  enforce\n}", 3, 1, "expected a quota or balance name after 'enforce'"),
    ('rule r {\n  enforce\n  deny "x"\n}', 3, 3, "expected a quota or balance name after 'enforce'"),
    ('rule r { deny "oops }', 1, 15, "unterminated string: missing closing quote"),
    (
        "rule r {\n  when user.x == 1\n",
        2,
        19,
        "unexpected end of file: a '}' is missing (block opened at 1:8)",
    ),
    (
        'rule r { when usr.tier == "x" }',
        1,
        15,
        "unknown root 'usr' — paths start with user., group. or request.",
    ),
    ('rule r { when user.tier = "x" }', 1, 25, "use '=='"),
    ("rule r { when user.x == 1 && user.y == 2 }", 1, 27, "use 'and'"),
    ("rule r { enforse q }", 1, 10, "did you mean 'enforce'"),
    ('rule r { deny "x" when user.a == 1 }', 1, 19, "'when' must come first"),
    ("rule r priority high { }", 1, 17, "expected a whole number after 'priority'"),
    ("rule r priority 1.5 { }", 1, 17, "priority must be a whole number"),
    ("rule { }", 1, 6, "expected a rule name after 'rule'"),
    ("}", 1, 1, "no block is open here"),
    ("hello", 1, 1, "expected a rule, quota, balance, price, schema, default or test"),
    ("default permit", 1, 9, "expected allow or deny"),
    ("schema user { tier: strin }", 1, 21, "unknown type 'strin'"),
    ("schema user { tier: list }", 1, 21, "'list' needs an element type"),
    ('test "t" { request { user: 1 } expect alow }', 1, 39, "unknown expectation 'alow'"),
    ('test "t" { request {} expect reason NOPE }', 1, 23, "expect reason needs one of"),
    ('test "t" { request {} expect route r }', 1, 23, "needs one model name in quotes"),
    ('test "t" { request {a: 1, a: 2} }', 1, 27, "duplicate key 'a'"),
    ('test "t" { request {} times 0 }', 1, 29, "times must be a whole number"),
    ('rule r { deny "bad \\q escape" }', 1, 15, "unknown escape '\\q'"),
    ("rule r { when user == 1 }", 1, 15, "'user' alone is not a value"),
    ("rule r { when (user.x == 1 }", 1, 28, "expected ')'"),
    ("rule r { when user.x ~ 5 }", 1, 24, "expected a glob pattern in quotes"),
    ("rule r { when user.x in 5 }", 1, 25, 'expected a list like ["a", "b"]'),
    ("rule r { route }", 1, 16, "expected a model in quotes after route"),
    ("rule r { when user.x == 'a' }", 1, 25, "strings use double quotes"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), CASES)
def test_syntax_errors_in_plain_words(text: str, line: int, column: int, message: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    got_line, got_column, got_message = errors[0]
    assert message in got_message
    assert (got_line, got_column) == (line, column), got_message
    for internal in ("__ANON", "RBRACE", "LBRACE", "Token(", "$END", "Traceback"):
        assert internal not in got_message


def test_every_error_of_a_file_is_reported_without_cascades() -> None:
    text = """default allow
quota q1 limits requests to 100 per 60 for each user
rule a {
    enforce
    deny "x"
    check "c"
}
rule b {
    when user.tier = "x"
    deny "y"
rule c priority x {
}
rule d {
    enforce q1
    route
    annotate "a" "b"
}
test "t" {
    request { user: {id: "u"} }
    expect alow
}
"""
    errors = errors_of(text)
    lines = [e[0] for e in errors]
    assert lines == [2, 5, 9, 11, 11, 16, 20], errors
    assert "a '}' is missing (block opened at 8:8)" in errors[3][2]


def test_the_rendered_error_shows_the_line_and_a_caret() -> None:
    with pytest.raises(RulesError) as info:
        parse_text("rule r {\n    enforce\n}\n", "x.rules")
    rendered = info.value.render()
    assert rendered.splitlines() == [
        "x.rules:3:1: error: expected a quota or balance name after 'enforce', found '}'",
        "    }",
        "    ^",
    ]


def test_a_second_default_in_one_file_names_both() -> None:
    errors = errors_of('default allow\ndefault deny "x"\n')
    assert errors == [
        (2, 1, "second 'default': the first is at bad.rules:1:1; a ruleset has at most one")
    ]
