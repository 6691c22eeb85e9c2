"""Usage events in a Redis stream shared by every replica (``{prefix}usage:events``).

Appending happens inside the counter scripts (``lua/events.lua``): the event of an
admitted decision or of a report that was not a duplicate is ``XADD``ed in the same
script call that changes the counters, so it costs no round trip and exists exactly
when the counter change does. Each entry has one field, ``e``: the event as JSON
(``UsageEvent.to_json``).

Reading (``RedisEventStream``, one per process, in the ingester's thread) goes through
one consumer group, ``tollway-usage``, in which each process is a consumer:
``XREADGROUP … >`` hands every entry to one replica; ``XACK`` after the database
committed it. A replica that died holding entries leaves them pending; any other
replica takes them over with ``XAUTOCLAIM`` once they were idle ``claim_idle`` seconds
(a live ingester that is still retrying during a database outage may be overtaken too:
the database stores each event once, so writing it twice adds nothing). Entries every
group acknowledged are trimmed (``XTRIM MINID``).

The stream is bounded by ``max_backlog`` entries: a script that finds it full appends
nothing and says so; the caller counts the event as dropped (decisions and reports go
on). Requires Redis 7.0 or later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from ..usage import UsageEvent
from .base import StoreUnavailable
from .events import DEFAULT_MAX_BACKLOG, Delivery

__all__ = ["RedisEventStream", "stream_key", "GROUP", "DEFAULT_CLAIM_IDLE"]

log = logging.getLogger("tollway.usage")

GROUP = "tollway-usage"
DEFAULT_CLAIM_IDLE = 10.0  # seconds an entry stays with a silent reader before others take it
_CONSUMER_EXPIRY_MS = 3_600_000  # a reader silent this long with nothing pending is removed


def stream_key(prefix: str) -> str:
    return f"{prefix}usage:events"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _after(entry_id: str) -> str:
    """The smallest stream id greater than ``entry_id``."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisEventStream:
    """The ``EventSource`` over a Redis stream. ``client`` must allow socket timeouts
    longer than a read's ``wait`` (reads block on the server)."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        consumer: str | None = None,
    ) -> None:
        self._redis = client
        self.key = key
        self.max_backlog = max_backlog
        self.claim_idle = claim_idle
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._group_ready = False
        self._claim_from = "0-0"
        self._claimed: list[Delivery] = []
        self._lock = threading.Lock()
        self._dropped = 0

    # ------------------------------------------------------------------ appending side

    def append_args(self, event: UsageEvent) -> list[str]:
        """The ARGV values of ``event_append`` (``lua/events.lua``) for ``event``; the
        stream itself, ``key``, goes last in the script's KEYS."""
        return [str(self.max_backlog), event.to_json()]

    def count_dropped(self) -> None:
        with self._lock:
            self._dropped += 1

    def dropped(self) -> int:
        return self._dropped

    # ------------------------------------------------------------------ reading side

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self._redis.<method>(*args)`` (redis-py's parsed replies), errors as
        ``StoreUnavailable``."""
        try:
            return getattr(self._redis, method)(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream (and its group) is gone: Redis restarted
                self._group_ready = False
            raise StoreUnavailable(f"redis: {exc}") from exc
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # from the first entry: events appended before any reader started are kept
            self._redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreUnavailable(f"redis: {exc}") from exc
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        self._group_ready = True

    def _deliveries(self, entries: Sequence[tuple[Any, Any]]) -> list[Delivery]:
        out: list[Delivery] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            raw = (fields or {}).get(b"e")
            try:
                event = UsageEvent.from_json(raw) if raw is not None else None
            except (ValueError, TypeError):
                event = None
            if event is None:
                log.warning("usage stream %s: entry %s is not a usage event", self.key, entry_id)
            out.append(Delivery(entry_id, event))
        return out

    def taken_over(self, count: int) -> list[Delivery]:
        """Up to ``count`` of the entries taken over from another reader (``maintain``),
        which ``read`` hands out before reading the stream; the group is made first."""
        self._ensure_group()
        taken, self._claimed = self._claimed[:count], self._claimed[count:]
        return taken

    def read_command(self, count: int) -> tuple[Any, ...]:
        """The arguments of redis-py's ``xreadgroup`` for a read that does not wait (the
        cluster's reader sends those of every stream at once)."""
        return (GROUP, self.consumer, {self.key: ">"}, count)

    def delivered(self, reply: Any) -> list[Delivery]:
        """The deliveries of an ``xreadgroup`` reply (or error) for ``read_command``."""
        if isinstance(reply, redis.ResponseError) and "NOGROUP" in str(reply):
            self._group_ready = False  # the stream (and its group) is gone: Redis restarted
        if isinstance(reply, BaseException):
            raise StoreUnavailable(f"redis: {reply}")
        return self._deliveries(reply[0][1]) if reply else []

    def read(self, count: int, wait: float) -> list[Delivery]:
        if taken := self.taken_over(count):
            return taken
        try:
            reply: Any = self._redis.xreadgroup(
                GROUP, self.consumer, {self.key: ">"}, count=count,
                block=max(1, int(wait * 1000)) if wait > 0 else None,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_ready = False
            raise StoreUnavailable(f"redis: {exc}") from exc
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        if not reply:
            return []
        return self._deliveries(reply[0][1])

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._call("xack", self.key, GROUP, *(d.token for d in deliveries))

    def backlog(self) -> int:
        """Entries not yet read by the group plus entries read and not acknowledged."""
        self._ensure_group()
        for info in self._call("xinfo_groups", self.key):
            if _text(info["name"]) == GROUP:
                lag = info.get("lag")
                if lag is None:  # Redis cannot tell after some deletions: count the stream
                    return int(self._call("xlen", self.key))
                return int(lag) + int(info["pending"])
        return int(self._call("xlen", self.key))

    def maintain(self) -> None:
        self._ensure_group()
        self._claim()
        self._trim()
        self._forget_idle_consumers()

    def _claim(self) -> None:
        """Take over entries another reader left unacknowledged for ``claim_idle``."""
        if self._claimed:
            return
        reply = self._call(
            "xautoclaim", self.key, GROUP, self.consumer, int(self.claim_idle * 1000),
            self._claim_from, count=1000,
        )
        next_from, entries, deleted = reply[0], reply[1], reply[2] if len(reply) > 2 else []
        self._claim_from = _text(next_from)
        if deleted:
            with self._lock:
                self._dropped += len(deleted)
            log.warning("usage stream %s: %d pending entries had been deleted", self.key,
                        len(deleted))
        if entries:
            log.info("usage stream %s: took over %d entries left by another reader",
                     self.key, len(entries))
            self._claimed = self._deliveries(entries)

    def _trim(self) -> None:
        """Drop the entries every group has acknowledged."""
        keep_from: tuple[int, int] | None = None
        for info in self._call("xinfo_groups", self.key):
            if int(info["pending"]):
                first = _text(self._call("xpending", self.key, _text(info["name"]))["min"])
            else:
                first = _after(_text(info["last-delivered-id"]))
            if keep_from is None or _id_key(first) < keep_from:
                keep_from = _id_key(first)
        if keep_from is not None and keep_from > (0, 0):
            self._call("xtrim", self.key, minid=f"{keep_from[0]}-{keep_from[1]}", approximate=False)

    def _forget_idle_consumers(self) -> None:
        for info in self._call("xinfo_consumers", self.key, GROUP):
            name = _text(info["name"])
            if name != self.consumer and not int(info["pending"]) and (
                int(info["idle"]) > _CONSUMER_EXPIRY_MS
            ):
                self._call("xgroup_delconsumer", self.key, GROUP, name)

    def interrupt(self) -> None:
        """Nothing to do: a read blocks on the server for at most its ``wait``."""

    def close(self) -> None:
        """Close the reading connection (pending entries are left for another reader)."""
        with contextlib.suppress(redis.RedisError, OSError):
            self._redis.close()

