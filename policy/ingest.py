"""The ingester: moves usage events from the counter store's ``EventSource`` into the
usage database, in a thread of its own (one per process, beside the server or an
embedding gateway).

Each cycle reads a batch, writes it in one transaction and only then acknowledges it,
so an event is either stored or still waiting: a crash between the two writes the batch
again later, and the database stores each event once. While traffic is light the
ingester writes as soon as events arrive; once a batch holds ``linger_from`` events or
more, it waits ``linger`` seconds before reading the next one, so that batches grow with
the traffic: a batch writes each rollup row it touches once, however many of its events
fall on that row, so a batch of thousands costs a fraction per event of a batch of
hundreds. ``flush`` and ``stop`` cut the wait short. While the database is down the
ingester keeps its batch and retries with backoff (0.1 s doubling to 5 s); events keep
waiting in the store (bounded), and decisions are unaffected. About once a second it
publishes the backlog and the drops (``Observer.usage_status``) and lets the source do
its housekeeping; once an hour it deletes events past the retention.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from .observer import NullObserver, Observer
from .stores.base import StoreUnavailable
from .stores.events import Delivery, EventSource
from .usage import UsageUnavailable
from .usage_db import SchemaTooNew, UsageDatabase

__all__ = ["Ingester"]

log = logging.getLogger("tollway.usage")

_MAINTAIN_EVERY = 1.0
_PURGE_EVERY = 3600.0
_MAX_BACKOFF = 5.0


class Ingester:
    """Reads ``source`` into ``database``. ``start()`` runs it in a daemon thread;
    ``step()`` runs one cycle in the caller's thread (tests)."""

    def __init__(
        self,
        source: EventSource,
        database: UsageDatabase,
        *,
        observer: Observer | None = None,
        batch_size: int = 10_000,
        wait: float = 0.2,
        linger: float = 1.0,
        linger_from: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.database = database
        self._observer = observer or NullObserver()
        self.batch_size = batch_size
        self.wait = wait
        self.linger = linger
        self.linger_from = linger_from
        self._read = 0  # events in the batch the last cycle read
        self._clock = clock
        self._batch: list[Delivery] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_maintain = 0.0
        self._next_purge = 0.0
        self._backoff = 0.0
        self._failing = ""  # the error being retried, logged once per outage
        self._reported_drops = 0
        self._drain_until = 0.0
        self.stopped_by: BaseException | None = None  # a schema too new stops ingestion

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tollway-ingest", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is waiting (up to ``timeout`` seconds), then end the thread."""
        if self._thread is None:
            return
        self._drain_until = self._clock() + timeout
        self._stop.set()
        self._wake.set()
        self.source.interrupt()
        self._thread.join(timeout + 5.0)
        self._thread = None

    def _run(self) -> None:
        while True:
            if self._stop.is_set() and (self._clock() >= self._drain_until or self._drained()):
                break
            try:
                self.step()
            except Exception:  # never let the thread die: log, back off, go on
                log.exception("usage ingester: unexpected error")
                self._pause(1.0)
                continue
            if self.linger_from <= self._read < self.batch_size and not self._stop.is_set():
                self._pause(self.linger)  # busy, and nothing left over: let the next batch fill
        self._publish()

    def _drained(self) -> bool:
        if self._batch or self.stopped_by is not None:
            return bool(self.stopped_by)
        try:
            return self.source.backlog() == 0
        except StoreUnavailable:
            return True

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    # ------------------------------------------------------------------ one cycle

    def step(self) -> int:
        """Read (or retry) one batch and write it; returns how many events it stored."""
        now = self._clock()
        if now >= self._next_maintain:
            self._next_maintain = now + _MAINTAIN_EVERY
            self._maintain()
        if self.stopped_by is not None:
            self._pause(1.0)
            return 0
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_EVERY
            self._purge()
        self._read = 0
        if not self._batch:
            try:
                wait = 0.0 if self._stop.is_set() else self.wait
                self._batch = self.source.read(self.batch_size, wait)
            except StoreUnavailable as exc:
                self._failed(exc)
                return 0
            if not self._batch:
                return 0
            self._read = len(self._batch)
        return self._write()

    def _write(self) -> int:
        batch = self._batch
        horizon = self.database.horizon()
        events = [d.event for d in batch if d.event is not None and d.event.time >= horizon]
        stale = len(batch) - len(events)
        try:
            stored = self.database.write(events)
            self.source.ack(batch)
        except (UsageUnavailable, StoreUnavailable) as exc:
            self._failed(exc)
            return 0
        except SchemaTooNew as exc:
            log.error("usage ingester stopped: %s", exc)
            self.stopped_by = exc
            return 0
        if stale:
            # undecodable, or older than the retention (their rows may be gone already:
            # storing them again could count them twice)
            self._observer.usage_dropped(stale)
        self._batch = []
        self._recovered()
        return stored

    def _failed(self, exc: Exception) -> None:
        self._read = 0  # the backoff is the wait
        text = str(exc)
        if not self._failing:
            log.warning("usage ingester: %s; events wait and are retried", text)
        self._failing = text
        self._publish()  # the backlog grows while this lasts: show it at once
        self._backoff = min(max(self._backoff * 2, 0.1), _MAX_BACKOFF)
        self._pause(self._backoff)

    def _recovered(self) -> None:
        if self._failing:
            log.info("usage ingester: writing again")
        self._failing = ""
        self._backoff = 0.0

    def _maintain(self) -> None:
        try:
            self.source.maintain()
        except StoreUnavailable as exc:
            log.debug("usage ingester: housekeeping failed: %s", exc)
        self._publish()

    def _publish(self) -> None:
        dropped = self.source.dropped()
        if dropped > self._reported_drops:
            self._observer.usage_dropped(dropped - self._reported_drops)
            self._reported_drops = dropped
        with contextlib.suppress(StoreUnavailable):
            self._observer.usage_backlog(self.source.backlog())

    def _purge(self) -> None:
        try:
            deleted = self.database.purge()
        except UsageUnavailable as exc:
            log.debug("usage retention postponed: %s", exc)
            self._next_purge = self._clock() + 60.0
        except SchemaTooNew:
            pass
        else:
            if deleted:
                log.info("usage retention: deleted %d events", deleted)

    # ------------------------------------------------------------------ waiting

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event appended before the call is written (or ``timeout``);
        True when the backlog reached zero. Without a running thread, runs cycles here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._thread is None:
                self.step()
            else:
                self._wake.set()  # a lingering ingester reads at once
            try:
                if not self._batch and self.source.backlog() == 0:
                    return True
            except StoreUnavailable:
                pass
            if self._thread is not None:
                time.sleep(0.005)
        return False
