"""Hooks through which the engine tells a transport what happened, without knowing Prometheus.

The server implements ``Observer`` with prometheus-client; the engine's default does nothing.
"""

from __future__ import annotations

from typing import Protocol

from tollway.dsl.compiled import EvalContext

from .model import DecideRequest, Decision, ReportOutcome, UsageReport

__all__ = ["Observer", "NullObserver", "Fanout"]


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

    def metadata_ignored(self, keys: tuple[str, ...]) -> None:
        """Admin-only keys a request tried to set ("user.tier"), left unmerged."""
        ...

    def decided(self, request: DecideRequest, decision: Decision, context: EvalContext) -> None:
        """After every ``decide``, with the request and the metadata the rules saw (audit)."""
        ...

    def balance_level(self, balance: str, key: str, low: bool) -> None:
        """A balance's level as last seen (a decision spent from it, a credit changed it):
        whether the entity ``key`` is under the balance's ``warn below`` amount."""
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

    def metadata_ignored(self, keys: tuple[str, ...]) -> None:
        pass

    def decided(self, request: DecideRequest, decision: Decision, context: EvalContext) -> None:
        pass

    def balance_level(self, balance: str, key: str, low: bool) -> None:
        pass


class Fanout:
    """Several observers as one (the metrics and the decision log)."""

    def __init__(self, *observers: Observer) -> None:
        self._all = observers

    def decision(
        self, decision: Decision, requested_model: str, exceeded: tuple[str, ...], seconds: float
    ) -> None:
        for o in self._all:
            o.decision(decision, requested_model, exceeded, seconds)

    def report(self, report: UsageReport, outcome: ReportOutcome) -> None:
        for o in self._all:
            o.report(report, outcome)

    def store_call(self, store: str, op: str, seconds: float, failed: bool) -> None:
        for o in self._all:
            o.store_call(store, op, seconds, failed)

    def metadata_ignored(self, keys: tuple[str, ...]) -> None:
        for o in self._all:
            o.metadata_ignored(keys)

    def decided(self, request: DecideRequest, decision: Decision, context: EvalContext) -> None:
        for o in self._all:
            o.decided(request, decision, context)

    def usage_backlog(self, events: int) -> None:
        for o in self._all:
            o.usage_backlog(events)

    def usage_dropped(self, events: int) -> None:
        for o in self._all:
            o.usage_dropped(events)

    def balance_level(self, balance: str, key: str, low: bool) -> None:
        for o in self._all:
            o.balance_level(balance, key, low)
