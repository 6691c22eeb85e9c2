"""Where the gRPC servicers run their engine calls: one place for every service of the port.

Engine calls go through one ``Offload`` (a bounded thread pool when the engine may wait
on the network, inline otherwise), shared by the Tollway service and the Envoy services.
``last_call`` is the monotonic time the latest call of any of them started: the drain on
shutdown watches it.

The engine calls that spend the store's time budget (``decide``, ``explain``,
``report``) are given the time their gRPC call arrived (``touch``, per call), so that
time spent waiting here for a thread counts against the budget: every service gets this
without passing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from tollway.policy.engine import Engine

from .offload import Offload

__all__ = ["EngineCalls"]

R = TypeVar("R")

# when the gRPC call being handled arrived (each call is handled in a task of its own)
_ARRIVED: ContextVar[float | None] = ContextVar("tollway_call_arrived", default=None)
_BUDGETED = frozenset({Engine.decide, Engine.explain, Engine.report})


class EngineCalls:
    """Runs ``Engine`` methods for the servicers that share one gRPC server."""

    def __init__(self, engine: Engine, *, max_workers: int = 32) -> None:
        self.engine = engine
        self.last_call = 0.0
        self._offload = Offload(
            threads=max_workers, name="tollway-engine", inline=not engine.blocking
        )

    def touch(self) -> None:
        """Note that a call started now."""
        self.last_call = now = time.monotonic()
        _ARRIVED.set(now)

    async def __call__(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        if getattr(fn, "__func__", None) in _BUDGETED and "received_at" not in kwargs:
            kwargs["received_at"] = _ARRIVED.get()
        return await self._offload(fn, *args, **kwargs)

    def close(self) -> None:
        self._offload.close()
