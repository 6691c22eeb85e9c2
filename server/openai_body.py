"""Bodies of OpenAI-style HTTP calls: the request's JSON, its model, and the answer's usage.

Requests: ``request_json`` reads a JSON body (None for other content, such as a multipart
upload), ``with_model`` re-encodes it with another ``model``. Answers: a ``UsageReader`` is
fed the response body chunk by chunk as it streams past and finds the token counts in a
plain JSON answer (``{"usage": {…}}``) or in a server-sent-event stream whose chunks carry
``usage`` (``stream_options.include_usage``: the last chunk before ``[DONE]``). Both
OpenAI shapes are read: chat completions (``prompt_tokens``, ``completion_tokens``,
``prompt_tokens_details.cached_tokens``) and responses (``input_tokens``, ``output_tokens``,
``input_tokens_details.cached_tokens``, also inside a ``response`` object).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway.policy.validate import FieldError

__all__ = [
    "TokenUsage",
    "request_json",
    "with_model",
    "usage_of",
    "UsageReader",
    "MAX_JSON_ANSWER_BYTES",
    "MAX_EVENT_BYTES",
]

# a plain JSON answer is kept whole to be parsed at its end; past this it is not read
MAX_JSON_ANSWER_BYTES = 16 * 1024 * 1024
# one server-sent event (a chunk of a stream) at most; a longer one is skipped
MAX_EVENT_BYTES = 1024 * 1024

_INPUT = ("prompt_tokens", "input_tokens")
_OUTPUT = ("completion_tokens", "output_tokens")
_DETAILS = ("prompt_tokens_details", "input_tokens_details")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one answer; ``cached_input_tokens`` is part of ``input_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def request_json(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """The request body as a JSON object; None when the content is not JSON.

    An empty content type counts as JSON when the body starts like an object (clients
    that forget the header). Raises ``ValueError`` (``body: …``) for JSON content that
    does not decode to an object.
    """
    if not raw:
        return None
    if not _is_json(content_type) and not (not content_type and raw.lstrip()[:1] == b"{"):
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise FieldError("body", f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise FieldError("body", f"must be a JSON object, got {type(value).__name__}")
    return value


def with_model(body: Mapping[str, Any], model: str) -> bytes:
    """``body`` encoded as JSON with its ``model`` replaced (key order kept)."""
    return json.dumps({**body, "model": model}, ensure_ascii=False, separators=(",", ":")).encode()


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def usage_of(answer: Any) -> dict[str, int] | None:
    """The token counts an answer (or one stream chunk) states, by ``TokenUsage`` field name.

    Only the fields present are returned, so that chunks stating part of the usage can be
    merged; None when the object states no usage at all.
    """
    if not isinstance(answer, Mapping):
        return None
    usage = answer.get("usage")
    if not isinstance(usage, Mapping):
        inner = answer.get("response")
        usage = inner.get("usage") if isinstance(inner, Mapping) else None
        if not isinstance(usage, Mapping):
            return None
    found: dict[str, int] = {}
    for field, names in (("input_tokens", _INPUT), ("output_tokens", _OUTPUT)):
        for name in names:
            n = _count(usage.get(name))
            if n is not None:
                found[field] = n
                break
    for name in _DETAILS:
        details = usage.get(name)
        if isinstance(details, Mapping):
            n = _count(details.get("cached_tokens"))
            if n is not None:
                found["cached_input_tokens"] = n
                break
    return found or None


class UsageReader:
    """Finds the usage of a response body fed to it chunk by chunk, in bounded memory.

    ``content_type`` chooses the reading: ``text/event-stream`` event by event, JSON whole
    at the end, anything else not at all. ``content_encoding`` ``gzip`` and ``deflate`` are
    decoded; another encoding makes the usage unreadable (``problem`` says why).
    """

    def __init__(self, content_type: str, content_encoding: str = "") -> None:
        kind = content_type.partition(";")[0].strip().lower()
        self._stream = kind == "text/event-stream"
        self._json = _is_json(content_type)
        self._found: dict[str, int] = {}
        self._buffer = bytearray()  # the whole JSON answer, or the unfinished SSE line
        self._data: list[bytes] = []  # data lines of the current event
        self._skip_line = False
        self._complete = False
        self.problem = ""
        self._decoder: Any = None
        encoding = content_encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding not in ("", "identity") and (self._stream or self._json):
            self.problem = f"content-encoding {encoding} cannot be read"

    @property
    def complete(self) -> bool:
        """Whether the answer stated its own end: a stream's ``[DONE]`` or
        ``response.completed`` event, or a JSON answer that parsed whole (after ``finish``).
        A body cut after that point (a client that hangs up on ``[DONE]``) was complete."""
        return self._complete

    @property
    def reading(self) -> bool:
        """Whether feeding chunks can still find anything."""
        return (self._stream or self._json) and not self.problem

    def feed(self, chunk: bytes) -> None:
        if not chunk or not self.reading:
            return
        if self._decoder is not None:
            try:
                chunk = self._decoder.decompress(chunk)
            except zlib.error as exc:
                self.problem = f"body does not decode: {exc}"
                return
        if self._stream:
            self._feed_events(chunk)
        elif len(self._buffer) + len(chunk) > MAX_JSON_ANSWER_BYTES:
            self.problem = f"answer over {MAX_JSON_ANSWER_BYTES} bytes"
            self._buffer.clear()
        else:
            self._buffer += chunk

    def finish(self) -> TokenUsage | None:
        """The usage found, once the body has ended; None when it stated none."""
        if self._json and not self._stream and self.reading and self._buffer:
            try:
                self._merge(usage_of(json.loads(self._buffer)))
                self._complete = True
            except ValueError:
                self.problem = "answer is not valid JSON"
            self._buffer.clear()
        elif self._stream and self.reading:
            self._feed_events(b"\n\n")  # an unterminated last event still counts
        if not self._found:
            return None
        usage = TokenUsage(**self._found)
        if usage.cached_input_tokens > usage.input_tokens:
            usage = TokenUsage(usage.input_tokens, usage.output_tokens, usage.input_tokens)
        return usage

    # ------------------------------------------------------------- internals

    def _merge(self, found: dict[str, int] | None) -> None:
        if found:
            self._found.update(found)

    def _feed_events(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if self._skip_line:  # the tail of a line that was too long
                self._skip_line = False
                continue
            self._line(line)
        del buffer[:start]
        if len(buffer) > MAX_EVENT_BYTES:
            buffer.clear()
            self._data.clear()
            self._skip_line = True

    def _line(self, line: bytes) -> None:
        if not line:
            if self._data:
                self._event(b"\n".join(self._data))
                self._data.clear()
            return
        if line.startswith(b"data:"):
            payload = line[5:]
            self._data.append(payload[1:] if payload.startswith(b" ") else payload)
            if sum(len(d) for d in self._data) > MAX_EVENT_BYTES:
                self._data.clear()

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]" or b'"response.completed"' in data:
            self._complete = True
        if b'"usage"' not in data:  # most chunks of a stream: no need to decode them
            return
        try:
            self._merge(usage_of(json.loads(data)))
        except ValueError:
            return
