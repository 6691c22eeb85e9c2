"""Identity from an HTTP request: precedence, OpenAI's metadata limits, attribute headers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from tollway import Engine
from tollway.policy.validate import FieldError
from tollway.server.identity import identity_from_http, parse_attribute_headers


def tollway_meta(**entities: Any) -> dict[str, str]:
    return {"tollway": json.dumps(entities)}


def test_nothing_names_nobody() -> None:
    assert identity_from_http({}, None) == {
        "user": None,
        "group": None,
        "model": "",
        "attributes": {},
    }
    assert identity_from_http({}, {"model": "openai/gpt-5"})["model"] == "openai/gpt-5"


def test_each_user_source_alone() -> None:
    meta = tollway_meta(user={"id": "from-meta", "metadata": {"tier": "pro"}})
    assert identity_from_http({}, {"metadata": meta})["user"] == {
        "id": "from-meta",
        "metadata": {"tier": "pro"},
    }
    assert identity_from_http({"x-tollway-user": "from-header"}, None)["user"] == {
        "id": "from-header"
    }
    assert identity_from_http({}, {"safety_identifier": "hashed"})["user"] == {"id": "hashed"}
    assert identity_from_http({}, {"user": "end-user"})["user"] == {"id": "end-user"}


def test_precedence_metadata_then_headers_then_safety_identifier_then_user() -> None:
    headers = {"x-tollway-user": "h", "x-tollway-user-metadata": '{"tier": "free"}'}
    body: dict[str, Any] = {
        "metadata": tollway_meta(user={"id": "m", "metadata": {"tier": "pro"}}),
        "safety_identifier": "s",
        "user": "u",
    }
    assert identity_from_http(headers, body)["user"] == {"id": "m", "metadata": {"tier": "pro"}}
    del body["metadata"]
    assert identity_from_http(headers, body)["user"] == {"id": "h", "metadata": {"tier": "free"}}
    assert identity_from_http({}, body)["user"] == {"id": "s"}
    del body["safety_identifier"]
    assert identity_from_http({}, body)["user"] == {"id": "u"}


def test_id_and_metadata_each_come_from_the_first_source_that_has_them() -> None:
    # the body names the user, the gateway's header says its tier
    got = identity_from_http({"x-tollway-user-metadata": '{"tier": "pro"}'}, {"user": "alice"})
    assert got["user"] == {"id": "alice", "metadata": {"tier": "pro"}}
    got = identity_from_http(
        {"x-tollway-user": "h", "x-tollway-user-metadata": '{"tier": "pro"}'},
        {"metadata": tollway_meta(user={"id": "m"})},
    )
    assert got["user"] == {"id": "m", "metadata": {"tier": "pro"}}


def test_groups_come_from_metadata_or_headers_only() -> None:
    got = identity_from_http(
        {"x-tollway-group": "acme", "x-tollway-group-metadata": '{"credits": 5}'},
        {"user": "u", "safety_identifier": "s"},
    )
    assert got["group"] == {"id": "acme", "metadata": {"credits": 5}}
    got = identity_from_http(
        {"x-tollway-group": "header-group"}, {"metadata": tollway_meta(group="meta-group")}
    )
    assert got["group"] == {"id": "meta-group"}


def test_headers_in_lower_case_or_a_case_insensitive_mapping() -> None:
    headers = CIMultiDict({"X-Tollway-User": "alice", "X-Team": "search"})
    got = identity_from_http(headers, None, attribute_headers={"x-team": "team"})
    assert got["user"] == {"id": "alice"} and got["attributes"] == {"team": "search"}
    # a plain dict may spell names in any case too
    assert identity_from_http({"X-Tollway-User": "alice"}, None)["user"] == {"id": "alice"}


def test_attribute_headers() -> None:
    mapping = parse_attribute_headers(["X-Team=team", ":path=endpoint", "x-region = region"])
    assert mapping == {"x-team": "team", ":path": "endpoint", "x-region": "region"}
    got = identity_from_http(
        {"x-team": "search", ":path": "/v1/chat/completions", "x-other": "no"},
        None,
        attribute_headers=mapping,
    )
    assert got["attributes"] == {"team": "search", "endpoint": "/v1/chat/completions"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x-team", "attribute-header: expected HEADER=ATTRIBUTE, got 'x-team'"),
        ("=team", "attribute-header: expected HEADER=ATTRIBUTE, got '=team'"),
        ("x-team=", "attribute-header: expected HEADER=ATTRIBUTE, got 'x-team='"),
        ("x team=team", "attribute-header: 'x team' is not a header name"),
        (":=team", "attribute-header: ':' is not a header name"),
        ("x-model=model", "attribute-header: 'model' is not an attribute (request.model is)"),
    ],
)
def test_bad_attribute_header_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_attribute_headers([spec])
    assert str(caught.value) == message


def test_a_header_mapped_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="mapped twice"):
        parse_attribute_headers(["x-a=a", "X-A=b"])


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        (
            {},
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata: 17 keys is over OpenAI's limit of 16",
        ),
        (
            {},
            {"metadata": {"k" * 65: "v"}},
            f"metadata: key {'k' * 65!r} is over OpenAI's limit of 64 characters",
        ),
        (
            {},
            {"metadata": {"note": "v" * 513}},
            "metadata.note: 513 characters is over OpenAI's limit of 512",
        ),
        ({}, {"metadata": {"n": 5}}, "metadata.n: must be a string, got int"),
        ({}, {"metadata": ["x"]}, "metadata: must be an object of strings, got list"),
        ({}, {"metadata": {"tollway": "{nope"}}, "metadata.tollway: not valid JSON"),
        ({}, {"metadata": {"tollway": "[1]"}}, "metadata.tollway: must be a JSON object, got list"),
        (
            {},
            {"metadata": {"tollway": '{"usr": {}}'}},
            "metadata.tollway: unknown field 'usr' (expected user and group)",
        ),
        (
            {},
            {"metadata": {"tollway": '{"user": 5}'}},
            "metadata.tollway.user: must be an object, got int",
        ),
        (
            {},
            {"metadata": {"tollway": '{"user": {"id": "a", "tier": "x"}}'}},
            "metadata.tollway.user: unknown field 'tier'",
        ),
        (
            {"x-tollway-user-metadata": "{bad"},
            {"user": "u"},
            "x-tollway-user-metadata: not valid JSON",
        ),
        (
            {"x-tollway-group-metadata": "5"},
            None,
            "x-tollway-group-metadata: must be a JSON object, got int",
        ),
        ({"x-tollway-user-metadata": "{}"}, None, "user: metadata was sent but no user id"),
        ({}, {"model": 5}, "model: must be a string, got int"),
        ({}, {"user": ["u"]}, "user: must be a string, got list"),
        ({}, {"safety_identifier": 1}, "safety_identifier: must be a string, got int"),
    ],
)
def test_bad_identity_names_its_field(
    headers: dict[str, str], body: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(FieldError) as caught:
        identity_from_http(headers, body)
    assert str(caught.value).startswith(message)
    assert str(caught.value).startswith(caught.value.field + ": ")


def test_the_limits_themselves_are_allowed() -> None:
    meta = {f"k{i}": "v" for i in range(15)}
    meta["k" * 64] = "v" * 512
    assert identity_from_http({}, {"metadata": meta})["user"] is None


def test_the_result_is_a_decide_request() -> None:
    engine = Engine.from_text('rule pro { when user.tier == "pro"\n annotate "t" = "pro" }')
    request = identity_from_http(
        {"x-team": "t1"},
        {"model": "m", "metadata": tollway_meta(user={"id": "u", "metadata": {"tier": "pro"}})},
        attribute_headers={"x-team": "team"},
    )
    d = engine.decide(request)
    assert d.annotations == {"t": "pro"} and d.model == "m"
    # ids and metadata are checked by the engine, naming the request's field
    too_long = identity_from_http({"x-tollway-user": "u" * 257}, None)
    with pytest.raises(ValueError, match=r"^user\.id: 257 bytes is over the limit of 256"):
        engine.decide(too_long)


def test_importing_it_pulls_in_no_transport() -> None:
    code = (
        "import sys, tollway.server.identity, tollway.server.openai_errors\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'aiohttp', 'redis')]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(
    st.sampled_from(["model", "user", "safety_identifier", "metadata", "messages"]),
    json_values
    | st.dictionaries(
        st.sampled_from(["tollway", "x"]),
        st.text(max_size=30) | json_values.map(json.dumps),
        max_size=2,
    ),
    max_size=4,
)
header_sets = st.dictionaries(
    st.sampled_from(
        [
            "x-tollway-user",
            "x-tollway-group",
            "x-tollway-user-metadata",
            "x-tollway-group-metadata",
            "x-team",
        ]
    ),
    st.text(max_size=20) | json_values.map(json.dumps),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(header_sets, bodies)
def test_any_input_gives_a_request_or_a_value_error(
    headers: dict[str, str], body: dict[str, Any]
) -> None:
    try:
        got = identity_from_http(headers, body, attribute_headers={"x-team": "team"})
    except ValueError as exc:
        assert ": " in str(exc)  # names its field
        return
    assert set(got) == {"user", "group", "model", "attributes"}
    assert isinstance(got["model"], str)
    for kind in ("user", "group"):
        assert got[kind] is None or set(got[kind]) <= {"id", "metadata"}
