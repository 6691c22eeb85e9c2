"""What a client counts: decisions it answered itself, and the fate of retried reports.

Each client keeps its own counts (``Client.stats``); every client of the process also
adds to two Prometheus counters in ``prometheus_client``'s default registry, so a
gateway that already exposes ``/metrics`` shows them with no extra wiring:

- ``tollway_client_fallback_decisions_total{code, allowed}``: decisions answered by
  ``on_error`` because the sidecar failed with ``code``;
- ``tollway_client_reports_total{result}``: ``queued`` for a later attempt,
  ``delivered`` late, ``dropped`` (queue full, too old, or refused by the server).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import Counter

__all__ = ["ClientStats", "Counts"]

_FALLBACKS = Counter(
    "tollway_client_fallback_decisions_total",
    "Decisions a tollway client answered by on_error because the sidecar failed.",
    ["code", "allowed"],
)
_REPORTS = Counter(
    "tollway_client_reports_total",
    "Reports a tollway client could not deliver at once: queued, delivered late, dropped.",
    ["result"],
)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of one client's counts."""

    fallback_decisions: int = 0  # decisions answered by on_error
    reports_queued: int = 0  # reports the sidecar did not take at once
    reports_delivered: int = 0  # queued reports delivered by a later attempt
    reports_dropped: int = 0  # queued reports given up: queue full, too old, refused
    reports_pending: int = 0  # queued now


class Counts:
    """Thread-safe counters behind ``ClientStats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fallbacks = 0
        self._queued = 0
        self._delivered = 0
        self._dropped = 0

    def fallback(self, code: str, allowed: bool) -> None:
        with self._lock:
            self._fallbacks += 1
        _FALLBACKS.labels(code, "true" if allowed else "false").inc()

    def queued(self) -> None:
        with self._lock:
            self._queued += 1
        _REPORTS.labels("queued").inc()

    def delivered(self) -> None:
        with self._lock:
            self._delivered += 1
        _REPORTS.labels("delivered").inc()

    def dropped(self, n: int = 1) -> None:
        with self._lock:
            self._dropped += n
        _REPORTS.labels("dropped").inc(n)

    def snapshot(self, pending: int) -> ClientStats:
        with self._lock:
            return ClientStats(
                self._fallbacks, self._queued, self._delivered, self._dropped, pending
            )
