"""Bounded label values for what clients name: models and report statuses.

Prometheus keeps one series per label value forever, and a scrape costs time and memory
per series: a client inventing model names must not be able to grow ``/metrics`` without
end. A ``LabelValues`` passes the values it knows (the models the rules name, the usual
statuses), then the first ``extra`` others it sees, and maps every later one to
``other``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["OTHER", "LabelValues", "DEFAULT_EXTRA", "KNOWN_STATUSES"]

OTHER = "other"
DEFAULT_EXTRA = 100  # values per label beyond the known ones
# what gateways report most; each keeps its own series whatever else clients send
KNOWN_STATUSES = ("success", "error", "timeout", "cancelled")


class LabelValues:
    """One label's values: the known ones, then ``extra`` first-come others, then ``other``."""

    __slots__ = ("_extra", "_known", "_lock", "_seen")

    def __init__(self, extra: int = DEFAULT_EXTRA, known: Iterable[str] = ()) -> None:
        if extra < 0:
            raise ValueError(f"extra: must not be negative, got {extra}")
        self._extra = extra
        self._known: frozenset[str] = frozenset(known)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def know(self, values: Iterable[str]) -> None:
        """Replace the known values (the models of a newly loaded ruleset). Values seen
        before keep their series: a series never changes its label."""
        self._known = frozenset(values)

    def __call__(self, value: str) -> str:
        if value in self._known or value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._extra:
                self._seen.add(value)
                return value
        return OTHER

    @property
    def extra_seen(self) -> int:
        """How many first-come values hold their own series."""
        return len(self._seen)
