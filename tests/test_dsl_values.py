"""Value semantics: path lookup, JSON equality, ordering, `in`, globs and index keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.dsl.ast import Path
from tollway.dsl.compiled import EvalContext
from tollway.dsl.values import (
    NULL_KEY,
    compile_glob,
    contains,
    equals,
    getter,
    glob_match,
    index_key,
    ordered,
    resolve,
)

CTX = EvalContext(
    user_id="u1",
    user={"tier": "free", "id": "not-the-id", "org": {"team": {"name": "core"}, "n": 3},
          "categories": ["vip", "beta"], "flag": True, "score": 2.5, "nothing": None},
    group_id="g1",
    group={"monthly_credits": 500, "id": "shadow"},
    request={"model": "openai/gpt-5", "endpoint": "/v1/chat"},
)


# ----------------------------------------------------------------- resolve


@pytest.mark.parametrize(("path", "expected"), [
    (("user", "id"), "u1"),
    (("user", "tier"), "free"),
    (("user", "org", "team", "name"), "core"),
    (("user", "org", "n", "deeper"), None),  # a number on the way: null
    (("user", "tier", "x"), None),  # a string on the way: null
    (("user", "missing"), None),
    (("user", "missing", "deeper"), None),
    (("user", "nothing"), None),
    (("user", "id", "x"), None),
    (("user", "categories"), ["vip", "beta"]),
    (("group", "id"), "g1"),
    (("group", "monthly_credits"), 500),
    (("group", "missing"), None),
    (("request", "model"), "openai/gpt-5"),
    (("request", "endpoint"), "/v1/chat"),
    (("request", "missing"), None),
    (("request", "model", "x"), None),
    (("user",), None),
    (("elsewhere", "x"), None),
])
def test_resolve_and_getter_agree(path: tuple[str, ...], expected: object) -> None:
    assert resolve(CTX, path) == expected
    assert resolve(CTX, Path(path)) == expected
    assert getter(path)(CTX) == expected
    assert getter(Path(path))(CTX) == expected


def test_ids_win_over_metadata_keys_named_id() -> None:
    assert resolve(CTX, ("user", "id")) == "u1"
    assert resolve(CTX, ("group", "id")) == "g1"


@pytest.mark.parametrize("path", [("user", "id"), ("user", "tier"), ("user", "org", "n")])
def test_without_user_every_user_path_is_null(path: tuple[str, ...]) -> None:
    ctx = EvalContext(user_id=None, user={"tier": "free", "org": {"n": 1}}, request={"model": "m"})
    assert resolve(ctx, path) is None
    assert getter(path)(ctx) is None


@pytest.mark.parametrize("path", [("group", "id"), ("group", "monthly_credits")])
def test_without_group_every_group_path_is_null(path: tuple[str, ...]) -> None:
    ctx = EvalContext(user_id="u", group_id=None, group={"monthly_credits": 5})
    assert resolve(ctx, path) is None
    assert getter(path)(ctx) is None


def test_request_paths_do_not_need_entities() -> None:
    ctx = EvalContext(request={"model": "m"})
    assert resolve(ctx, ("request", "model")) == "m"


# ------------------------------------------------------------------ equals


@pytest.mark.parametrize(("a", "b", "expected"), [
    (1, 1.0, True),
    (1, 1, True),
    (0, -0.0, True),
    (True, 1, False),
    (1, True, False),
    (False, 0, False),
    (0.0, False, False),
    (True, True, True),
    (False, False, True),
    (True, False, False),
    (None, None, True),
    (None, 0, False),
    (None, "", False),
    (None, False, False),
    ("", None, False),
    ("a", "a", True),
    ("a", "b", False),
    ("1", 1, False),
    ([1, "a"], [1.0, "a"], True),
    ([1], [True], False),
    ([1, 2], [1], False),
    ([], [], True),
    ([[1]], [[1.0]], True),
    ([None], [None], True),
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1}, {"a": True}, False),
    ({"a": 1}, {"b": 1}, False),
    ([1], 1, False),
    ("a", ["a"], False),
    (float("nan"), float("nan"), False),
])
def test_equals(a: object, b: object, expected: bool) -> None:
    assert equals(a, b) is expected
    assert equals(b, a) is expected


# ------------------------------------------------------------------ ordered


@pytest.mark.parametrize(("op", "a", "b", "expected"), [
    ("<", 1, 2, True),
    ("<", 2, 1, False),
    ("<=", 2, 2.0, True),
    (">", 2.5, 2, True),
    (">=", 2, 3, False),
    ("<", "a", "b", True),
    (">", "b", "a", True),
    ("<=", "a", "a", True),
    ("<", "B", "a", True),  # lexicographic by code point
    ("<", 1, "2", False),
    ("<", "1", 2, False),
    ("<", None, 1, False),
    (">=", None, None, False),
    ("<", True, 2, False),
    (">", 2, False, False),
    ("<=", True, True, False),
    ("<", [1], [2], False),
    (">", float("nan"), 1, False),
    ("<", 1, float("nan"), False),
])
def test_ordered(op: str, a: object, b: object, expected: bool) -> None:
    assert ordered(op, a, b) is expected


# ----------------------------------------------------------------- contains


@pytest.mark.parametrize(("container", "item", "expected"), [
    (["a", "b"], "a", True),
    (["a", "b"], "c", False),
    ([1, 2], 1.0, True),
    ([1, 2], True, False),
    ([True], 1, False),
    ([True], True, True),
    ([None, "a"], None, False),  # null is never in anything
    ([[1]], [1.0], True),
    ([], "a", False),
    ("abc", "a", False),  # not a list: no substring search
    ({"a": 1}, "a", False),
    (None, "a", False),
    (5, 5, False),
])
def test_contains(container: object, item: object, expected: bool) -> None:
    assert contains(container, item) is expected


# -------------------------------------------------------------------- globs


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("openai/*", "openai/gpt-5", True),
    ("openai/*", "openai/", True),
    ("openai/*", "openai", False),
    ("*", "", True),
    ("*", "anything/at/all", True),
    ("", "", True),
    ("", "a", False),
    ("?", "a", True),
    ("?", "", False),
    ("?", "ab", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("*/gpt-?", "openai/gpt-5", True),
    ("*/gpt-?", "openai/gpt-55", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "aXbYc", True),
    ("a*b*c", "acb", False),
    ("*a", "aaa", True),
    ("a*a", "a", False),
    ("a*a", "aa", True),
    ("**", "x", True),
    ("*?*", "", False),
    ("*?*", "x", True),
    ("a?*?b", "axyb", True),
    ("a?*?b", "axb", False),
    ("[a]", "[a]", True),  # brackets are literal: no character classes
    ("[a]", "a", False),
    (".*", "abc", False),  # regex syntax is literal too
    (".*", ".xyz", True),
    ("a\\*", "a\\anything", True),  # no escapes: the backslash is a literal character
    ("*ab?d*", "xxabcabzdyy", True),
    ("*ab?d", "abcdab_d", True),
    ("*ab?d", "abcdab_e", False),
    ("azure-eu/*", "openai/x", False),
])
def test_glob(pattern: str, text: str, expected: bool) -> None:
    assert glob_match(pattern, text) is expected
    assert compile_glob(pattern)(text) is expected


@pytest.mark.parametrize("subject", [None, 1, True, ["openai/x"], {"a": "b"}])
def test_glob_subject_must_be_a_string(subject: object) -> None:
    assert glob_match("*", subject) is False
    assert compile_glob("*")(subject) is False
    assert compile_glob("a*b?c")(subject) is False


def test_adversarial_globs_complete() -> None:
    """Patterns that make backtracking matchers exponential are linear-ish here."""
    text = "a" * 10_000
    for pattern in ("*a*a*a*a*a*b", "*a*a*a*a*a*a*a*a*a*a*?b", "a*" * 40 + "b", "*?a?*?a?*b"):
        assert glob_match(pattern, text) is False
        assert compile_glob(pattern)(text) is False
    assert compile_glob("*a*a*a*a*a*a")(text) is True
    assert glob_match("*a*a*a*a*a*a", text) is True


def _regex_oracle(pattern: str, text: str) -> bool:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(body, text, flags=re.DOTALL) is not None


@given(st.text(alphabet="ab*?/", max_size=8), st.text(alphabet="ab/", max_size=10))
def test_glob_matchers_agree_with_a_regex_oracle(pattern: str, text: str) -> None:
    expected = _regex_oracle(pattern, text)
    assert glob_match(pattern, text) is expected
    assert compile_glob(pattern)(text) is expected


# --------------------------------------------------------------- index keys


def test_index_key_follows_equality() -> None:
    assert index_key(True) != index_key(1)
    assert index_key(False) != index_key(0)
    assert index_key(1) == index_key(1.0)
    assert hash(index_key(1)) == hash(index_key(1.0))
    assert index_key(None) == NULL_KEY
    others: tuple[object, ...] = ("", 0, False, "null", [])
    assert index_key(None) not in {index_key(v) for v in others}
    assert index_key("1") != index_key(1)
    assert index_key([1, "a"]) == index_key([1.0, "a"])
    assert index_key([1]) != index_key([True])
    assert index_key({"a": [1]}) == index_key({"a": [1.0]})
    assert index_key(float("nan")) != index_key(float("nan"))


_json: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5, -1.0])
    | st.sampled_from(["", "a", "b", "1", "true"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xy"), inner,
                                                                max_size=2),
    max_leaves=6,
)


@given(_json, _json)
def test_index_key_equal_exactly_when_values_equal(a: object, b: object) -> None:
    assert (index_key(a) == index_key(b)) is equals(a, b)
    hash(index_key(a))
