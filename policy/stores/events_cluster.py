"""Usage events on a Redis Cluster: one stream per shard, read as one source.

A script appends an event to the stream of the shard whose counters it changes
(``{prefix}{<tag>}usage:events``, ``cluster_tags``): a stream is one key, and a script
may touch one slot only. ``ShardedEventStream`` reads the ``SHARDS`` streams in turn
(each through its ``RedisEventStream``, with the same consumer group), so the ingester
sees one ``EventSource``. A stream whose master is down is skipped until it is back:
the others are still read. Housekeeping (taking over what a dead reader left, trimming)
visits a few streams per call, every stream within ``SHARDS / MAINTAIN_PER_CALL`` calls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .base import StoreUnavailable
from .events import Delivery
from .events_redis import RedisEventStream

__all__ = ["ShardedEventStream", "MAINTAIN_PER_CALL"]

MAINTAIN_PER_CALL = 8


class ShardedEventStream:
    """The ``EventSource`` over the streams of every shard (``streams[i]``: shard ``i``)."""

    def __init__(self, streams: Sequence[RedisEventStream]) -> None:
        if not streams:
            raise ValueError("streams: at least one")
        self.streams = list(streams)
        self._next = 0  # where the next read starts, so that no stream waits behind others
        self._maintained = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._coming = 0  # events accepted, being appended by the store's pool

    def expect_one(self) -> None:
        """An event was accepted and will be appended in a moment (``arrived`` then):
        it counts in the backlog meanwhile, so that a flush waits for it."""
        with self._lock:
            self._coming += 1

    def arrived(self) -> None:
        with self._lock:
            self._coming -= 1

    def read(self, count: int, wait: float) -> list[Delivery]:
        out: list[Delivery] = []
        failed: StoreUnavailable | None = None
        n = len(self.streams)
        start = self._next
        for step in range(n):
            i = (start + step) % n
            try:
                got = self.streams[i].read(count - len(out), 0)
            except StoreUnavailable as exc:
                failed = failed or exc
                continue
            out += [Delivery(f"{i}/{d.token}", d.event) for d in got]
            if len(out) >= count:
                self._next = (i + 1) % n
                return out
        self._next = (start + 1) % n
        if out:
            return out
        if failed is not None:
            raise failed
        if wait > 0:
            self._wake.clear()
            self._wake.wait(wait)
        return []

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        by_stream: dict[int, list[Delivery]] = {}
        for d in deliveries:
            shard, _, token = d.token.partition("/")
            by_stream.setdefault(int(shard), []).append(Delivery(token, d.event))
        for index, own in by_stream.items():
            self.streams[index].ack(own)

    def backlog(self) -> int:
        return self._coming + sum(s.backlog() for s in self.streams)

    def dropped(self) -> int:
        return sum(s.dropped() for s in self.streams)

    def maintain(self) -> None:
        failed: StoreUnavailable | None = None
        n = len(self.streams)
        for step in range(min(MAINTAIN_PER_CALL, n)):
            try:
                self.streams[(self._maintained + step) % n].maintain()
            except StoreUnavailable as exc:
                failed = failed or exc
        self._maintained = (self._maintained + MAINTAIN_PER_CALL) % n
        if failed is not None:
            raise failed

    def interrupt(self) -> None:
        self._wake.set()

    def close(self) -> None:
        for s in self.streams:
            s.close()
