"""Values -> messages -> values: each direction of ``server/convert.py`` undoes the other.

The client sends what the server reads back and reads what the server writes, so a
round trip through the wire must give back exactly the value it started from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.dsl.compiled import RuleTrace, TestTrace
from tollway.policy.entities import EntityView
from tollway.policy.model import (
    DecideRequest,
    Decision,
    Explanation,
    QuotaStatus,
    ReportAck,
    ShadowOutcome,
    UsageReport,
)
from tollway.policy.usage_query import UsageQuery
from tollway.policy.validate import MAX_COST_USD, MAX_DURATION_SECONDS, MAX_TOKENS
from tollway.server import convert, usage_convert

text = st.text(max_size=12)
ident = st.text(min_size=1, max_size=20)
names = st.lists(st.text(min_size=1, max_size=8), max_size=4).map(tuple)
json_scalar = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
metadata = st.none() | st.dictionaries(st.text(min_size=1, max_size=6), json_value, max_size=4)
entity = st.none() | st.builds(lambda i, m: {"id": i, "metadata": m}, ident, metadata)
attributes = st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=8), max_size=3)
count = st.integers(0, MAX_TOKENS)
# amounts in whole 1/256ths: exact both as doubles and as Duration/Timestamp nanoseconds
seconds = st.integers(0, 2**30).map(lambda k: k / 256)
money = st.floats(0, MAX_COST_USD, allow_nan=False)
duration = st.floats(0, MAX_DURATION_SECONDS, allow_nan=False)


# Every field of each request and result dataclass is drawn (see
# test_strategies_cover_every_field): a field added to a dataclass and left out of the
# wire conversion fails here.
DECIDE_FIELDS = dict(
    request_id=st.text(max_size=10),
    user=entity,
    group=entity,
    attributes=attributes,
    estimate=st.fixed_dictionaries(
        {}, optional={"input_tokens": count, "output_tokens": count, "cost_usd": money}
    ),
    dry_run=st.booleans(),
)


@settings(max_examples=200)
@given(st.fixed_dictionaries({"model": st.text(min_size=1, max_size=12)}, optional=DECIDE_FIELDS))
def test_a_decide_request_reads_back_as_sent(data: dict[str, Any]) -> None:
    req = DecideRequest.parse(data)
    assert DecideRequest.parse(convert.decide_request(convert.decide_request_to_proto(req))) == req


REPORT_FIELDS = dict(
    decision_id=st.text(max_size=10),
    user=entity,
    group=entity,
    model=text,
    input_tokens=count,
    output_tokens=count,
    cost_usd=money,
    duration_seconds=duration,
    status=st.text(min_size=1, max_size=10),
    attributes=attributes,
)


@settings(max_examples=200)
@given(st.fixed_dictionaries({"request_id": ident}, optional=REPORT_FIELDS), count)
def test_a_usage_report_reads_back_as_sent(data: dict[str, Any], cached: int) -> None:
    if cached <= data.get("input_tokens", 0):  # never more than input_tokens
        data["cached_input_tokens"] = cached
    rep = UsageReport.parse(data)
    assert UsageReport.parse(convert.usage_report(convert.usage_report_to_proto(rep))) == rep


QUOTA_FIELDS = dict(
    name=text, metric=text, scope=text, key=text,
    limit=money, used=money, remaining=money, exceeded=st.booleans(),
    retry_after=seconds,
    resets_at=st.none() | seconds.map(lambda s: 1.7e9 + s),
    kind=st.sampled_from(["quota", "balance"]),
)
quota = st.builds(QuotaStatus, **QUOTA_FIELDS)
SHADOW_FIELDS = dict(
    matched_rules=names, denied=st.booleans(), message=text, model=text,
    routed=st.booleans(), checks=names,
)
shadow = st.builds(ShadowOutcome, **SHADOW_FIELDS)
reasons = st.sampled_from(
    ["ALLOWED", "DENIED_BY_RULE", "DEFAULT_DENY", "QUOTA_EXCEEDED", "QUOTA_UNRESOLVED",
     "STORE_UNAVAILABLE"]
)
DECISION_FIELDS = dict(
    allowed=st.booleans(), reason=reasons, message=text, model=text, routed=st.booleans(),
    checks=names, quotas=st.lists(quota, max_size=3).map(tuple), matched_rules=names,
    annotations=st.dictionaries(text, text, max_size=3), decision_id=text,
    ruleset_version=text, shadow=shadow, ignored_metadata=names,
)
decision = st.builds(Decision, **DECISION_FIELDS)


@settings(max_examples=200)
@given(decision)
def test_a_decision_reads_back_as_the_engine_gave_it(d: Decision) -> None:
    assert convert.decision_from_proto(convert.decision_to_proto(d)) == d


TEST_FIELDS = dict(
    text=text,
    held=st.booleans(),
    values=st.dictionaries(st.text(min_size=1, max_size=8), json_value, max_size=3).map(
        lambda d: tuple(sorted(d.items()))
    ),
)
TRACE_FIELDS = dict(
    rule=text, priority=st.integers(-1000, 1000), shadow=st.booleans(),
    candidate=st.booleans(), matched=st.booleans(),
    tests=st.lists(st.builds(TestTrace, **TEST_FIELDS), max_size=3).map(tuple),
)
trace = st.builds(RuleTrace, **TRACE_FIELDS)


@pytest.mark.parametrize(
    ("cls", "drawn"),
    [
        (QuotaStatus, QUOTA_FIELDS), (ShadowOutcome, SHADOW_FIELDS),
        (Decision, DECISION_FIELDS), (RuleTrace, TRACE_FIELDS), (TestTrace, TEST_FIELDS),
        (DecideRequest, {**DECIDE_FIELDS, "model": text}),
        (UsageReport, {**REPORT_FIELDS, "request_id": ident, "cached_input_tokens": count}),
    ],
)
def test_strategies_cover_every_field(cls: type, drawn: dict[str, Any]) -> None:
    assert set(drawn) == {f.name for f in dataclasses.fields(cls)}


@settings(max_examples=100)
@given(decision, st.lists(trace, max_size=3).map(tuple), st.integers(0, 99), st.integers(0, 99))
def test_an_explanation_reads_back(
    d: Decision, traces: tuple[RuleTrace, ...], candidates: int, total: int
) -> None:
    e = Explanation(d, traces, candidates, total)
    assert convert.explanation_from_proto(convert.explanation_to_proto(e)) == e


@given(
    st.sampled_from(["user", "group"]), ident,
    st.dictionaries(st.text(min_size=1, max_size=6), json_value, max_size=4), names,
)
def test_an_entity_reads_back(kind: Any, i: str, meta: dict[str, Any], links: tuple[str, ...]) -> None:
    assert [f.name for f in dataclasses.fields(EntityView)] == ["kind", "id", "metadata", "links"]
    view = EntityView(kind, i, meta, links)
    assert convert.entity_from_proto(convert.entity_to_proto(view)) == view


def test_an_ack_reads_back() -> None:
    assert [f.name for f in dataclasses.fields(ReportAck)] == ["request_id", "outcome", "duplicate"]
    for ack in (ReportAck("r1", "settled"), ReportAck("r2", "duplicate", True)):
        assert convert.ack_from_proto(convert.ack_to_proto(ack)) == ack


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "kind": st.sampled_from(["users", "groups"]),
            "search": st.text(max_size=8),
            "sort": st.sampled_from(["-total_cost", "last_seen", "-request_count"]),
            "limit": st.integers(1, 100),
            "offset": st.integers(0, 10**6),
            "start": seconds.map(lambda s: 1.6e9 + s),
            "end": seconds.map(lambda s: 1.7e9 + s),
        },
    )
)
def test_a_usage_query_reads_back(params: dict[str, Any]) -> None:
    query = UsageQuery.parse(params)
    assert usage_convert.list_request(usage_convert.list_request_to_proto(query)) == query


@given(st.sampled_from(["user", "group"]), ident)
def test_a_usage_lookup_reads_back(kind: Any, i: str) -> None:
    assert usage_convert.subject(usage_convert.get_request_to_proto(kind, i)) == (kind, i)
