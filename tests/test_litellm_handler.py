"""The LiteLLM hook called as the proxy calls it, with LiteLLM's own objects, against the
real engine in process and a real sidecar (the proxy itself runs in test_litellm_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import ServerThread, import_or_skip

import_or_skip("litellm", "the LiteLLM hook needs the extra .[litellm]")

import litellm  # noqa: E402
from litellm.proxy._types import ProxyException, UserAPIKeyAuth  # noqa: E402

from tollway.integrations.litellm import STATE_KEY, Settings, TollwayHandler  # noqa: E402
from tollway.integrations.litellm.identity import SOURCES, pick, request_identity  # noqa: E402
from tollway.integrations.policy import EmbeddedPolicy  # noqa: E402
from tollway.policy.engine import Engine  # noqa: E402

RULES = Path(__file__).resolve().parent.parent / "examples" / "litellm" / "policy.rules"


def _data(model: str = "openai/gpt-5", *, headers: dict[str, str] | None = None,
          body: dict[str, Any] | None = None, call_id: str = "call-1") -> dict[str, Any]:
    """A request as the proxy hands it to ``async_pre_call_hook``."""
    sent = {"model": model, "messages": [{"role": "user", "content": "hi"}], **(body or {})}
    return {
        **sent,
        "litellm_call_id": call_id,
        "metadata": {"user_api_key_user_id": "proxy-additions", "headers": headers or {}},
        "proxy_server_request": {
            "url": "http://127.0.0.1:4000/v1/chat/completions",
            "method": "POST",
            "headers": headers or {},
            "body": {**sent, "metadata": {**(body or {}).get("metadata", {}), "user_api_key_x": 1}},
        },
    }


def _identity(user: str, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"tollway": json.dumps({"user": {"id": user, "metadata": metadata}})}}


@pytest.fixture()
def engine() -> Iterator[Engine]:
    e = Engine.from_path(RULES)
    yield e
    e.close()


@pytest.fixture()
def handler(engine: Engine) -> TollwayHandler:
    return TollwayHandler(Settings(), EmbeddedPolicy(engine))


def _pre(handler: TollwayHandler, data: dict[str, Any], key: Any = None) -> dict[str, Any]:
    key = key if key is not None else UserAPIKeyAuth(api_key="sk-test")
    return asyncio.run(handler.async_pre_call_hook(key, None, data, "acompletion"))


# ------------------------------------------------------------------ before the call


def test_an_allowed_call_is_routed_and_carries_its_decision(handler: TollwayHandler) -> None:
    data = _pre(handler, _data(body=_identity("t1", tier="trial")))
    assert data["model"] == "openai/gpt-4.1-mini"
    state = data["metadata"][STATE_KEY]
    assert state["decision_id"] and state["request_id"] == "call-1"
    assert (state["requested_model"], state["model"], state["routed"]) == (
        "openai/gpt-5", "openai/gpt-4.1-mini", True,
    )
    assert (state["user"], state["group"], state["checks"]) == ("t1", None, [])
    json.dumps(state)  # plain values: LiteLLM copies and logs metadata


def test_denials_are_litellm_http_errors(handler: TollwayHandler, engine: Engine) -> None:
    for i in range(3):
        _pre(handler, _data(body=_identity("t2", tier="trial"), call_id=f"c{i}"))
    with pytest.raises(ProxyException) as limited:
        _pre(handler, _data(body=_identity("t2")))
    assert limited.value.code == "429" and limited.value.type == "rate_limit_error"
    assert limited.value.message.startswith("quota exceeded: trial_hourly (3/3 requests")
    assert int(limited.value.headers["retry-after"]) > 60
    assert limited.value.openai_code == "quota_exceeded"
    engine.upsert_entity("user", "s1", {"status": "suspended"})  # status is an admin key
    with pytest.raises(ProxyException) as denied:
        _pre(handler, _data(body=_identity("s1")))
    assert (denied.value.code, denied.value.message) == ("403", "account suspended")


def test_an_unreadable_identity_is_a_400_naming_the_field(handler: TollwayHandler) -> None:
    with pytest.raises(ProxyException) as bad:
        _pre(handler, _data(body={"metadata": {"tollway": "{not json"}}))
    assert bad.value.code == "400" and bad.value.param == "metadata.tollway"
    with pytest.raises(ProxyException) as too_long:
        _pre(handler, _data(headers={"x-tollway-user": "u" * 300}))
    assert too_long.value.code == "400" and too_long.value.message.startswith("user.id:")


def test_calls_without_a_model_are_left_alone(handler: TollwayHandler) -> None:
    data = {"input": "x", "litellm_call_id": "c"}
    assert _pre(handler, dict(data)) == data


def test_the_key_names_the_group_and_litellm_team_metadata_reaches_rules(
    handler: TollwayHandler,
) -> None:
    key = UserAPIKeyAuth(
        api_key="sk-test", user_id="key-user", team_id="team-a",
        team_metadata={"tollway": {"daily_budget": 3}, "other": "LiteLLM's own"},
    )
    request = handler.decide_request(key, _data(headers={"x-tollway-group": "forged"}))
    assert request["group"] == {"id": "team-a", "metadata": {"daily_budget": 3}}
    assert request["user"] == {"id": "key-user"}  # no request identity: the key's user
    assert request["attributes"] == {"endpoint": "/v1/chat/completions"}
    data = _pre(handler, _data(), key)
    assert data["metadata"][STATE_KEY]["group"] == "team-a"
    quota = handler._policy.engine.explain(request).decision.quotas  # type: ignore[union-attr]
    assert [(q.name, q.limit) for q in quota] == [("team_daily", 3.0)]


def test_identity_precedence_and_sources() -> None:
    found, path = request_identity(
        _data(headers={"x-tollway-user": "from-header", "x-team": "search"},
              body={"user": "end-user", **_identity("from-body", tier="pro")}),
        {"x-team": "team"},
    )
    assert found["user"] == {"id": "from-body", "metadata": {"tier": "pro"}}
    assert found["attributes"] == {"team": "search"} and path == "/v1/chat/completions"
    found, _ = request_identity(_data(body={"user": "end-user"}), {})
    assert found["user"] == {"id": "end-user"}
    key = UserAPIKeyAuth(api_key="k", user_id="ku", org_id="org-1",
                         organization_metadata={"tollway": {"plan": "gold"}})
    assert pick(["key.org_id", "request"], {"id": "r"}, key) == {"id": "org-1", "metadata": {"plan": "gold"}}
    assert pick(["key.team_id", "request"], {"id": "r", "metadata": {"a": 1}}, key) == {
        "id": "r", "metadata": {"a": 1},
    }
    assert pick(["request"], {"id": "r", "metadata": {"a": 1}}, key, request_metadata=False) == {"id": "r"}
    assert pick(["key.team_id"], None, key) is None


def test_malformed_tollway_metadata_in_litellm_is_ignored_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = UserAPIKeyAuth(api_key="k", team_id="t", team_metadata={"tollway": "not an object"})
    with caplog.at_level(logging.WARNING, "tollway.integrations.litellm"):
        assert pick(["key.team_id"], None, key) == {"id": "t"}
    assert "must be an object of tollway metadata" in caplog.text


# ------------------------------------------------------------------ after the call


def _logged(state: dict[str, Any], **standard: Any) -> dict[str, Any]:
    """The kwargs LiteLLM passes to ``async_log_success_event``, the parts the hook reads."""
    return {
        "litellm_params": {"metadata": {STATE_KEY: state, "user_api_key_user_id": "x"}},
        "standard_logging_object": {"prompt_tokens": 120, "completion_tokens": 30,
                                    "model_group": "openai/gpt-4.1-mini", **standard},
        "response_cost": 0.0125,
    }


def test_a_success_reports_tokens_cost_and_duration(handler: TollwayHandler, engine: Engine) -> None:
    data = _pre(handler, _data(body=_identity("t3", tier="trial"), call_id="call-3"))
    start = datetime(2026, 1, 1, 12, 0, 0)
    asyncio.run(handler.async_log_success_event(
        _logged(data["metadata"][STATE_KEY]), None, start, start + timedelta(seconds=1.5),
    ))
    asyncio.run(handler.async_log_success_event(  # a repeated event counts once
        _logged(data["metadata"][STATE_KEY]), None, start, start + timedelta(seconds=1.5),
    ))
    assert engine.flush_usage()
    detail = engine.get_usage("user", "t3")
    assert detail is not None
    usage = detail.usage
    assert (usage.request_count, usage.input_tokens, usage.output_tokens) == (1, 120, 30)
    assert usage.total_cost == pytest.approx(0.0125) and usage.total_duration == pytest.approx(1.5)
    event = detail.recent_reports[0]
    assert (event.request_id, event.status, event.model) == ("call-3", "success", "openai/gpt-4.1-mini")
    assert event.decision_id == data["metadata"][STATE_KEY]["decision_id"]


def test_a_cache_hit_reports_no_tokens(handler: TollwayHandler, engine: Engine) -> None:
    data = _pre(handler, _data(body=_identity("t4"), call_id="call-4"))
    kwargs = _logged(data["metadata"][STATE_KEY], cache_hit=True)
    kwargs["response_cost"] = 0.0
    now = datetime.now()
    asyncio.run(handler.async_log_success_event(kwargs, None, now, now))
    assert engine.flush_usage()
    event = engine.get_usage("user", "t4").recent_reports[0]  # type: ignore[union-attr]
    assert (event.status, event.input_tokens, event.output_tokens, event.cost_usd) == ("cached", 0, 0, 0.0)


def test_failures_release_the_reservation_and_refusals_report_nothing(
    handler: TollwayHandler, engine: Engine
) -> None:
    data = _pre(handler, _data(body=_identity("t5"), call_id="call-5"))
    asyncio.run(handler.async_post_call_failure_hook(data, litellm.Timeout("late", "m", "openai"), None))
    assert engine.flush_usage()
    event = engine.get_usage("user", "t5").recent_reports[0]  # type: ignore[union-attr]
    assert (event.status, event.decision_id) == ("timeout", data["metadata"][STATE_KEY]["decision_id"])
    engine.upsert_entity("user", "s2", {"status": "suspended"})
    refused = _data(body=_identity("s2"))
    with pytest.raises(ProxyException) as exc:
        _pre(handler, refused)
    asyncio.run(handler.async_post_call_failure_hook(refused, exc.value, None))
    asyncio.run(handler.async_log_success_event({"litellm_params": {"metadata": {}}}, None, None, None))
    assert engine.flush_usage()
    assert engine.get_usage("user", "s2") is None


# ------------------------------------------------------------------ a sidecar


def test_settings_come_from_the_proxy_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "callback_settings", {"tollway": {
        "target": "os.environ/TW_TARGET", "timeout": "0.2", "on_error": "deny",
        "user": "key.user_id", "attribute_headers": ["x-team=team"], "token": "os.environ/TW_UNSET",
    }})
    monkeypatch.setenv("TW_TARGET", "unix:/run/tollway.sock")
    monkeypatch.delenv("TW_UNSET", raising=False)
    s = TollwayHandler().settings
    assert (s.target, s.timeout, s.on_error, s.user, s.token) == (
        "unix:/run/tollway.sock", 0.2, "deny", ("key.user_id",), None,
    )
    assert s.attribute_headers == {"x-team": "team"} and s.group == Settings().group


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_a_sidecar_that_is_down_is_answered_by_on_error(on_error: Any) -> None:
    handler = TollwayHandler(Settings(target="127.0.0.1:9", on_error=on_error))

    async def call() -> dict[str, Any]:
        try:
            return await handler.async_pre_call_hook(
                UserAPIKeyAuth(api_key="k"), None, _data(body={"user": "u"}), "acompletion"
            )
        finally:
            await handler.policy().close()

    if on_error == "deny":
        with pytest.raises(ProxyException) as refused:
            asyncio.run(call())
        assert refused.value.code == "503" and "policy service unavailable" in refused.value.message
    else:
        state = asyncio.run(call())["metadata"][STATE_KEY]
        assert (state["reason"], state["decision_id"]) == ("STORE_UNAVAILABLE", "")


def test_a_sidecar_decides_and_hears_reports() -> None:
    engine = Engine.from_path(RULES)
    server = ServerThread(engine)
    address = server.start()
    handler = TollwayHandler(Settings(target=address, timeout=5.0))

    async def call() -> None:
        data = await handler.async_pre_call_hook(
            UserAPIKeyAuth(api_key="k"), None, _data(body=_identity("t6", tier="trial")), "acompletion"
        )
        assert data["model"] == "openai/gpt-4.1-mini"
        now = datetime.now()
        await handler.async_log_success_event(_logged(data["metadata"][STATE_KEY]), None, now, now)
        await handler.policy().close()

    try:
        asyncio.run(call())
        assert engine.flush_usage()
        detail = engine.get_usage("user", "t6")
        assert detail is not None and detail.usage.output_tokens == 30
    finally:
        server.stop()
        engine.close()


@pytest.mark.redis
def test_in_process_on_a_shared_redis(redis_url: str, redis_prefix: str) -> None:
    """``rules`` + ``store``: an engine in the proxy's process, its Redis calls off the loop."""
    handler = TollwayHandler(Settings(rules=str(RULES), store=redis_url, key_prefix=redis_prefix))

    async def calls() -> list[str]:
        outcomes = []
        for i in range(4):
            try:
                data = await handler.async_pre_call_hook(
                    UserAPIKeyAuth(api_key="k"), None,
                    _data(body=_identity("redis-trial", tier="trial"), call_id=f"r{i}"), "acompletion",
                )
                outcomes.append(data["model"])
            except ProxyException as exc:
                outcomes.append(exc.code)
        await handler.policy().close()
        return outcomes

    assert asyncio.run(calls()) == ["openai/gpt-4.1-mini"] * 3 + ["429"]
    assert handler.policy().engine.blocking  # type: ignore[attr-defined]


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], r"^callback_settings\.tollway: must be a mapping"),
        ({"targte": "x"}, r"^callback_settings\.tollway\.targte: unknown setting"),
        ({"timeout": 0}, r"^callback_settings\.tollway\.timeout: must be a positive"),
        ({"timeout": "soon"}, r"^callback_settings\.tollway\.timeout: "),
        ({"timeout": True}, r"^callback_settings\.tollway\.timeout: "),
        ({"on_error": "ignore"}, r"^callback_settings\.tollway\.on_error: must be one of allow"),
        ({"user": ["request", "key.nope"]}, r"^callback_settings\.tollway\.user\[1\]: unknown source"),
        ({"group": []}, r"^callback_settings\.tollway\.group: must be a source"),
        ({"attribute_headers": ["nope"]}, r"^callback_settings\.tollway\.attribute_headers: "),
        ({"request_metadata": "maybe"}, r"^callback_settings\.tollway\.request_metadata: "),
        ({"target": ""}, r"^callback_settings\.tollway\.target: must be a non-empty string"),
    ],
)
def test_bad_settings_name_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.parse(raw)


def test_settings_cover_every_field() -> None:
    full = {
        "target": "h:1", "token": "t", "tls": "ca.pem", "timeout": 1, "on_error": "raise",
        "rules": "r.rules", "store": "memory", "key_prefix": "gw:", "user": ["request"],
        "group": "key.team_id",
        "request_metadata": False, "attribute_headers": "x-a=a", "endpoint_attribute": False,
    }
    s = Settings.parse(full)
    assert (s.tls, s.group, s.endpoint_attribute, s.request_metadata) == ("ca.pem", ("key.team_id",), None, False)
    assert set(full) == set(Settings.__dataclass_fields__)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300)
@given(st.dictionaries(
    st.sampled_from([*Settings.__dataclass_fields__, "bogus"]) | st.text(max_size=6),
    json_values | st.sampled_from([*SOURCES, "os.environ/TOLLWAY_NOT_SET", ["request"], "x-a=b"]),
    max_size=5,
))
def test_any_settings_mapping_parses_or_names_its_fault(raw: dict[str, Any]) -> None:
    try:
        Settings.parse(raw)
    except ValueError as exc:
        assert str(exc).startswith("callback_settings.tollway")
