"""Refusals in OpenAI's error shape, read back by the official ``openai`` SDK over a socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tollway.policy.model import Decision, QuotaStatus
from tollway.policy.validate import FieldError
from tollway.server.decision_headers import decision_headers, header_name, is_decision_header
from tollway.server.openai_errors import (
    OpenAIError,
    error_for_decision,
    invalid_request,
    retry_after_seconds,
)

openai = pytest.importorskip("openai", reason="the openai SDK is part of the test extra")


def quota(name: str, retry_after: float, exceeded: bool = True) -> QuotaStatus:
    return QuotaStatus(name, "requests", "user", "u=a", 3, 3, 0, exceeded, retry_after)


def exceeded(*waits: float) -> Decision:
    return Decision(
        allowed=False,
        reason="QUOTA_EXCEEDED",
        message="quota exceeded: hourly (3/3 requests, retry in 1200s)",
        quotas=(
            quota("other", 5000.0, exceeded=False),
            *(quota(f"q{i}", w) for i, w in enumerate(waits)),
        ),
        decision_id="d1",
    )


@pytest.mark.parametrize(
    ("reason", "status", "kind"),
    [
        ("DENIED_BY_RULE", 403, "permission_error"),
        ("DEFAULT_DENY", 403, "permission_error"),
        ("QUOTA_UNRESOLVED", 403, "permission_error"),
        ("QUOTA_EXCEEDED", 429, "rate_limit_error"),
        ("STORE_UNAVAILABLE", 503, "server_error"),
    ],
)
def test_each_reason_has_its_status(reason: str, status: int, kind: str) -> None:
    err = error_for_decision(Decision(False, reason, "why", decision_id="d9"))
    assert (err.status, err.type, err.code) == (status, kind, reason.lower())
    assert err.body() == {
        "error": {"message": "why", "type": kind, "code": reason.lower(), "param": None}
    }
    assert ("x-tollway-decision-id", "d9") in err.headers


def test_retry_after_is_the_longest_wait_rounded_up() -> None:
    assert retry_after_seconds(exceeded(0.2)) == 1
    assert retry_after_seconds(exceeded(3.01, 59.5)) == 60
    headers = dict(error_for_decision(exceeded(3.01, 59.5)).headers)
    assert headers["retry-after"] == "60" and "x-should-retry" not in headers
    headers = dict(error_for_decision(exceeded(1200.0)).headers)
    assert headers["retry-after"] == "1200" and headers["x-should-retry"] == "false"


def test_an_empty_message_still_says_something() -> None:
    assert error_for_decision(Decision(False, "DEFAULT_DENY")).message == (
        "refused by tollway (default_deny)"
    )


def test_an_allowed_decision_is_not_an_error() -> None:
    with pytest.raises(ValueError, match=r"^decision: "):
        error_for_decision(Decision(True, "ALLOWED"))


def test_invalid_request_names_the_param() -> None:
    err = invalid_request(FieldError("metadata.tollway", "not valid JSON (Expecting value)"))
    assert (err.status, err.type, err.param) == (400, "invalid_request_error", "metadata.tollway")
    assert err.message == "metadata.tollway: not valid JSON (Expecting value)"
    assert invalid_request(ValueError("the body is not JSON")).param is None


def test_decision_headers_and_what_a_client_may_not_forge() -> None:
    d = Decision(
        True,
        "ALLOWED",
        model="openai/gpt-4.1-mini",
        checks=("pii-scan", "moderation"),
        annotations={"Priority Level": "high\r\nx-evil: 1"},
        decision_id="d2",
    )
    assert decision_headers(d) == [
        ("x-tollway-decision-id", "d2"),
        ("x-tollway-model", "openai/gpt-4.1-mini"),
        ("x-tollway-checks", "pii-scan,moderation"),
        ("x-tollway-annotation-priority-level", "high  x-evil: 1"),
    ]
    assert header_name("Ä b") == "--b"
    assert all(is_decision_header(name) for name, _ in decision_headers(d))
    assert not is_decision_header("x-tollway-user") and not is_decision_header("x-tollway-group")


# ------------------------------------------------ the SDK's view, over a real socket


@pytest.fixture(scope="module")
def answering() -> Iterator[tuple[str, list[OpenAIError]]]:
    """An HTTP server that answers every request with the last ``OpenAIError`` queued."""
    queue: list[OpenAIError] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            err = queue[-1]
            body = err.body_bytes()
            self.send_response(err.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for name, value in err.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", queue
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("decision", "exception"),
    [
        (
            Decision(False, "DENIED_BY_RULE", "account suspended", decision_id="d"),
            "PermissionDeniedError",
        ),
        (exceeded(1200.0), "RateLimitError"),
        (
            Decision(False, "STORE_UNAVAILABLE", "store down", decision_id="d"),
            "InternalServerError",
        ),
    ],
)
def test_the_sdk_raises_its_usual_exception_with_our_message(
    answering: tuple[str, list[OpenAIError]], decision: Decision, exception: str
) -> None:
    url, queue = answering
    queue.append(error_for_decision(decision))
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(getattr(openai, exception)) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    assert err.message.endswith(decision.message)
    assert err.code == decision.reason.lower()
    assert err.response.headers["x-tollway-decision-id"] == decision.decision_id
    if exception == "RateLimitError":
        assert err.response.headers["retry-after"] == "1200"
    assert json.loads(err.response.text)["error"]["message"] == decision.message


def test_the_sdk_reads_a_bad_request_param(answering: tuple[str, list[OpenAIError]]) -> None:
    url, queue = answering
    queue.append(invalid_request(FieldError("metadata", "17 keys is over OpenAI's limit of 16")))
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.param == "metadata"
