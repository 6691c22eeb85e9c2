"""Where the gRPC servicers run their engine calls: one place for every service of the port.

Engine calls go through one ``Offload`` (a bounded thread pool when the engine may wait
on the network, inline otherwise), shared by the Tollway service and the Envoy services.
``last_call`` is the monotonic time the latest call of any of them started: the drain on
shutdown watches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from tollway.policy.engine import Engine

from .offload import Offload

__all__ = ["EngineCalls"]

R = TypeVar("R")


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
        self.last_call = time.monotonic()

    async def __call__(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        return await self._offload(fn, *args, **kwargs)

    def close(self) -> None:
        self._offload.close()
