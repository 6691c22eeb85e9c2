"""The FastAPI example of docs/integrations.md, run as written against a live server.

The block is marked ``no-run`` for the generic docs test (FastAPI comes with the
``litellm`` extra, not with tollway); here it is taken from the page, its documented
address replaced by the test server's, and driven with real HTTP requests through its
ASGI app, OpenAI-style bodies and all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docs_blocks import blocks
from server_harness import ServerThread, import_or_skip

from tollway.policy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "integrations.md"


def fastapi_block() -> str:
    found = [b.text for b in blocks(PAGE) if b.language == "python" and "FastAPI()" in b.text]
    assert len(found) == 1, "docs/integrations.md shows one FastAPI app"
    return found[0]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Engine]]:
    engine = Engine.from_path(ROOT / "examples" / "gateway.rules")
    server = ServerThread(engine)
    yield server.start(), engine
    server.stop()
    engine.close()


def test_the_fastapi_middleware(served: tuple[str, Engine]) -> None:
    import_or_skip("fastapi", "the FastAPI example needs FastAPI (extra .[litellm])")
    httpx = import_or_skip("httpx", "the FastAPI example is driven with httpx (extra .[litellm])")
    address, engine = served
    namespace: dict[str, Any] = {"__name__": "docs_fastapi_example"}
    exec(compile(fastapi_block().replace("127.0.0.1:50051", address), str(PAGE), "exec"), namespace)
    app = namespace["app"]

    def body(user: dict[str, Any]) -> dict[str, Any]:
        return {"model": "openai/gpt-5", "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"tollway": json.dumps({"user": user})}}

    # `status` is an admin key of the example rules: set by an admin, not by the request
    engine.upsert_entity("user", "fa2", {"status": "suspended"})

    async def run() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            replies = [
                await http.post("/v1/chat/completions", json=body({"id": "fa1", "metadata": {"tier": "free"}}),
                                headers={"x-tollway-group": "acme-fa", "x-request-id": "fa-req-1"}),
                await http.post("/v1/chat/completions", json=body({"id": "fa2"})),
                await http.post("/v1/chat/completions", json={"model": "m", "metadata": {"tollway": "{"}}),
            ]
        await namespace["tollway"].close()
        return replies

    ok, suspended, unreadable = asyncio.run(run())
    assert ok.status_code == 200 and ok.json()["model"] == "openai/gpt-4.1-mini"
    assert suspended.status_code == 403
    assert suspended.json()["error"]["message"] == "account suspended"
    assert suspended.json()["error"]["type"] == "permission_error"
    assert unreadable.status_code == 400 and unreadable.json()["error"]["param"] == "metadata.tollway"
    # usage is written off the request path: wait for the reports the gateway sent
    assert engine.flush_usage(timeout=10.0)
    detail = engine.get_usage("user", "fa1")
    assert detail is not None and detail.usage.input_tokens == 9
    assert detail.recent_reports[0].request_id == "fa-req-1"
    assert detail.recent_reports[0].group_id == "acme-fa"
