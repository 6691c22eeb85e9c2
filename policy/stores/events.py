"""Where usage events wait between the counter store and the usage database.

A counter store appends an event in the same atomic step as the counter change it
records (an admitted decision, a report that was not a duplicate); the ingester reads
batches from the store's ``EventSource``, writes them, then acknowledges them. The
memory store keeps events in a bounded in-process queue (``MemoryEventQueue``); the
Redis store in a stream shared by every replica (``events_redis``).

Both are bounded: an event that finds the bound reached is dropped and counted
(``dropped``), and the decision or report it belongs to is unaffected.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..usage import UsageEvent

__all__ = ["Delivery", "EventSource", "MemoryEventQueue", "DEFAULT_MAX_BACKLOG"]

# Events that may wait for the database: about 15 minutes of 1,000 events/s.
DEFAULT_MAX_BACKLOG = 1_000_000


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to the ingester. ``token`` identifies it to ``ack`` (a stream
    entry id); ``event`` is None for an entry that could not be decoded (it is
    acknowledged and counted as dropped)."""

    token: str
    event: UsageEvent | None


class EventSource(Protocol):
    def read(self, count: int, wait: float) -> list[Delivery]:
        """Up to ``count`` events not yet handed out, waiting up to ``wait`` seconds for
        the first. Raises ``StoreUnavailable``."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """The events are stored: forget them. Raises ``StoreUnavailable``."""
        ...

    def backlog(self) -> int:
        """Events appended and not yet acknowledged. Raises ``StoreUnavailable``."""
        ...

    def dropped(self) -> int:
        """Events this process could not append because the bound was reached (ever)."""
        ...

    def maintain(self) -> None:
        """Housekeeping, about once a second: take over events a dead reader left
        unacknowledged, trim what every reader acknowledged."""
        ...

    def interrupt(self) -> None:
        """Make a waiting ``read`` return early, where possible (shutting down)."""
        ...


class MemoryEventQueue:
    """A bounded FIFO in this process. ``append`` is a few hundred nanoseconds; what was
    read and not yet acknowledged still counts in the backlog (and in the bound)."""

    def __init__(self, max_events: int = DEFAULT_MAX_BACKLOG) -> None:
        if max_events < 1:
            raise ValueError("max_events: must be at least 1")
        self.max_events = max_events
        self._queue: deque[UsageEvent] = deque()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._dropped = 0

    def append(self, event: UsageEvent) -> bool:
        """Queue ``event``; False (and counted) when the bound is reached."""
        if len(self._queue) + self._in_flight >= self.max_events:
            with self._lock:
                self._dropped += 1
            return False
        self._queue.append(event)
        self._ready.set()
        return True

    def read(self, count: int, wait: float) -> list[Delivery]:
        if not self._queue and wait > 0:
            self._ready.clear()
            if not self._queue:  # an append between the check and clear() set it again
                self._ready.wait(wait)
        queue = self._queue
        with self._lock:
            n = min(count, len(queue))
            self._in_flight += n  # first: the backlog never misses an event being moved
            return [Delivery("", queue.popleft()) for _ in range(n)]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            self._in_flight -= len(deliveries)

    def backlog(self) -> int:
        return len(self._queue) + self._in_flight

    def dropped(self) -> int:
        return self._dropped

    def maintain(self) -> None:
        pass

    def interrupt(self) -> None:
        self._ready.set()
