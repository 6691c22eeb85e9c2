"""A small OpenAI-compatible upstream for end-to-end tests of gateways (aiohttp, real sockets).

``POST /v1/chat/completions`` answers like OpenAI: a ``chat.completion`` with ``usage``, or
with ``"stream": true`` server-sent ``chat.completion.chunk`` events, the last one carrying
``usage`` when ``stream_options.include_usage`` asks for it, then ``data: [DONE]``. Every
request is recorded (``calls``: the model asked for, whether it streamed, the body). A
message whose content is ``"fail"`` gets a 500, as a broken provider would answer.

Token counts are fixed so tests can check them: ``PROMPT_TOKENS`` in, ``COMPLETION_TOKENS``
out (``CACHED_TOKENS`` of the prompt served from a cache).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
CACHED_TOKENS = 4
WORDS = ("Hello", " from", " the", " fake", " upstream", ".", "")


@dataclass(frozen=True)
class Call:
    model: str
    stream: bool
    body: dict[str, Any]


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


class FakeOpenAI:
    """The upstream on 127.0.0.1:<free port>, served by a loop in a background thread."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def calls_for(self, marker: str) -> list[Call]:
        """The recorded calls whose messages contain ``marker``."""
        return [c for c in list(self.calls) if marker in json.dumps(c.body.get("messages"))]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        self.calls.append(Call(model, stream, body))
        messages = body.get("messages") or [{}]
        if messages[-1].get("content") == "fail":
            return web.json_response(
                {"error": {"message": "the fake upstream failed", "type": "server_error",
                           "code": None, "param": None}},
                status=500,
            )
        created = int(time.time())
        if not stream:
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(WORDS)}}],
                "usage": _usage(),
            })
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                "model": model}
        for i, word in enumerate(WORDS):
            last = i == len(WORDS) - 1
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            await send({**base, "choices": [{"index": 0, "delta": {} if last else delta,
                                             "finish_reason": "stop" if last else None}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**base, "choices": [], "usage": _usage()})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
