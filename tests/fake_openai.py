"""A small OpenAI-compatible upstream for end-to-end tests (aiohttp, on a real socket).

``POST /v1/chat/completions`` answers like OpenAI: a JSON completion with ``usage``, or,
with ``"stream": true``, server-sent events (chunks, then a last chunk with ``usage`` when
``stream_options.include_usage`` is set, then ``[DONE]``). It records every request it
got: the model it was asked for and the headers, so tests can see what a gateway
forwarded. Usage is fixed per answer (``USAGE``) so tests know the tokens and the cost to
expect. A request whose last message says ``"fail"`` gets a 500, as a broken provider
would answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeOpenAI", "Seen", "USAGE"]

# what every answer reports: 20 prompt tokens of which 8 cached, 5 completion tokens
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 5,
    "total_tokens": 25,
    "prompt_tokens_details": {"cached_tokens": 8},
}
WORDS = ["Hello", " from", " the", " fake", " upstream"]


@dataclass(frozen=True)
class Seen:
    """One request the upstream received."""

    model: str
    stream: bool
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeOpenAI:
    """The upstream, served from its own event loop in a background thread."""

    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    def start(self) -> int:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        return self.port

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def last(self) -> Seen:
        return self.seen[-1]

    def seen_with(self, text: str) -> list[Seen]:
        """The requests whose messages contain ``text``."""
        return [s for s in list(self.seen) if text in json.dumps(s.body.get("messages"))]

    # ---------------------------------------------------------------- handler

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        stream = bool(body.get("stream"))
        self.seen.append(Seen(model, stream, dict(request.headers), body))
        messages = body.get("messages") or [{}]
        if messages[-1].get("content") == "fail":
            return web.json_response(
                {"error": {"message": "the fake upstream failed", "type": "server_error",
                           "code": None, "param": None}},
                status=500,
            )
        created = 1_700_000_000
        if not stream:
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(WORDS)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": USAGE,
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        for i, word in enumerate(WORDS):
            delta: dict[str, Any] = {"content": word} | ({"role": "assistant"} if i == 0 else {})
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            if include_usage:
                chunk["usage"] = None
            await send(chunk)
        await send(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                **({"usage": None} if include_usage else {}),
            }
        )
        if include_usage:
            await send({**base, "choices": [], "usage": USAGE})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
