"""Hooks through which the engine tells a transport what happened, without knowing Prometheus.

The server implements ``Observer`` with prometheus-client; the engine's default does nothing.
"""

from __future__ import annotations

from typing import Protocol

from .model import Decision, ReportOutcome, UsageReport

__all__ = ["Observer", "NullObserver"]


class Observer(Protocol):
    def decision(
        self, decision: Decision, requested_model: str, exceeded: tuple[str, ...], seconds: float
    ) -> None:
        """After every ``decide`` (not ``explain``). ``exceeded`` names the exceeded quotas."""
        ...

    def report(self, report: UsageReport, outcome: ReportOutcome) -> None:
        """After every ``report``; outcome is "settled", "added" or "duplicate"."""
        ...

    def store_call(self, store: str, op: str, seconds: float, failed: bool) -> None:
        """Every counter-store call: its latency and whether it failed."""
        ...

    def usage_backlog(self, events: int) -> None:
        """About once a second: usage events accepted and not yet in the usage database."""
        ...

    def usage_dropped(self, events: int) -> None:
        """Usage events lost: a bound was reached, or an event could not be stored."""
        ...


class NullObserver:
    def decision(
        self, decision: Decision, requested_model: str, exceeded: tuple[str, ...], seconds: float
    ) -> None:
        pass

    def report(self, report: UsageReport, outcome: ReportOutcome) -> None:
        pass

    def store_call(self, store: str, op: str, seconds: float, failed: bool) -> None:
        pass

    def usage_backlog(self, events: int) -> None:
        pass

    def usage_dropped(self, events: int) -> None:
        pass
