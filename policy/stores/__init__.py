"""Counter stores: where quota counters live (memory or Redis).

``open_store`` and ``open_entity_store`` are the one place where a backend is chosen
from a URL; the Redis modules are imported only when a Redis URL is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import (
    CounterSpec,
    CounterState,
    CounterStore,
    ReportOutcome,
    StoreOptions,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from ..entities import EntityStore
    from ..usage import Retention

__all__ = [
    "CounterSpec",
    "CounterState",
    "CounterStore",
    "ReportOutcome",
    "StoreOptions",
    "StoreUnavailable",
    "open_store",
    "open_entity_store",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _kind(url: str) -> str:
    if url == "memory":
        return "memory"
    if isinstance(url, str) and url.startswith(_REDIS_SCHEMES):
        return "redis"
    raise ValueError(
        f"store: {url!r} is not a store; use 'memory' or a redis://, rediss:// or unix:// URL"
    )


def open_store(
    url: str,
    *,
    key_prefix: str = "tollway:",
    clock: Callable[[], float] | None = None,
    retention: Retention | None = None,
    options: StoreOptions | None = None,
) -> CounterStore:
    """The counter store for ``url``. ``clock`` drives the memory store (Redis uses TIME);
    ``retention`` bounds the activity log the store keeps; ``options`` its caps."""
    if _kind(url) == "memory":
        from .memory import MemoryCounterStore

        if clock is not None:
            return MemoryCounterStore(clock, retention=retention, options=options)
        return MemoryCounterStore(retention=retention, options=options)
    from .redis_store import RedisCounterStore

    timeout = (options or StoreOptions()).timeout
    return RedisCounterStore(url, key_prefix=key_prefix, retention=retention, timeout=timeout)


def open_entity_store(
    url: str,
    *,
    key_prefix: str = "tollway:",
    clock: Callable[[], float] | None = None,
    options: StoreOptions | None = None,
) -> EntityStore:
    """The entity store for ``url``. ``clock`` times the Redis store's read cache."""
    from ..entity_stores import MemoryEntityStore, RedisEntityStore

    if _kind(url) == "memory":
        return MemoryEntityStore()
    timeout = (options or StoreOptions()).timeout
    return RedisEntityStore(url, key_prefix=key_prefix, clock=clock, timeout=timeout)
