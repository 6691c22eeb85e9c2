"""Reports the sidecar did not take at once, delivered later by a background thread.

A report is idempotent per ``request_id`` on the server, so sending one again after an
attempt that may or may not have arrived counts it once. The queue is bounded (a dead
sidecar must not grow a gateway's memory without end); a report that does not fit, one
older than ``max_age``, or one the server refuses for good is dropped, counted and
logged. Reports are delivered in order: while the head cannot be delivered, the ones
behind it wait with it (the sidecar is down for all of them alike).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import SidecarUnavailable, error_from_rpc
from .stats import Counts

__all__ = ["ReportRetrier", "Backoff"]

log = logging.getLogger("tollway.client")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits up to ``base * 2**n``."""

    base: float = 0.05
    cap: float = 5.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * min(self.cap, self.base * 2 ** min(attempt, 32))


@dataclass(slots=True)
class _Pending:
    report: Any  # a tollway.v1.UsageReport message
    queued_at: float
    attempts: int = 0


class ReportRetrier:
    """A bounded FIFO of reports and the daemon thread that delivers them.

    ``send`` delivers one report or raises ``grpc.RpcError``; it is only ever called
    from the delivery thread, which starts with the first report queued.
    """

    def __init__(
        self,
        send: Callable[[Any], object],
        counts: Counts,
        *,
        capacity: int = 10_000,
        max_age: float = 600.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"report_queue: must be at least 1, got {capacity}")
        self._send = send
        self._counts = counts
        self._capacity = capacity
        self._max_age = max_age
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False  # no new reports; deliver what is queued
        self._stopped = False  # give up now

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, report: Any) -> bool:
        """Queue ``report``; False (and counted as dropped) when the queue is full or closed."""
        with self._cond:
            if self._closing or len(self._queue) >= self._capacity:
                full = not self._closing
                accepted = False
            else:
                self._queue.append(_Pending(report, self._clock()))
                accepted = True
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="tollway-client-reports", daemon=True
                    )
                    self._thread.start()
                self._cond.notify_all()
        if accepted:
            self._counts.queued()
        else:
            self._counts.dropped()
            log.error(
                "tollway report %s dropped: %s", report.request_id,
                f"the retry queue is full ({self._capacity})" if full else "the client is closed",
            )
        return accepted

    def flush(self, timeout: float) -> bool:
        """Wait until every queued report was delivered or dropped; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Take no more reports, try to deliver the queued ones for up to ``timeout``
        seconds, then drop (and count) what is left."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.flush(timeout)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0))
        with self._cond:
            dropped = len(self._queue)
            self._queue.clear()
        if dropped:
            self._counts.dropped(dropped)
            log.error("tollway client closed with %d undelivered reports (dropped)", dropped)

    # ------------------------------------------------------------ delivery thread

    def _next(self) -> _Pending | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            return None if self._stopped else self._queue[0]

    def _done(self, item: _Pending) -> bool:
        """Take ``item`` off the queue; False when ``close`` already dropped it."""
        with self._cond:
            taken = bool(self._queue) and self._queue[0] is item
            if taken:
                self._queue.popleft()
            self._cond.notify_all()
            return taken

    def _drop(self, item: _Pending, why: object) -> None:
        if self._done(item):
            self._counts.dropped()
            log.error("tollway report %s dropped: %s", item.report.request_id, why)

    def _run(self) -> None:
        while (item := self._next()) is not None:
            if self._clock() - item.queued_at > self._max_age:
                self._drop(item, f"undelivered for {self._max_age:.0f} s ({item.attempts} attempts)")
                continue
            item.attempts += 1
            try:
                self._send(item.report)
            except grpc.RpcError as exc:
                error = error_from_rpc("Report", exc)
                if isinstance(error, SidecarUnavailable):
                    self._wait(self._backoff.delay(item.attempts))
                else:
                    self._drop(item, error)
                continue
            if self._done(item):
                self._counts.delivered()

    def _wait(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopped, timeout=seconds)
