"""``price`` declarations: syntax, diagnostics, the most-specific-wins table, and its warning."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway import dsl
from tollway.dsl.ast import Price, RulesetAst
from tollway.dsl.checker import check
from tollway.dsl.diagnostics import RulesError
from tollway.dsl.parser import parse_text
from tollway.dsl.prices import PriceTable, specificity


def errors_of(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        dsl.load_text(text, "p.rules")
    return [f"{d.line}:{d.column}: {d.message}" for d in caught.value.errors]


def warnings_of(text: str) -> list[str]:
    errors, warnings = check(RulesetAst((parse_text(text, "p.rules"),)))
    assert not errors, [d.message for d in errors]
    return [d.message for d in warnings]


# ------------------------------------------------------------------- syntax


def test_a_price_with_and_without_cached_input() -> None:
    rf = parse_text(
        'price "openai/gpt-5*" input 1.25 output 10 cached_input 0.125 per 1M tokens\n'
        'price "local/*" input 0 output 0 per 1K tokens\n',
        "p.rules",
    )
    first, second = rf.prices
    assert (first.pattern, first.input, first.output, first.cached_input) == (
        "openai/gpt-5*",
        1.25,
        10,
        0.125,
    )
    assert (first.per, first.per_text, first.pos.line, first.pos.column) == (1_000_000, "1M", 1, 1)
    assert (second.cached_input, second.per) == (None, 1000)


def test_price_words_stay_free_elsewhere() -> None:
    rs = dsl.load_text(
        'rule price { when user.input == "x" and user.tokens exists\n deny "no" }\n'
        'price "m" input 1 output 2 per 1M tokens\n'
    )
    assert [r.name for r in rs.rules] == ["price"] and len(rs.prices) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'price "m" input 1 output 2 per 1000 tokens',
            "1:32: expected a token count like 1M or 1K, as in per 1M tokens, found '1000'",
        ),
        (
            'price "m" input 1 output 2 per 1h tokens',
            "1:32: bad token count '1h': expected a count like 1M (a million tokens) or 1K "
            "(a thousand)",
        ),
        (
            'price "m" input 1 output 2 per 0M tokens',
            "1:32: bad token count '0M': expected a count like 1M (a million tokens) or 1K "
            "(a thousand)",
        ),
        (
            'price "m" input cheap output 2 per 1M tokens',
            "1:17: expected a price in USD after 'input', like input 1.25, found 'cheap'",
        ),
        (
            "price m input 1 output 2 per 1M tokens",
            '1:7: expected a model glob in quotes after price, like price "openai/gpt-5*", '
            "found 'm'",
        ),
        (
            'price "m" output 2 input 1 per 1M tokens',
            "1:11: expected 'input', found 'output'",
        ),
        ('price "m" input 1 output 2 per 1M', "1:34: unexpected end of file: expected 'tokens'"),
        ('price "" input 1 output 2 per 1M tokens', "1:1: price for an empty model pattern"),
        (
            'price "m" input -1 output 2 per 1M tokens',
            "1:1: price 'm': input cannot be negative",
        ),
        (
            'price "m" input 1 output 2 per 1M tokens\nprice "m" input 2 output 3 per 1M tokens',
            "2:1: duplicate price for 'm': first declared at p.rules:1:1",
        ),
    ],
)
def test_bad_prices_are_errors_at_their_place(text: str, expected: str) -> None:
    assert errors_of(text)[0] == expected


def test_every_negative_part_is_named() -> None:
    assert sorted(errors_of('price "m" input -1 output -2 cached_input -3 per 1M tokens')) == [
        "1:1: price 'm': cached_input cannot be negative",
        "1:1: price 'm': input cannot be negative",
        "1:1: price 'm': output cannot be negative",
    ]


def test_an_error_in_a_price_does_not_hide_the_next_declaration() -> None:
    found = errors_of(
        'price "m" input x output 2 per 1M tokens\n'
        'price "n" input 1 output 2 per 1M\n'
        "rule r {\n    route\n}\n"
    )
    assert [f.split(":")[0] for f in found] == ["1", "3", "5"], found


# -------------------------------------------------------------------- table


def table(*patterns: str) -> PriceTable:
    return PriceTable.of(Price(p, i, 0) for i, p in enumerate(patterns))


def test_the_most_specific_pattern_wins_whatever_the_order() -> None:
    for order in (
        ("openai/*", "openai/gpt-5*", "openai/gpt-5"),
        ("openai/gpt-5", "openai/gpt-5*", "openai/*"),
    ):
        t = table(*order)
        found = {m: t.lookup(m) for m in ("openai/gpt-5", "openai/gpt-5-mini", "openai/o3", "x/y")}
        assert {m: p and p.pattern for m, p in found.items()} == {
            "openai/gpt-5": "openai/gpt-5",
            "openai/gpt-5-mini": "openai/gpt-5*",
            "openai/o3": "openai/*",
            "x/y": None,
        }


def test_ties_go_to_the_first_declared() -> None:
    # same literal count and wildcards: declaration order decides
    assert table("a*c", "ab*").lookup("abc").pattern == "a*c"  # type: ignore[union-attr]
    assert table("ab*", "a*c").lookup("abc").pattern == "ab*"  # type: ignore[union-attr]


def test_the_lookup_cache_does_not_grow_without_bound() -> None:
    t = table("m*")
    for i in range(10_000):
        assert t.lookup(f"m{i}") is not None
    assert len(t._cache) <= 4096


patterns = st.text(alphabet="ab*?", min_size=0, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns, max_size=6, unique=True), st.text(alphabet="abc", max_size=5))
def test_lookup_is_the_best_match_by_the_documented_order(pats: list[str], model: str) -> None:
    """Oracle: fnmatch (no brackets here) and the ranking, computed the slow way."""
    matching = [(i, p) for i, p in enumerate(pats) if fnmatch.fnmatchcase(model, p)]
    expected = max(matching, key=lambda ip: (specificity(ip[1]), -ip[0]))[1] if matching else None
    found = table(*pats).lookup(model)
    assert (found.pattern if found else None) == expected


# ----------------------------------------------------------------- warnings


COST = "quota spend limits cost to 5 per 1d for each user\n"


def test_routing_to_an_unpriced_model_warns_when_cost_quotas_apply() -> None:
    assert warnings_of(
        COST
        + 'price "openai/*" input 1 output 2 per 1M tokens\n'
        + 'rule r {\n enforce spend\n route "openai/gpt-4.1-mini"\n route "local/llama" if request.model == "x"\n}\n'
        + 'rule s {\n route "local/llama"\n}\n'
    ) == [
        "no price covers 'local/llama': cost quotas (spend) count nothing for requests routed "
        "to it unless the gateway reports cost_usd"
    ]


def test_inline_cost_limits_count_and_shadow_rules_do_not() -> None:
    inline = 'rule r {\n limit cost to 1 per 1d for each user\n route "m"\n}\n'
    assert len(warnings_of(inline)) == 1
    shadow_only = COST + 'rule r shadow {\n enforce spend\n route "m"\n}\n'
    assert not any("no price" in w for w in warnings_of(shadow_only))


def test_no_cost_quota_no_price_warning() -> None:
    text = (
        "quota q limits tokens to 5 per 1d for each user\n"
        + 'rule r {\n enforce q\n route "m"\n}\n'
    )
    assert warnings_of(text) == []


def test_the_compiled_ruleset_carries_the_table() -> None:
    rs = dsl.load_text(
        COST
        + 'price "m*" input 1 output 2 per 1M tokens\nprice "m1" input 3 output 4 per 1K tokens\n'
        'rule r {\n enforce spend\n route "m1"\n}\n'
    )
    assert rs.warnings == ()
    assert [p.pattern for p in rs.prices.prices] == ["m1", "m*"]
    assert rs.prices.lookup("m1").per == 1000  # type: ignore[union-attr]
