"""Engine calls that may block, run off the event loop that serves gRPC and HTTP.

Both transports share one event loop; a call that waits on the network (the Redis store)
or scans a large table (a usage listing, a metrics scrape) must not stall it. An
``Offload`` runs such calls in its own bounded thread pool; ``inline=True`` runs them on
the loop instead, which is cheaper than a thread hop for microsecond-long calls.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Offload"]

R = TypeVar("R")


class Offload:
    """``await offload(fn, *args)``: ``fn(*args)`` in a pool of ``threads`` (or inline)."""

    def __init__(self, *, threads: int, name: str, inline: bool = False) -> None:
        if threads < 1:
            raise ValueError(f"threads: must be at least 1, got {threads}")
        self._executor: ThreadPoolExecutor | None = (
            None if inline else ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        )

    @property
    def inline(self) -> bool:
        return self._executor is None

    async def __call__(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        if self._executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the calls in flight, then stop the threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
