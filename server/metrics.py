"""Prometheus metrics: the engine's ``Observer`` plus the ruleset gauges.

Each ``Metrics`` owns its ``CollectorRegistry`` so that several servers (and tests) can
live in one process. No label ever carries a user or group id: their number is unbounded.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tollway.dsl.compiled import CompiledRuleset
from tollway.policy.model import Decision, UsageReport

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# 10 µs .. 100 ms: a decision is tens of microseconds in memory, one round trip with Redis
DECIDE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)
STORE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


class Metrics:
    """Counts what the engine reports through the ``Observer`` hooks."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "tollway_decisions_total", "Decisions by reason and whether they routed.",
            ["reason", "routed"], registry=r,
        )
        self.decide_seconds = Histogram(
            "tollway_decide_seconds", "Time to decide one request inside the engine.",
            buckets=DECIDE_BUCKETS, registry=r,
        )
        self.rule_matches = Counter(
            "tollway_rule_matches_total", "Decisions in which an enforced rule matched.",
            ["rule"], registry=r,
        )
        self.shadow_matches = Counter(
            "tollway_shadow_matches_total", "Decisions in which a shadow rule matched.",
            ["rule"], registry=r,
        )
        self.quota_exceeded = Counter(
            "tollway_quota_exceeded_total", "Denials in which the quota was exceeded.",
            ["quota"], registry=r,
        )
        self.routes = Counter(
            "tollway_routes_total", "Allowed requests routed from the requested model to another.",
            ["from_model", "to_model"], registry=r,
        )
        self.checks = Counter(
            "tollway_checks_total", "Extra checks asked of the gateway for allowed requests.",
            ["check"], registry=r,
        )
        self.reports = Counter(
            "tollway_reports_total", "Usage reports received, by status.", ["status"], registry=r,
        )
        self.usage_tokens = Counter(
            "tollway_usage_tokens_total", "Tokens reported (input + output), duplicates excluded.",
            ["model"], registry=r,
        )
        self.usage_cost = Counter(
            "tollway_usage_cost_usd_total", "Cost reported in USD, duplicates excluded.",
            ["model"], registry=r,
        )
        self.store_errors = Counter(
            "tollway_store_errors_total", "Counter-store calls that failed.",
            ["store", "op"], registry=r,
        )
        self.store_seconds = Histogram(
            "tollway_store_seconds", "Latency of counter-store calls.",
            ["store", "op"], buckets=STORE_BUCKETS, registry=r,
        )
        self.ruleset_info = Gauge(
            "tollway_ruleset_info", "1 for the version of the ruleset in force.",
            ["version"], registry=r,
        )
        self.ruleset_reloads = Counter(
            "tollway_ruleset_reloads_total", "Attempts to reload the rules, by result.",
            ["result"], registry=r,
        )
        self.ruleset_rules = Gauge(
            "tollway_ruleset_rules", "Rules in the ruleset in force.", registry=r,
        )
        for result in ("success", "error"):
            self.ruleset_reloads.labels(result)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- Observer

    def decision(
        self, decision: Decision, requested_model: str, exceeded: tuple[str, ...], seconds: float
    ) -> None:
        self.decisions.labels(decision.reason, "true" if decision.routed else "false").inc()
        self.decide_seconds.observe(seconds)
        for rule in decision.matched_rules:
            self.rule_matches.labels(rule).inc()
        for rule in decision.shadow.matched_rules:
            self.shadow_matches.labels(rule).inc()
        for quota in exceeded:
            self.quota_exceeded.labels(quota).inc()
        if not decision.allowed:  # a denied request goes nowhere and runs no checks
            return
        if decision.routed:
            self.routes.labels(requested_model, decision.model).inc()
        for check in decision.checks:
            self.checks.labels(check).inc()

    def report(self, report: UsageReport, outcome: str) -> None:
        self.reports.labels(report.status).inc()
        if outcome == "duplicate":
            return
        if report.total_tokens:
            self.usage_tokens.labels(report.model).inc(report.total_tokens)
        if report.cost_usd:
            self.usage_cost.labels(report.model).inc(report.cost_usd)

    def store_call(self, store: str, op: str, seconds: float, failed: bool) -> None:
        self.store_seconds.labels(store, op).observe(seconds)
        if failed:
            self.store_errors.labels(store, op).inc()

    # ---------------------------------------------------------------- ruleset

    def ruleset_loaded(self, ruleset: CompiledRuleset) -> None:
        """Point the info gauge at ``ruleset.version`` alone and count its rules."""
        with self._lock:
            self.ruleset_info.clear()
            self.ruleset_info.labels(ruleset.version).set(1)
            self.ruleset_rules.set(len(ruleset.rules))

    def reload_result(self, ok: bool) -> None:
        self.ruleset_reloads.labels("success" if ok else "error").inc()

    # ---------------------------------------------------------------- exposition

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))
