"""The real LiteLLM proxy with tollway enabled by examples/litellm/config.yaml, end to end.

Three processes and a thread, all on loopback: ``tollway serve`` with
examples/litellm/policy.rules, the LiteLLM proxy started with the example config (as
shipped; the environment points it at the others), and a fake OpenAI upstream
(tests/fake_openai.py) that records the model it was asked for. The official ``openai``
SDK is the client. The proxy takes seconds to start: one for the whole session.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fake_openai import USAGE, FakeOpenAI
from server_harness import Served, import_or_skip, tollway_serve

from tollway.client import Client
from tollway.policy.usage import UsageDetail

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "litellm"
MASTER_KEY = "sk-tollway-e2e"
TOKENS = (USAGE["prompt_tokens"], USAGE["completion_tokens"])  # what every upstream answer used
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _litellm_command() -> list[str]:
    import_or_skip("litellm", "the LiteLLM tests need the extra .[litellm]")
    import_or_skip("openai", "the LiteLLM tests use the official openai SDK (extra .[litellm])")
    exe = Path(sys.executable).with_name("litellm")
    if not exe.exists():
        if os.environ.get("CI"):
            pytest.fail(f"no `litellm` command beside {sys.executable} (CI is set)")
        pytest.skip(f"no `litellm` command beside {sys.executable}: install the extra .[litellm]")
    return [str(exe)]


@dataclass
class Stack:
    upstream: FakeOpenAI
    tollway: Served
    proxy_url: str
    proxy_log: Path

    def openai(self, **headers: str) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.proxy_url + "/v1", api_key=MASTER_KEY, max_retries=0,
            default_headers=headers or None, timeout=30,
        )

    def log(self) -> str:
        return self.proxy_log.read_text(errors="replace")[-8000:]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    command = _litellm_command()
    upstream = FakeOpenAI()
    upstream.start()
    log = tmp_path_factory.mktemp("litellm") / "proxy.log"
    port = _free_port()
    with tollway_serve(EXAMPLE / "policy.rules") as served:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLWAY_", "OPENAI_"))}
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # the cost map in the package: no network
            OPENAI_API_KEY="sk-fake-upstream",
            OPENAI_API_BASE=upstream.base_url,
            TOLLWAY_TARGET=served.grpc,
            TOLLWAY_TIMEOUT="5",  # a loaded test machine must not turn decisions into fallbacks
            LITELLM_MASTER_KEY=MASTER_KEY,
        )
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*command, "--config", str(EXAMPLE / "config.yaml"), "--host", "127.0.0.1",
                 "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(url + "/health/liveliness", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError("the LiteLLM proxy did not start:\n" + log.read_text()) from None
                    time.sleep(0.2)
            yield Stack(upstream, served, url, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            upstream.stop()


def _until(what: str, probe: Callable[[], T | None], stack: Stack, timeout: float = 30.0) -> T:
    """Poll ``probe`` until it answers (reports are sent after the response, in the background)."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen in {timeout:.0f}s; proxy log:\n{stack.log()}")
        time.sleep(0.05)
    return found


def _usage(stack: Stack, kind: str, ident: str, reports: int = 1) -> UsageDetail:
    """The usage of a user or group once ``reports`` reports landed (``Decide`` alone
    already counts the request, without tokens)."""
    with Client(stack.tollway.grpc, admin_timeout=10) as tollway:
        def probe() -> UsageDetail | None:
            detail = tollway.get_usage(kind, ident)
            return detail if detail is not None and len(detail.recent_reports) >= reports else None

        return _until(f"{reports} report(s) for {kind} {ident}", probe, stack)


def _tollway_identity(user: str, **metadata: Any) -> dict[str, str]:
    return {"tollway": json.dumps({"user": {"id": user, "metadata": metadata}})}


def _ask(client: Any, model: str = "openai/gpt-5", text: str = "hi", **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )


def _reports_total(stack: Stack) -> float:
    with urllib.request.urlopen(f"http://{stack.tollway.http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(m) for m in re.findall(r"^tollway_reports_total\{[^}]*\} (\S+)$", text, re.M))


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_route_rewrites_the_model_the_upstream_is_asked_for(stack: Stack) -> None:
    user, marker = _uid("trial"), _uid("route")
    raw = _ask(stack.openai(), text=marker, metadata=_tollway_identity(user, tier="trial"))
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream"
    [call] = stack.upstream.seen_with(marker)
    assert call.model == "gpt-4.1-mini"  # asked for openai/gpt-5, routed by the trial rule
    assert not {"metadata", "litellm_metadata", "tollway_decision"} & set(call.body)
    detail = _usage(stack, "user", user)
    assert [m.model for m in detail.usage.models] == ["openai/gpt-4.1-mini"]
    assert detail.recent_reports[0].decision_id  # the decision rode in the call's metadata


def test_the_fourth_call_of_three_an_hour_is_a_rate_limit_error(stack: Stack) -> None:
    import openai

    user = _uid("trial")
    client = stack.openai()
    for _ in range(3):
        _ask(client, metadata=_tollway_identity(user, tier="trial"))
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client, metadata=_tollway_identity(user))
    assert "quota exceeded: trial_hourly (3/3 requests" in refused.value.message
    headers = refused.value.response.headers
    assert int(headers["retry-after"]) > 60
    assert headers["x-should-retry"] == "false"


def test_a_suspended_user_is_permission_denied(stack: Stack) -> None:
    import openai

    marker, user = _uid("suspended"), _uid("s")
    admin = Client(stack.tollway.grpc, timeout=10)  # status is an admin key of the example
    admin.upsert_entity("user", user, {"status": "suspended"})
    admin.close()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _ask(stack.openai(), text=marker, metadata=_tollway_identity(user))
    assert refused.value.status_code == 403
    assert "account suspended" in refused.value.message
    assert stack.upstream.seen_with(marker) == []


def test_tokens_and_litellms_cost_land_for_the_user_and_the_group(stack: Stack) -> None:
    user, group = _uid("end-user"), _uid("team")
    raw = _ask(stack.openai(**{"x-tollway-group": group}), user=user)  # the OpenAI `user` field
    cost = float(raw.headers["x-litellm-response-cost"])
    assert cost > 0
    for kind, ident in (("user", user), ("group", group)):
        usage = _usage(stack, kind, ident).usage
        assert (usage.input_tokens, usage.output_tokens) == TOKENS
        assert usage.total_cost == pytest.approx(cost, rel=1e-6)
        assert usage.total_duration > 0
    event = _usage(stack, "user", user).recent_reports[0]
    assert (event.user_id, event.group_id, event.status) == (user, group, "success")


def test_a_streamed_call_is_reported_once(stack: Stack) -> None:
    user, sentinel = _uid("streamer"), _uid("sentinel")
    before = _reports_total(stack)
    stream = stack.openai().chat.completions.create(
        model="openai/gpt-5", messages=[{"role": "user", "content": "stream"}], user=user,
        stream=True, stream_options={"include_usage": True},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake upstream"
    usage = _usage(stack, "user", user).usage
    assert (usage.request_count, usage.input_tokens, usage.output_tokens) == (1, *TOKENS)
    # a later call's report lands after any report the stream could still send
    _ask(stack.openai(), user=sentinel)
    _usage(stack, "user", sentinel)
    assert _reports_total(stack) - before == 2  # the stream's one report and the sentinel's


def test_a_failed_call_is_reported_as_an_error(stack: Stack) -> None:
    import openai

    user = _uid("unlucky")
    with pytest.raises(openai.APIStatusError) as failed:
        _ask(stack.openai(), text="fail", user=user)
    assert failed.value.status_code >= 500

    def error_reported() -> UsageDetail | None:
        with Client(stack.tollway.grpc, admin_timeout=10) as tollway:
            detail = tollway.get_usage("user", user)
        if detail is None or not detail.recent_reports:
            return None
        return detail if detail.recent_reports[0].status == "error" else None

    detail = _until("the error report", error_reported, stack)
    event = detail.recent_reports[0]
    assert (event.input_tokens, event.output_tokens, event.cost_usd) == (0, 0, 0.0)
    assert event.decision_id  # it settles the decision's reservation
