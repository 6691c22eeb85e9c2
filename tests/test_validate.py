"""``policy.validate``: the one home of every check, its ranges and its message format."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.policy import validate, windows
from tollway.policy.model import DecideRequest, UsageReport
from tollway.policy.validate import (
    MAX_COST_USD,
    MAX_DURATION_SECONDS,
    MAX_TOKENS,
    FieldError,
    need_id,
    need_kind,
    need_seconds,
    need_text,
    need_tokens,
    need_usd,
    need_whole,
)

MESSAGE = re.compile(r"^[A-Za-z_][\w.\[\]]*: \S")


def refusal(call: Any, *args: Any) -> FieldError:
    with pytest.raises(FieldError) as err:
        call(*args)
    assert MESSAGE.match(str(err.value)), str(err.value)
    assert str(err.value) == f"{err.value.field}: {err.value.problem}"
    return err.value


@pytest.mark.parametrize(("spelling", "kind"), [
    ("user", "user"), ("users", "user"), ("group", "group"), ("groups", "group"),
])
def test_kind_accepts_singular_and_plural(spelling: str, kind: str) -> None:
    assert need_kind(spelling) == kind


@pytest.mark.parametrize("bad", ["", "User", "team", None, 1, "users "])
def test_any_other_kind_is_refused(bad: Any) -> None:
    assert refusal(need_kind, bad).field == "kind"


def test_ids_are_1_to_256_utf8_bytes() -> None:
    assert need_id("x" * 256, "user.id") == "x" * 256
    assert need_id("é" * 128, "user.id") == "é" * 128  # 256 bytes
    assert refusal(need_id, "é" * 129, "user.id").problem == "258 bytes is over the limit of 256"
    assert refusal(need_id, "", "user.id").problem == "must not be empty"
    assert refusal(need_id, 5, "user.id").problem == "must be a string, got int"
    assert need_id("", "request_id", required=False) == ""
    assert refusal(need_text, "a\ud800", "model", 10).field == "model"  # no store can encode it


@pytest.mark.parametrize(("check", "high"), [
    (need_tokens, MAX_TOKENS), (need_usd, MAX_COST_USD), (need_seconds, MAX_DURATION_SECONDS),
])
def test_numbers_are_checked_against_their_documented_range(check: Any, high: float) -> None:
    assert check(None, "f") == 0
    assert check(0, "f") == 0
    assert check(high, "f") == high
    assert "over the limit" in refusal(check, high * 2, "f").problem
    assert "negative" in refusal(check, -1, "f").problem
    for bad in (math.nan, math.inf, True, "3"):
        refusal(check, bad, "f")


def test_a_token_count_is_whole() -> None:
    assert need_tokens(3.0, "t") == 3
    assert refusal(need_tokens, 2.5, "t").problem == "must be a whole number, got 2.5"


@pytest.mark.parametrize("text", ["١٢", "²", "12a", "-1", "1e3", "1" * 20])
def test_url_integers_are_ascii_digits_only(text: str) -> None:
    assert refusal(need_whole, text, "limit", 0, 10**9, 25).field == "limit"


def test_url_integers_in_range_and_default() -> None:
    assert need_whole(" 12 ", "limit", 1, 100, 25) == 12
    assert need_whole("", "limit", 1, 100, 25) == 25
    assert refusal(need_whole, "101", "limit", 1, 100, 25).problem == (
        "must be between 1 and 100, got 101"
    )


def test_the_maxima_fit_a_counter_exactly() -> None:
    """A request that passed validation cannot be refused later, when a store converts it
    (which would be after its metadata was merged): every maximum converts within range."""
    assert windows.amount_units(MAX_TOKENS, "tokens") * 2 < windows.MAX_UNITS
    assert windows.amount_units(MAX_COST_USD, "cost") < windows.MAX_UNITS // 900_000
    # usage totals: nano-USD and microseconds in 64 bits, 900,000 maximal reports
    assert MAX_COST_USD * 1e9 * 900_000 < 2**63
    assert MAX_DURATION_SECONDS * 1e6 * 900_000 < 2**63
    assert 2 * MAX_TOKENS * 900_000 < 2**63


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=12,
)
anything = st.one_of(json_values, st.binary(max_size=8), st.tuples(st.integers()))


@given(st.dictionaries(
    st.sampled_from(["request_id", "user", "group", "model", "attributes", "estimate",
                     "dry_run", "decision_id", "input_tokens", "cost_usd", "duration_seconds",
                     "status", "extra"]),
    anything, max_size=6,
))
def test_parsing_any_mapping_is_a_request_or_a_field_error(data: dict[str, Any]) -> None:
    for parse in (DecideRequest.parse, UsageReport.parse):
        try:
            parse(data)
        except FieldError as exc:
            assert MESSAGE.match(str(exc)), str(exc)


def test_every_check_lives_in_validate() -> None:
    """The model's parsers call ``validate``: no message is spelled anywhere else."""
    import inspect

    from tollway.policy import engine, entity_stores, model, usage

    for module in (model, usage, engine, entity_stores):
        source = inspect.getsource(module)
        assert "must not be empty" not in source, module.__name__
        assert "is over the limit" not in source, module.__name__
    assert validate.KIND_NAMES.keys() == {"user", "users", "group", "groups"}
