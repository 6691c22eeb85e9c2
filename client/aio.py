"""``AsyncClient``: the asyncio client, for gateways on an event loop."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, TypeVar

import grpc

from . import calls
from .calls import Call
from .core import ClientCore, async_method, method_table

__all__ = ["AsyncClient"]

R = TypeVar("R")


class AsyncClient(ClientCore):
    """``Client``'s methods as coroutines, with the same parameters and answers.

    The channel opens at the first call, on the running event loop; the client then
    belongs to that loop. Reports queued for a retry are delivered by a thread of their
    own, so they need no loop and survive a loop that is shut down.
    """

    def _open(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[str, Any] = {}

    def _connect(self) -> dict[str, Any]:
        self._channel = self._spec.aio_channel()
        self._methods = method_table(self._channel)
        return self._methods

    async def _run(self, call: Call[R]) -> R:
        rpc = (self._methods or self._connect())[call.method]
        try:
            reply = await rpc(
                call.request,
                timeout=self._timeout(call),
                metadata=self._metadata,
                wait_for_ready=call.wait_for_ready,
            )
        except grpc.RpcError as exc:
            return self._policy.failed(call, exc)
        return call.answer(reply)

    decide = async_method(calls.decide)
    report = async_method(calls.report)
    explain = async_method(calls.explain)
    upsert_entity = async_method(calls.upsert_entity)
    get_entity = async_method(calls.get_entity)
    get_usage = async_method(calls.get_usage)
    list_usage = async_method(calls.list_usage)
    ready = async_method(calls.ready)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the reports queued for retry are delivered (or dropped); False on timeout."""
        return await asyncio.to_thread(self._policy.retrier.flush, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver queued reports for up to ``timeout`` seconds, then close the channels."""
        await asyncio.to_thread(self.close_reports, timeout)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._methods = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
