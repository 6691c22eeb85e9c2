"""The checker: every semantic error and warning, with its place and its words."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway.dsl.ast import RulesetAst
from tollway.dsl.checker import check
from tollway.dsl.diagnostics import Diagnostic
from tollway.dsl.parser import parse_path, parse_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"


def run(text: str) -> tuple[list[Diagnostic], list[Diagnostic]]:
    return check(RulesetAst((parse_text(text, "c.rules"),)))


def messages(diags: list[Diagnostic]) -> list[str]:
    return [d.message for d in diags]


def only_error(text: str) -> Diagnostic:
    errors, _ = run(text)
    assert len(errors) == 1, messages(errors)
    return errors[0]


UNTRUSTED = "rules read "  # the warning for metadata any request may set (tested below)


def warnings_of(text: str, *, untrusted: bool = False) -> list[str]:
    """Warnings of ``text``; the untrusted-metadata warning, which most snippets here
    would draw since they mark no key admin, only when asked for."""
    errors, warnings = run(text)
    assert not errors, messages(errors)
    return [m for m in messages(warnings) if untrusted or not m.startswith(UNTRUSTED)]


Q = "quota q limits requests to 10 per 1h for each user\nrule uses_q { enforce q }\n"


def test_the_example_is_clean() -> None:
    errors, warnings = check(parse_path(EXAMPLE))
    assert errors == [] and warnings == []


# ------------------------------------------------------------------- errors


def test_unknown_quota_with_a_suggestion_at_the_name() -> None:
    d = only_error(
        "quota free_hourly limits requests to 10 per 1h for each user\n"
        "rule r {\n    enforce free_hourly, free_hourli\n}"
    )
    assert d.message == "unknown quota 'free_hourli' — did you mean 'free_hourly'?"
    assert (d.line, d.column) == (3, 26)
    assert d.render().splitlines()[1:] == [
        "        enforce free_hourly, free_hourli",
        "                             ^",
    ]


def test_duplicate_names_name_both_places() -> None:
    errors, _ = run(
        Q
        + "quota q limits requests to 1 per 1h for each user\n"
        + "rule uses_q { allow }\n"
        + 'test "t" { request {} }\ntest "t" { request {} }\n'
    )
    assert messages(errors) == [
        "duplicate quota 'q': first declared at c.rules:1:1",
        "duplicate rule 'uses_q': first declared at c.rules:2:1",
        "duplicate test 't': first declared at c.rules:5:1",
    ]


def test_duplicates_across_the_files_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text("default allow\n" + Q)
    (tmp_path / "b.rules").write_text('default deny "x"\n' + Q)
    errors, _ = check(parse_path(tmp_path))
    a, b = tmp_path / "a.rules", tmp_path / "b.rules"
    assert [(Path(d.file).name, d.line, d.message) for d in errors] == [
        ("b.rules", 1, f"second 'default': the first is at {a}:1:1; a ruleset has at most one"),
        ("b.rules", 2, f"duplicate quota 'q': first declared at {a}:2:1"),
        ("b.rules", 3, f"duplicate rule 'uses_q': first declared at {a}:3:1"),
    ]
    assert str(b) == errors[0].file


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("0s", "bad duration '0s': a window must be at least 1s"),
        ("5x", "bad duration '5x': the unit must be s, m, h, d or w"),
        (
            "hour",
            "bad window 'hour': expected a duration like 30s, 5m, 1h, 1d, or day, week, month",
        ),
        ("monht", "did you mean 'month'?"),
    ],
)
def test_bad_windows(window: str, message: str) -> None:
    d = only_error(
        f"quota q limits requests to 10 per {window} for each user\nrule r {{ enforce q }}"
    )
    assert message in d.message
    assert (d.line, d.column) == (1, 35)


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("150% of group.credits", "percent must be more than 0 and at most 100, not 150%"),
        ("0% of group.credits", "percent must be more than 0 and at most 100, not 0%"),
        ("-5", "a limit cannot be negative"),
        ("group.credits or -1", "a fallback limit cannot be negative"),
        ("request.size", "a limit path must start with user. or group."),
        ("user.id", "user.id is a string: a limit must read a number"),
    ],
)
def test_bad_limits(limit: str, message: str) -> None:
    d = only_error(
        f"quota q limits cost to {limit} per 1d for each user in group\nrule r {{ enforce q }}"
    )
    assert message in d.message


def test_type_mismatches_against_the_schema() -> None:
    errors, _ = run(
        """schema user { tier: string, risky: bool, categories: list<string>, n: number }
rule r {
    when user.tier == 5 or "x" in user.tier or user.risky < 3 or user.categories ~ "a*"
        or user.n in ["a"] or user.categories == "vip" or 3 in user.categories
        or user.tier.sub == "x" or user.id > 1
    route "m" if request.model == 5
}"""
    )
    assert messages(errors) == [
        "type mismatch: user.tier is a string but 5 is a number",
        '"x" in user.tier: user.tier is a string, not a list',
        "'<' orders numbers or strings, but user.risky is a bool",
        "'~' matches strings, but user.categories is a list",
        'type mismatch: user.n is a number but the list holds "a" (a string)',
        'user.categories is a list: to test membership write "vip" in user.categories',
        "type mismatch: user.categories holds strings but 3 is a number",
        "user.tier is a string: it has no key 'sub'",
        "type mismatch: user.id is a string but 1 is a number",
        "type mismatch: request.model is a string but 5 is a number",
    ]


def test_a_limit_path_must_be_a_number_in_the_schema() -> None:
    d = only_error(
        "schema group { plan: string }\n"
        "quota q limits cost to group.plan per month for each group\nrule r { enforce q }"
    )
    assert d.message == "group.plan is a string: a limit must read a number"


def test_schema_errors() -> None:
    errors, _ = run(
        "schema user { a: string, a: number }\nschema user { b: bool }\n"
        "schema request { size: number }\n"
    )
    assert messages(errors) == [
        "duplicate key 'a' in the user schema (first at c.rules:1:15)",
        "second schema for user: the first is at c.rules:1:1; put all its keys in one schema",
        "request attributes are strings: request.size cannot be number",
    ]


def test_action_errors() -> None:
    errors, _ = run('rule r {\n  route ""\n  check "ok", ""\n  annotate "" = "v"\n}')
    assert messages(errors) == [
        "route to an empty model name",
        "check names cannot be empty",
        "annotate needs a non-empty key",
    ]


def test_test_blocks_must_name_known_things() -> None:
    errors, _ = run(
        Q
        + """rule limited { limit requests to 1 per 1m for each user }
test "t" {
    request { usr: {id: "u"} }
    expect quotas q, limited.limit1, qq
    expect exceeded nope
    expect rules uses_q, uses_qq
}"""
    )
    assert messages(errors) == [
        "unknown request field 'usr': a test request may set request_id, user, group, model, "
        "attributes, estimate, dry_run — did you mean 'user'?",
        "unknown quota 'qq' — did you mean 'q'?",
        "unknown quota 'nope'",
        "unknown rule 'uses_qq' — did you mean 'uses_q'?",
    ]


def test_errors_are_sorted_by_location_and_all_reported() -> None:
    errors, _ = run(
        "rule b { enforce zz }\nquota q limits requests to 1 per 0s for each user\n"
        "rule a { enforce yy, q }\n"
    )
    assert [(d.line, d.column) for d in errors] == [(1, 18), (2, 34), (3, 18)]


# ----------------------------------------------------------------- warnings


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ('user.tier == "a" and user.tier == "b"', 'user.tier cannot be both "a" and "b"'),
        ("user.n == 1 and user.n != 1", "user.n cannot be 1 and not 1"),
        ("user.n == 1 and user.n != 1.0", "user.n cannot be 1 and not 1"),
        ('user.t in ["a", "b"] and user.t == "c"', 'user.t is "c", which is not in the list'),
        ('user.t in ["a"] and user.t in ["b"]', "no value of user.t is in every list"),
        ("user.n > 5 and user.n < 3", "no number is in the range user.n must be in"),
        ("user.n >= 5 and user.n < 5", "no number is in the range"),
        ("user.n == 9 and user.n <= 5", "user.n is 9, outside the range"),
        ("false", "the condition is false"),
        ("not true", "'not true' is false"),
        ("user.n < null", "'<' with null is never true"),
        ("1 == 2", "it compares two different constants"),
        ("(user.a == 1 and user.b == 2) and user.a == 3", "user.a cannot be both 1 and 3"),
        ("false or not true", "the condition is false"),
    ],
)
def test_rules_that_can_never_match(condition: str, reason: str) -> None:
    got = warnings_of(f"rule r {{ when {condition} allow }}")
    assert len(got) == 1 and got[0].startswith("rule 'r' can never match: ")
    assert reason in got[0]


@pytest.mark.parametrize(
    "condition",
    [
        'user.tier == "a" or user.tier == "b"',
        "user.n == 1 and user.m != 1",
        "user.n >= 5 and user.n <= 5",
        "user.n == true and user.n != 1",
        'user.t in ["a", "b"] and user.t == "b"',
        "not false",
    ],
)
def test_conditions_that_can_match_are_not_flagged(condition: str) -> None:
    assert warnings_of(f"rule r {{ when {condition} allow }}") == []


def test_a_route_that_never_applies() -> None:
    got = warnings_of('rule r { route "m" if request.model == "a" and request.model == "b" }')
    assert got == ['this route never applies: request.model cannot be both "a" and "b"']


def test_rules_shadowed_by_a_deny() -> None:
    got = warnings_of(
        """rule d priority 1000 { when user.status == "x" deny "no" }
rule narrower { when user.status == "x" and user.tier == "free" allow }
rule same { when user.status == "x" allow }
rule wider { when user.tier == "free" allow }
rule tie_later priority 1000 { when user.status == "x" and user.a == 1 allow }
rule higher priority 2000 { when user.status == "x" allow }
rule dreamer shadow { when user.status == "x" allow }
rule everything priority 5 { deny "closed" }
rule low priority -1 { when user.q == 1 allow }
"""
    )
    assert got == [
        "rule 'narrower' never takes effect: rule 'd' (priority 1000) denies every request "
        "it matches",
        "rule 'same' never takes effect: rule 'd' (priority 1000) denies every request it matches",
        "rule 'wider' never takes effect: rule 'everything' (priority 5) denies every request "
        "it matches",
        "rule 'tie_later' never takes effect: rule 'd' (priority 1000) denies every request "
        "it matches",
        "rule 'low' never takes effect: rule 'everything' (priority 5) denies every request "
        "it matches",
    ]


def test_unused_quotas_empty_rules_and_zero_limits() -> None:
    got = warnings_of(
        "quota unused limits requests to 10 per 1h for each user\n"
        "quota zero limits requests to 0 per 1h for each user\n"
        "rule r { enforce zero }\nrule empty { }\n"
        'rule quiet { deny "" }\n'
    )
    assert got == [
        "quota 'unused' is declared but no rule enforces it",
        "quota 'zero' has limit 0: it never admits a request",
        "rule 'empty' has no actions: matching it changes nothing",
        "deny with an empty message: say why the request is refused",
    ]


def test_limit_paths_that_the_scope_may_not_resolve_are_warnings() -> None:
    got = warnings_of(
        """quota a limits cost to group.credits per month for each user
quota b limits cost to user.credits per month for each group
quota c limits cost to group.credits or 5 per month for everyone
quota d limits cost to 10% of group.credits per month for each user in group
rule r { enforce a, b, c, d }"""
    )
    assert got == [
        "quota 'a' is counted for each user but its limit reads group.credits: requests that "
        "name no group cannot resolve it (QUOTA_UNRESOLVED)",
        "quota 'b' is counted per group but its limit reads user.credits: the limit changes "
        "with whichever user asks",
        "quota 'c' is counted for everyone together but its limit reads group.credits: the "
        "limit changes with whichever group asks",
    ]


def test_undeclared_keys_of_a_declared_schema_are_warnings() -> None:
    got = warnings_of('schema user { tier: string }\nrule r { when user.tierr == "x" allow }')
    assert got == ["user.tierr is not in the user schema — did you mean 'tier'?"]


def test_warnings_do_not_stop_a_ruleset_and_are_sorted() -> None:
    errors, warnings = run("rule b { }\nrule a { when false allow }\n")
    assert errors == []
    assert [(d.line, d.severity) for d in warnings] == [(1, "warning"), (2, "warning")]


def test_a_tree_built_in_code_too_deep_to_check_is_an_error() -> None:
    from tollway.dsl import ast

    expr: ast.Expr = ast.Compare("==", ast.Path(("user", "a")), ast.Literal(1))
    for _ in range(10_000):
        expr = ast.Not(expr)
    rule = ast.Rule("deep", expr, (ast.Allow(),))
    errors, _ = check(RulesetAst((ast.RuleFile("code.rules", rules=(rule,)),)))
    assert messages(errors) == ["condition nested deeper than 64 levels"]


def test_windows_line_ends() -> None:
    rf = parse_text("# note\r\nrule r {\r\n  allow  # why\r\n}\r\n", "w.rules")
    assert [c.text for c in rf.comments] == ["# note", "# why"]


# ------------------------------------------------------------ metadata trust


def test_admin_keys_parse_format_and_compile() -> None:
    from tollway.dsl import load_text

    text = "schema user { tier: string admin, region: string }\nschema group { credits: number admin }\n"
    assert warnings_of(text + 'rule r { when user.tier == "x" allow }', untrusted=True) == []
    ruleset = load_text(text + 'rule r { when user.tier == "x" allow }')
    assert ruleset.admin_keys == {"user": frozenset({"tier"}), "group": frozenset({"credits"})}
    assert load_text('rule r { when user.tier == "x" allow }').admin_keys == {}


def test_rules_reading_settable_metadata_warn_once_when_no_key_is_admin() -> None:
    got = warnings_of(
        """schema group { credits: number, plan: string }
quota q limits requests to group.credits or 5 per month for each group
rule a { when user.tier == "free" and user.id == "x" enforce q }
rule b { when "vip" in user.categories route "m" if group.plan == "gold" }
rule c { limit requests to user.cap or 3 per 1h for each user }""",
        untrusted=True,
    )
    assert got == [
        "rules read group.credits, group.plan, user.cap, user.categories, user.tier, which any "
        "request may set (no schema key is marked admin); mark the keys only admins may set, "
        "e.g. `schema group { credits: number admin }`"
    ]


def test_no_trust_warning_for_ids_requests_or_a_ruleset_with_an_admin_key() -> None:
    ids_only = 'rule a { when user.id == "x" and group.id exists and request.model == "m" allow }'
    assert warnings_of(ids_only, untrusted=True) == []
    marked = 'schema group { plan: string admin }\nrule a { when user.tier == "x" allow }'
    assert warnings_of(marked, untrusted=True) == []
    undeclared = 'rule a { when user.tier == "x" allow }'
    assert warnings_of(undeclared, untrusted=True)[0].endswith("`schema user { tier: any admin }`")


def test_request_attributes_cannot_be_admin() -> None:
    e = only_error("schema request { ip: string admin }")
    assert e.message.startswith("request.ip cannot be admin")
