"""Balances in the rule language: declarations, ``enforce Q then B``, the checker's
errors about them, ``fmt`` and the compiled form the engine reads."""

from __future__ import annotations

import pytest

from tollway import dsl
from tollway.dsl.ast import RulesetAst
from tollway.dsl.checker import check
from tollway.dsl.diagnostics import RulesError
from tollway.dsl.formatter import format_file
from tollway.dsl.parser import parse_text

DECLS = """
quota plan limits cost to 100 per month for each group
quota hourly limits tokens to 1000 per 1h for each user
balance team_credits of cost for each group warn below 10
balance tokens_left of tokens for each user
"""


def errors(rules: str) -> list[tuple[int, int, str]]:
    found, _ = check(RulesetAst((parse_text(DECLS + rules, "b.rules"),)))
    return [(d.line - 5, d.column, d.message) for d in found]


def test_a_balance_declaration_parses_with_its_threshold() -> None:
    rf = parse_text(DECLS, "b.rules")
    credits, tokens = rf.balances
    assert (credits.name, credits.metric, credits.scope.name, credits.warn_below) == (
        "team_credits", "cost", "group", 10)
    assert (tokens.metric, tokens.scope.name, tokens.warn_below) == ("tokens", "user", None)


def test_enforce_then_compiles_to_the_quota_and_its_balance() -> None:
    ruleset = dsl.load_text(DECLS + """
rule paid { enforce plan then team_credits, hourly }
rule per_user { enforce tokens_left }
""")
    paid, per_user = ruleset.rules
    assert paid.quotas == ("plan", "hourly") and paid.balances == (("team_credits", "plan"),)
    assert per_user.quotas == () and per_user.balances == (("tokens_left", ""),)
    assert set(ruleset.balances) == {"team_credits", "tokens_left"}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("rule r { enforce plan then nope }", [(1, 28, "unknown balance 'nope'")]),
        ("rule r { enforce nope }",
         [(1, 18, "unknown quota or balance 'nope'")]),
        ("rule r { enforce plan then team_credits then tokens_left }",
         [(1, 46, "'plan then team_credits then tokens_left' is a chain of 2 steps: "
                  "a quota may be followed by one balance only")]),
        ("rule r { enforce team_credits then tokens_left }",
         [(1, 18, "'team_credits' is a balance: only a quota comes before 'then' "
                  "(enforce QUOTA then tokens_left)")]),
        ("rule r { enforce plan then hourly }",
         [(1, 28, "'hourly' is a quota: 'then' names a balance, spent once 'plan' is used up")]),
        ("rule r { enforce hourly then team_credits }",
         [(1, 30, "'hourly then team_credits': quota 'hourly' counts tokens but balance "
                  "'team_credits' holds cost; they must match")]),
        ("balance plan of cost for each user\nrule r { enforce plan }",
         [(1, 1, "balance 'plan' has the name of the quota at b.rules:2:1: "
                 "quotas and balances share one set of names")]),
        ("balance b of cost for each user warn below -1\nrule r { enforce b }",
         [(1, 1, "balance 'b': warn below cannot be negative")]),
    ],
)
def test_the_checker_refuses_bad_uses_of_balances(
    rule: str, expected: list[tuple[int, int, str]]
) -> None:
    assert errors(rule) == expected


def test_a_balance_used_as_a_quota_metric_is_named_as_such() -> None:
    with pytest.raises(RulesError) as info:
        dsl.load_text(DECLS + "quota q limits team_credits to 5 per 1h for each user\n"
                      "rule r { enforce q, team_credits }")
    assert [d.message for d in info.value.errors] == [
        "balance 'team_credits' cannot be used in a limits … to expression: a balance is "
        "spent by enforce, after a quota (enforce QUOTA then team_credits)"]


def test_an_unknown_balance_metric_is_refused() -> None:
    with pytest.raises(RulesError, match="unknown metric 'dollars'"):
        dsl.load_text("balance b of dollars for each user\nrule r { enforce b }")


def test_a_balance_nobody_enforces_is_a_warning() -> None:
    _, warnings = check(RulesetAst((parse_text(DECLS, "b.rules"),)))
    assert "balance 'tokens_left' is declared but no rule enforces it" in [
        w.message for w in warnings]


def test_fmt_lays_out_balances_and_chains_and_reads_them_back() -> None:
    text = DECLS + "balance   x of cost for everyone\nrule r {\n  enforce plan   then team_credits,hourly, x\n}\n"
    formatted = format_file(parse_text(text, "b.rules"))
    assert "balance team_credits of cost for each group warn below 10\n" in formatted
    assert "balance tokens_left  of tokens for each user\n" in formatted
    assert "balance x            of cost for everyone\n" in formatted
    assert "    enforce plan then team_credits, hourly, x\n" in formatted
    again = parse_text(formatted, "b.rules")
    assert format_file(again) == formatted
    (enforce,) = again.rules[0].actions
    assert enforce.names == ("plan", "hourly", "x")  # type: ignore[union-attr]
    assert enforce.then == (("team_credits",), (), ())  # type: ignore[union-attr]
