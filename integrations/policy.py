"""What an asyncio gateway adapter asks tollway, whichever way tollway runs.

``SidecarPolicy`` asks a ``tollway serve`` through ``AsyncClient`` (deadlines, the
``on_error`` answer, background report retries); ``EmbeddedPolicy`` asks an ``Engine``
in the gateway's own process. Both answer the engine's dataclasses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tollway.policy.model import Decision, ReportAck

if TYPE_CHECKING:
    from tollway.client import AsyncClient
    from tollway.policy.engine import Engine

__all__ = ["Policy", "SidecarPolicy", "EmbeddedPolicy"]

R = TypeVar("R")


class Policy(Protocol):
    async def decide(self, request: Mapping[str, Any]) -> Decision: ...

    async def report(self, report: Mapping[str, Any]) -> ReportAck: ...

    async def close(self) -> None: ...


class SidecarPolicy:
    """Decisions from a sidecar; a failed or late one is answered by the client's ``on_error``."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def decide(self, request: Mapping[str, Any]) -> Decision:
        return await self.client.decide(request)

    async def report(self, report: Mapping[str, Any]) -> ReportAck:
        return await self.client.report(report)

    async def close(self) -> None:
        await self.client.close()


class EmbeddedPolicy:
    """Decisions from an ``Engine`` in this process.

    An engine on a networked store (Redis) blocks on each call, so its calls run in a
    worker thread; on the memory store they take microseconds and run inline.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _run(self, call: Callable[[Any], R], arg: Any) -> R:
        if self.engine.blocking:
            return await asyncio.to_thread(call, arg)
        return call(arg)

    async def decide(self, request: Mapping[str, Any]) -> Decision:
        return await self._run(self.engine.decide, request)

    async def report(self, report: Mapping[str, Any]) -> ReportAck:
        return await self._run(self.engine.report, report)

    async def close(self) -> None:
        self.engine.close()
