"""Random rule files through the whole pipeline: parse, check, compile, format, decide.

Random text and token soup at the parser alone are in test_dsl_bad_files.py. Here the
files are built from the language's own pieces, right and wrong (unknown quotas and
paths, zero or negative limits, odd windows, deep conditions, shadowed and duplicate
rules), so they reach the checker, the compiler, the formatter and the engine.

Properties: ``load_text`` compiles or raises ``RulesError`` whose diagnostics point
inside the text, and nothing else; a file that compiles formats to text that compiles
to the same ruleset (and formats the same again); a compiled ruleset decides any request
without an exception other than the documented ``ValueError`` for a bad request.
``TOLLWAY_FUZZ_EXAMPLES`` runs more examples.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway import Engine
from tollway.dsl import RulesError, load_text
from tollway.dsl.formatter import format_file
from tollway.dsl.parser import parse_text

EXAMPLES = int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

names = st.sampled_from(["a", "b", "free", "q1", "q2", "team", "r", "limit1", "x_y"])
paths = st.sampled_from([
    "user.tier", "user.n", "user.id", "group.id", "group.credits", "request.model",
    "request.ip", "user.a.b", "group.x", "user.categories", "nobody.here",
])
strings = st.sampled_from(['"free"', '"m"', '"openai/*"', '""', '"é"', '"a\\"b"', '"x?"'])
numbers = st.sampled_from(["0", "1", "-1", "2.5", "1_000", "100%", "1e3", "99999999999999999"])
literals = st.one_of(strings, numbers, st.sampled_from(["true", "false", "null"]))
# mostly right, sometimes wrong: a file with one mistake still reaches the checker, and
# enough of them compile to exercise the compiler, the formatter and the engine
metrics = st.sampled_from(["requests", "tokens", "input_tokens", "output_tokens", "cost"] * 4
                          + ["bogus"])
windows = st.sampled_from(["1s", "30s", "5m", "1h", "1d", "7d", "day", "week", "month"] * 3
                          + ["0s", "61s", "10w", "fortnight"])
scopes = st.sampled_from(["user", "group", "user in group", "user and model",
                          "group and model", "user in group and model", "everyone",
                          "everyone and model"] * 3 + ["model"])


def conditions(depth: int = 3) -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.builds(lambda p, op, v: f"{p} {op} {v}", paths,
                  st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), literals),
        st.builds(lambda p, vs: f"{p} in [{', '.join(vs)}]", paths,
                  st.lists(literals, max_size=3)),
        st.builds(lambda v, p: f"{v} in {p}", strings, paths),
        st.builds(lambda p, g: f"{p} ~ {g}", paths, strings),
        st.builds(lambda p: f"{p} exists", paths),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda a, b: f"{a} and {b}", inner, inner),
            st.builds(lambda a, b: f"({a} or {b})", inner, inner),
            st.builds(lambda a: f"not ({a})", inner),
        ),
        max_leaves=depth * 2,
    )


limits = st.one_of(
    numbers,
    st.builds(lambda p: p, paths),
    st.builds(lambda n, p: f"{n}% of {p}", st.sampled_from(["10", "50", "100", "150", "0"]), paths),
    st.builds(lambda p, n: f"{p} or {n}", paths, numbers),
)
quota_names = st.sampled_from(["q1", "q2"])  # "enforce" names these; a file may not declare them
quotas = st.builds(
    lambda n, m, lim, w, s, err: f"quota {n} limits {m} to {lim} per {w} for each {s}{err}",
    quota_names, metrics, limits, windows, scopes,
    st.sampled_from(["", "", " on_store_error deny", " on_store_error allow", " on_store_error x"]),
)
actions = st.one_of(
    st.builds(lambda s: f"deny {s}", strings),
    st.just("allow"),
    st.builds(lambda ns: f"enforce {', '.join(ns)}", st.lists(quota_names, min_size=1, max_size=2)),
    st.builds(lambda m, lim, w, s: f"limit {m} to {lim} per {w} for each {s}",
              metrics, limits, windows, scopes),
    st.builds(lambda ss: f"check {', '.join(ss)}", st.lists(strings, min_size=1, max_size=2)),
    st.builds(lambda m, c: f"route {m}" + (f" if {c}" if c else ""), strings,
              st.one_of(st.just(""), conditions(2))),
    st.builds(lambda k, v: f"annotate {k} = {v}", strings, strings),
)
rules = st.builds(
    lambda n, prio, shadow, cond, acts: (
        f"rule {n}{prio}{shadow} {{\n"
        + (f"    when {cond}\n" if cond else "")
        + "".join(f"    {a}\n" for a in acts)
        + "}"
    ),
    names,
    st.sampled_from(["", " priority 10", " priority -5", " priority 1000000000000"]),
    st.sampled_from(["", " shadow"]),
    st.one_of(st.just(""), conditions()),
    st.lists(actions, max_size=4),
)
prices = st.builds(
    lambda g, i, o: f"price {g} input {i} output {o} per 1M tokens",
    strings, st.sampled_from(["0", "1", "2.5", "-1"]), st.sampled_from(["0", "3", "1_000"]),
)
tests = st.builds(
    lambda n, req, exp: f'test "{n}" {{\n    request {{ {req} }}\n    expect {exp}\n}}',
    names,
    st.sampled_from(['user: {id: "u", metadata: {tier: "free"}}, model: "m"', 'model: "m"',
                     "user: \"u\"", 'model: ""']),
    st.sampled_from(["allow", "deny", 'route "m"', "quotas a, b", "reason QUOTA_EXCEEDED"]),
)
files = st.builds(
    lambda default, decls: "\n".join(([default] if default else []) + decls) + "\n",
    st.sampled_from(["", "default allow", 'default deny "no"'] * 3 + ["default maybe"]),
    st.lists(st.one_of(quotas, rules, prices, tests,
                       st.sampled_from(["schema user { tier: string, n: number }",
                                        "schema group { credits: number, x: list<string> }"])),
             max_size=8),
)

REQUESTS: list[dict[str, Any]] = [
    {"model": "m"},
    {"user": {"id": "u", "metadata": {"tier": "free", "n": 5, "categories": ["a"]}},
     "group": {"id": "g", "metadata": {"credits": 1e308}}, "model": "openai/x",
     "estimate": {"input_tokens": 10, "output_tokens": 10}},
    {"user": {"id": "u", "metadata": {"n": -1e308, "a": {"b": None}}}, "model": "small",
     "attributes": {"ip": "1"}},
]


def _inside(text: str, error: RulesError) -> None:
    lines = text.count("\n") + 1
    for d in error.errors:
        assert d.message
        assert 0 <= d.line <= lines + 1, (d.line, lines, d.message)
        assert d.column >= 0


@FUZZ
@given(files)
def test_generated_rule_files_compile_or_say_why(text: str) -> None:
    try:
        ruleset = load_text(text, "gen.rules")
    except RulesError as error:
        _inside(text, error)
        return
    # it compiled: the canonical layout compiles to the same rules, and is a fixed point
    formatted = format_file(parse_text(text, "gen.rules"))
    assert format_file(parse_text(formatted, "gen.rules")) == formatted
    again = load_text(formatted, "gen.rules")
    assert [r.name for r in again.rules] == [r.name for r in ruleset.rules]
    assert set(again.quotas) == set(ruleset.quotas)
    engine = Engine(ruleset)
    for request in REQUESTS:
        decision = engine.decide(request)
        assert decision.reason in {"ALLOWED", "DENIED_BY_RULE", "DEFAULT_DENY",
                                   "QUOTA_EXCEEDED", "QUOTA_UNRESOLVED"}
        engine.explain(request)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_through_the_whole_pipeline(text: str) -> None:
    try:
        load_text(text, "junk.rules")
    except RulesError as error:
        _inside(text, error)
