"""``fmt``: canonical layout, comments kept, re-parses to the same tree, idempotent."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tollway.dsl import ast
from tollway.dsl.formatter import format_file
from tollway.dsl.nowhere import strip_positions
from tollway.dsl.parser import parse_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"


def meaning(rf: ast.RuleFile) -> object:
    """Everything of a file but its positions, name and comments."""
    return strip_positions((rf.default, rf.schemas, rf.quotas, rf.prices, rf.rules, rf.tests))


def fmt(text: str) -> str:
    return format_file(parse_text(text, "f.rules"))


def assert_stable(text: str) -> str:
    """Format ``text``; check the result means the same and formats to itself."""
    before = parse_text(text, "f.rules")
    out = format_file(before)
    after = parse_text(out, "f.rules")
    assert meaning(after) == meaning(before)
    assert format_file(after) == out
    return out


def test_the_example_is_already_formatted() -> None:
    text = EXAMPLE.read_text()
    assert assert_stable(text) == text


def test_canonical_layout() -> None:
    messy = """default   deny   "no"
quota  a   limits requests to 100   per 1h for   each user
quota long_name limits cost to 10%   of group.credits or 5000 per month for each user in group and model on_store_error allow
rule   r   shadow   priority 5 {   when user.a==1 and(user.b>2 or not user.c exists)  enforce a,long_name
route "m" if request.model~"x*"   annotate "k"="v" }
test "t" { request {user:{id:"u",metadata:{n:[1,2.5,null,true]}},model:"m"} times 3 expect quotas a , long_name expect annotate "k"="v" }
"""
    assert (
        assert_stable(messy)
        == """default deny "no"

quota a         limits requests to 100 per 1h for each user
quota long_name limits cost to 10% of group.credits or 5_000 per month for each user in group and model

rule r priority 5 shadow {
    when user.a == 1 and (user.b > 2 or not user.c exists)
    enforce a, long_name
    route "m" if request.model ~ "x*"
    annotate "k" = "v"
}

test "t" {
    request { user: {id: "u", metadata: {n: [1, 2.5, null, true]}}, model: "m" } times 3
    expect quotas a, long_name
    expect annotate "k" = "v"
}
"""
    )


def test_comments_survive_in_their_places() -> None:
    text = """# file header

# about quotas
quota q limits requests to 10 per 1h for each user  # trailing on a quota
rule a {   # on the header
  # before when
  when user.x == 1 and   # on a continued line
     user.y == 2
  # before enforce
  enforce q # after enforce
  # last in the block
}   # after the brace
# between blocks
test "t" {
  request {
    user: {id: "u"},  # inside an object
    # own line inside an object
    model: "m"
  }
  expect allow # yes
}
# the end
"""
    out = assert_stable(text)
    assert (
        out
        == """# file header

# about quotas
quota q limits requests to 10 per 1h for each user  # trailing on a quota

rule a {  # on the header
    # before when
    when user.x == 1 and user.y == 2  # on a continued line
    # before enforce
    enforce q  # after enforce
    # last in the block
}  # after the brace

# between blocks
test "t" {
    request { user: {id: "u"}, model: "m" }  # inside an object
    # own line inside an object
    expect allow  # yes
}

# the end
"""
    )


def test_a_file_of_comments_and_odd_values() -> None:
    out = assert_stable(
        'rule r { deny "tab\\tquote\\"back\\\\slash\\u0001é" }\n'
        'rule s { when user."key with space".in == -1.5 allow }\n'
    )
    assert 'deny "tab\\tquote\\"back\\\\slash\\u0001é"' in out
    assert 'when user."key with space".in == -1.5' in out


def test_nested_groups_keep_their_parentheses() -> None:
    out = assert_stable(
        "rule r { when (user.a == 1 or user.b == 1) and not (user.c == 1 and user.d == 1)"
        " and (user.e == 1 and user.f == 1) or not not user.g exists allow }"
    )
    assert out.splitlines()[1] == (
        "    when (user.a == 1 or user.b == 1) and not (user.c == 1 and user.d == 1) and "
        "(user.e == 1 and user.f == 1) or not not user.g exists"
    )


# ------------------------------------------------------- generated syntax trees

idents = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,7}", fullmatch=True)
texts = st.text(max_size=8)
ints = st.integers(-(10**9), 10**9)
floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
numbers = st.one_of(ints, floats)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
keys = st.one_of(idents, st.text(min_size=1, max_size=6))
paths = st.builds(
    lambda root, rest: ast.Path((root, *rest)),
    st.sampled_from(["user", "group", "request"]),
    st.lists(keys, min_size=1, max_size=3),
)
literals = st.builds(ast.Literal, scalars)
operands = st.one_of(paths, literals)
ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
atoms = st.one_of(
    st.builds(ast.Compare, ops, operands, operands),
    st.builds(
        ast.In, operands, st.builds(ast.ListLiteral, st.lists(scalars, max_size=3).map(tuple))
    ),
    st.builds(ast.In, literals, paths),
    st.builds(ast.Glob, paths, texts),
    st.builds(ast.Exists, paths),
    st.builds(ast.Literal, st.booleans()),
)
exprs = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(ast.And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
        st.builds(ast.Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
        st.builds(ast.Not, inner),
    ),
    max_leaves=8,
)
limits = st.one_of(
    st.builds(lambda v: ast.Limit(value=v), numbers),
    st.builds(lambda p, f: ast.Limit(path=p, fallback=f), paths, st.none() | numbers),
    st.builds(
        lambda pc, p, f: ast.Limit(percent=pc, path=p, fallback=f),
        numbers,
        paths,
        st.none() | numbers,
    ),
)
units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
windows = st.one_of(
    st.builds(
        lambda n, u: ast.Window(seconds=n * units[u], text=f"{n}{u}"),
        st.integers(0, 10_000),
        st.sampled_from(sorted(units)),
    ),
    st.sampled_from(["day", "week", "month"]).map(lambda c: ast.Window(calendar=c, text=c)),  # type: ignore[arg-type]
    st.sampled_from(["5x", "hour"]).map(lambda t: ast.Window(text=t)),
)
scopes = st.builds(
    ast.Scope,
    st.sampled_from(list(ast.SCOPE_SUBJECTS)),
    st.booleans(),  # type: ignore[arg-type]
)


def quota_of(name: str) -> st.SearchStrategy[ast.Quota]:
    return st.builds(
        ast.Quota,
        st.just(name),
        st.sampled_from(list(ast.METRICS)),
        limits,
        windows,
        scopes,  # type: ignore[arg-type]
        st.sampled_from(["allow", "deny"]),
    )


simple_actions = st.one_of(
    st.builds(ast.Deny, texts),
    st.builds(ast.Allow),
    st.lists(idents, min_size=1, max_size=3).map(
        lambda ns: ast.Enforce(tuple(ns), name_pos=tuple(ast.NOWHERE for _ in ns))
    ),
    st.builds(ast.Check, st.lists(texts, min_size=1, max_size=3).map(tuple)),
    st.builds(ast.Route, texts, st.none() | exprs),
    st.builds(ast.Annotate, texts, texts),
)


@st.composite
def rules(draw: st.DrawFn, order: int) -> ast.Rule:
    name = draw(idents)
    actions: list[ast.Action] = []
    inline = 0
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()) and inline < 2:
            inline += 1
            actions.append(ast.InlineLimit(draw(quota_of(f"{name}.limit{inline}"))))
        else:
            actions.append(draw(simple_actions))
    return ast.Rule(
        name, draw(st.none() | exprs), tuple(actions), draw(ints), draw(st.booleans()), order
    )


json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)
names = st.one_of(idents, st.text(min_size=1, max_size=6), st.just("r.limit1"))
expects = st.one_of(
    st.just(ast.Expect("allow")),
    st.builds(lambda a: ast.Expect("deny", a), st.just(()) | texts.map(lambda t: (t,))),
    st.sampled_from(["ALLOWED", "QUOTA_EXCEEDED"]).map(lambda r: ast.Expect("reason", (r,))),
    st.builds(lambda k, t: ast.Expect(k, (t,)), st.sampled_from(["route", "model"]), texts),
    st.builds(
        lambda k, ns: ast.Expect(k, tuple(ns)),
        st.sampled_from(["quotas", "rules", "exceeded"]),
        st.lists(names, min_size=1, max_size=3),
    ),
    st.builds(lambda ns: ast.Expect("checks", tuple(ns)), st.lists(texts, min_size=1, max_size=2)),
    st.builds(lambda k, v: ast.Expect("annotate", (k, v)), texts, texts),
)
steps = st.builds(
    ast.TestStep,
    st.dictionaries(keys, json_values, max_size=3),
    st.integers(1, 1000),
    st.lists(expects, max_size=3).map(tuple),
)
tests = st.builds(ast.TestCase, texts, st.lists(steps, max_size=2).map(tuple))
type_refs = st.recursive(
    st.sampled_from(["string", "number", "bool", "any"]).map(ast.TypeRef),  # type: ignore[arg-type]
    lambda inner: st.builds(lambda e: ast.TypeRef("list", e), inner),
    max_leaves=3,
)
schemas = st.builds(
    ast.Schema,
    st.sampled_from(["user", "group", "request"]),
    st.lists(
        st.builds(ast.SchemaField, idents, type_refs, admin=st.booleans()), max_size=3
    ).map(tuple),
)


prices = st.builds(
    lambda pattern, i, o, c, per: ast.Price(pattern, i, o, c, *per),
    texts,
    numbers,
    numbers,
    st.none() | numbers,
    st.sampled_from([(1_000_000, "1M"), (1000, "1K"), (1000, "1k"), (2_000_000, "2M")]),
)


@st.composite
def rule_files(draw: st.DrawFn) -> ast.RuleFile:
    quota_names = draw(st.lists(idents, max_size=3))
    n_rules = draw(st.integers(0, 3))
    return ast.RuleFile(
        "g.rules",
        draw(
            st.none()
            | st.builds(ast.Default, st.sampled_from(["allow", "deny"]), texts).map(
                lambda d: d if d.effect == "deny" else ast.Default("allow")
            )
        ),
        tuple(draw(st.lists(schemas, max_size=2))),
        tuple(draw(quota_of(n)) for n in quota_names),
        tuple(draw(rules(i)) for i in range(n_rules)),
        tuple(draw(st.lists(tests, max_size=2))),
        prices=tuple(draw(st.lists(prices, max_size=3))),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_files())
def test_any_tree_formats_to_text_that_parses_back_to_it(rf: ast.RuleFile) -> None:
    out = format_file(rf)
    assume(out)  # an empty file is refused by design
    back = parse_text(out, "g.rules")
    assert meaning(back) == meaning(rf), out
    assert format_file(back) == out


@st.composite
def commented_files(draw: st.DrawFn) -> str:
    """Formatted text of a random tree with comments sprinkled over it."""
    text = format_file(draw(rule_files()))
    assume(text)
    out: list[str] = []
    for i, line in enumerate(text.splitlines()):
        where = draw(st.sampled_from(["none", "none", "before", "after", "both"]))
        if where in ("before", "both"):
            out.append(f"# own {i}")
        out.append(f"{line}  # tail {i}" if where in ("after", "both") and line else line)
    if draw(st.booleans()):
        out.append("# the very end")
    return "\n".join(out) + "\n"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commented_files())
def test_no_comment_is_ever_lost(text: str) -> None:
    before = parse_text(text, "c.rules")
    out = format_file(before)
    for comment in before.comments:
        assert comment.text in out
    after = parse_text(out, "c.rules")
    assert meaning(after) == meaning(before)
    assert format_file(after) == out
