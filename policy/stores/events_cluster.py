"""Usage events on a Redis Cluster: one stream per shard, read as one source.

A script appends an event to the stream of the shard whose counters it changes
(``{prefix}{<tag>}usage:events``, ``cluster_tags``): a stream is one key, and a script
may touch one slot only. ``ShardedEventStream`` reads the ``SHARDS`` streams at once
(one ``XREADGROUP`` each, sent in one pipeline: a round trip per master; each stream's
group and bookkeeping are its ``RedisEventStream``'s), so the ingester sees one
``EventSource``. While a master is down the pipeline fails as a whole, and the streams
are read one by one instead, skipping those of the missing master until it is back.
Housekeeping (taking over what a dead reader left, trimming) visits a few streams per
call, every stream within ``SHARDS / MAINTAIN_PER_CALL`` calls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from .base import StoreUnavailable
from .events import Delivery
from .events_redis import RedisEventStream

__all__ = ["ShardedEventStream", "MAINTAIN_PER_CALL"]

MAINTAIN_PER_CALL = 8


class ShardedEventStream:
    """The ``EventSource`` over the streams of every shard (``streams[i]``: shard ``i``)."""

    def __init__(self, streams: Sequence[RedisEventStream], client: Any) -> None:
        """``client``: the redis-py cluster client the streams read through (its
        pipeline sends every stream's read at once, one round trip per master)."""
        if not streams:
            raise ValueError("streams: at least one")
        self.streams = list(streams)
        self._client = client
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
        start, self._next = self._next, (self._next + 1) % n
        order = [(start + step) % n for step in range(n)]
        reading = []
        for i in order:  # first what was taken over from dead readers (no round trip)
            try:
                taken = self.streams[i].taken_over(count - len(out))
            except StoreUnavailable as exc:
                failed = failed or exc
                continue
            out += [Delivery(f"{i}/{d.token}", d.event) for d in taken]
            reading.append(i)
        if len(out) < count and reading:
            # every stream's read at once: one round trip per master
            try:
                pipe = self._client.pipeline()
                for i in reading:
                    pipe.xreadgroup(*self.streams[i].read_command(count))
                replies = pipe.execute(raise_on_error=False)
            except (redis.RedisError, RedisClusterException, OSError, StoreUnavailable):
                replies = None  # a master is down: stream by stream, skipping its streams
            for k, i in enumerate(reading):
                try:
                    if replies is None:
                        got = self.streams[i].read(count, 0)
                    else:
                        got = self.streams[i].delivered(replies[k])
                except StoreUnavailable as exc:
                    failed = failed or exc
                    continue
                out += [Delivery(f"{i}/{d.token}", d.event) for d in got]
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
