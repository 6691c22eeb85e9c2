"""Where the gRPC servicers run their engine calls: one place for every service of the port.

When ``engine.blocking`` (a networked store), engine calls run in one bounded thread pool
so that the event loop keeps accepting calls; otherwise they run inline, which is cheaper
than a thread hop for microsecond-long decisions. ``last_call`` is the monotonic time the
latest call of any service started: the drain on shutdown watches it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tollway.policy.engine import Engine

__all__ = ["EngineCalls"]

R = TypeVar("R")


class EngineCalls:
    """Runs ``Engine`` methods for the servicers that share one gRPC server."""

    def __init__(self, engine: Engine, *, max_workers: int = 32) -> None:
        self.engine = engine
        self.last_call = 0.0
        self._executor: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tollway-engine")
            if engine.blocking
            else None
        )

    def touch(self) -> None:
        """Note that a call started now."""
        self.last_call = time.monotonic()

    async def __call__(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        if self._executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
