"""Reading OpenAI-style bodies: request JSON, the model rewrite, and usage from answers."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.server.openai_body import (
    MAX_EVENT_BYTES,
    TokenUsage,
    UsageReader,
    request_json,
    usage_of,
    with_model,
)

CHAT_USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 10},
}
RESPONSES_USAGE = {
    "input_tokens": 12,
    "output_tokens": 4,
    "input_tokens_details": {"cached_tokens": 2},
}


def sse(*events: Any) -> bytes:
    out = b""
    for e in events:
        out += b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
    return out


STREAM = sse(
    {"choices": [{"delta": {"content": "a"}}], "usage": None},
    {"choices": [{"delta": {"content": "b"}}], "usage": None},
    {"choices": [], "usage": CHAT_USAGE},
    b"[DONE]",
)


def read(body: bytes, content_type: str, encoding: str = "", cut: int = 0) -> TokenUsage | None:
    reader = UsageReader(content_type, encoding)
    if cut:
        for i in range(0, len(body), cut):
            reader.feed(body[i : i + cut])
    else:
        reader.feed(body)
    return reader.finish()


def test_plain_json_answers_of_both_apis() -> None:
    assert read(json.dumps({"usage": CHAT_USAGE}).encode(), "application/json") == TokenUsage(
        30, 7, 10
    )
    assert read(
        json.dumps({"usage": RESPONSES_USAGE}).encode(), "application/json; charset=utf-8"
    ) == (TokenUsage(12, 4, 2))


def test_streams_of_both_apis() -> None:
    assert read(STREAM, "text/event-stream") == TokenUsage(30, 7, 10)
    responses = sse(
        {"type": "response.output_text.delta", "delta": "x"},
        {"type": "response.completed", "response": {"usage": RESPONSES_USAGE}},
    )
    assert read(responses, "text/event-stream; charset=utf-8") == TokenUsage(12, 4, 2)


def test_crlf_events_multi_line_data_and_an_unterminated_last_event() -> None:
    body = b'data: {"usage":\r\ndata: {"prompt_tokens": 3, "completion_tokens": 1}}\r\n\r\n'
    assert read(body, "text/event-stream") == TokenUsage(3, 1, 0)
    assert read(b'data: {"usage": {"prompt_tokens": 2}}', "text/event-stream") == TokenUsage(
        2, 0, 0
    )


def test_parts_of_usage_stated_in_different_events_are_merged() -> None:
    body = sse({"usage": {"input_tokens": 9}}, {"usage": {"output_tokens": 4}})
    assert read(body, "text/event-stream") == TokenUsage(9, 4, 0)


def test_gzip_and_deflate_are_decoded_others_are_a_problem() -> None:
    plain = json.dumps({"usage": CHAT_USAGE}).encode()
    assert read(gzip.compress(plain), "application/json", "gzip", cut=5) == TokenUsage(30, 7, 10)
    assert read(zlib.compress(STREAM), "text/event-stream", "deflate", cut=3) == TokenUsage(
        30, 7, 10
    )
    reader = UsageReader("application/json", "br")
    reader.feed(b"\x0b\x02")
    assert reader.finish() is None and reader.problem == "content-encoding br cannot be read"
    broken = UsageReader("application/json", "gzip")
    broken.feed(b"not gzip at all")
    assert broken.finish() is None and broken.problem.startswith("body does not decode")


def test_answers_without_usage_or_of_other_types() -> None:
    assert read(b'{"choices": []}', "application/json") is None
    assert read(b"<html>", "text/html") is None
    assert read(b"{broken", "application/json") is None
    assert read(sse({"usage": None}), "text/event-stream") is None


def test_cached_tokens_never_exceed_input_tokens() -> None:
    usage = {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 9},
    }
    assert read(json.dumps({"usage": usage}).encode(), "application/json") == TokenUsage(3, 1, 3)


def test_an_overlong_event_is_skipped_and_reading_goes_on() -> None:
    huge = b"data: " + b"x" * (MAX_EVENT_BYTES + 10) + b"\n\n"
    body = huge + sse({"usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    assert read(body, "text/event-stream", cut=65536) == TokenUsage(5, 2, 0)


def test_bad_counts_are_ignored() -> None:
    assert usage_of({"usage": {"prompt_tokens": -1, "completion_tokens": True}}) is None
    assert usage_of({"usage": {"prompt_tokens": 1.5, "output_tokens": 2}}) == {"output_tokens": 2}
    assert usage_of("usage") is None


def test_request_json_and_the_model_rewrite() -> None:
    assert request_json(b"", "application/json") is None
    assert request_json(b'{"model": "m"}', "application/json") == {"model": "m"}
    assert request_json(b'{"model": "m"}', "") == {"model": "m"}  # no content type, looks like JSON
    assert request_json(b"--boundary", "multipart/form-data; boundary=boundary") is None
    assert request_json(b'{"a": 1}', "application/vnd.api+json") == {"a": 1}
    with pytest.raises(ValueError, match=r"^body: not valid JSON"):
        request_json(b"{", "application/json")
    with pytest.raises(ValueError, match=r"^body: not valid JSON"):
        request_json(b'{"a": "\xff"}', "application/json")
    body = {"model": "a", "messages": [{"role": "user", "content": "é"}], "temperature": 0.7}
    rewritten = with_model(body, "b")
    assert json.loads(rewritten) == {**body, "model": "b"}
    assert list(json.loads(rewritten)) == ["model", "messages", "temperature"]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, len(STREAM)), st.sampled_from(["", "gzip"]))
def test_a_stream_split_anywhere_gives_the_same_usage(cut: int, encoding: str) -> None:
    body = gzip.compress(STREAM) if encoding else STREAM
    assert read(body, "text/event-stream", encoding, cut=cut) == TokenUsage(30, 7, 10)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=64)
        | st.sampled_from(
            [b"data: ", b"\n", b"\r\n", b'"usage"', b'{"usage": {"prompt_tokens": 1}}']
        ),
        max_size=30,
    ),
    st.sampled_from(["text/event-stream", "application/json", "text/plain"]),
    st.sampled_from(["", "gzip", "deflate", "br"]),
)
def test_any_bytes_are_read_without_raising(
    chunks: list[bytes], content_type: str, encoding: str
) -> None:
    reader = UsageReader(content_type, encoding)
    for chunk in chunks:
        reader.feed(chunk)
    usage = reader.finish()
    assert usage is None or usage.cached_input_tokens <= usage.input_tokens
