"""Prometheus metrics: the engine's ``Observer`` plus the ruleset gauges.

Each ``Metrics`` owns its ``CollectorRegistry`` so that several servers (and tests) can
live in one process. Under ``serve --workers N`` the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` for its workers: prometheus_client then keeps every value in
a file of that directory, and ``exposition`` sums all workers' files, whichever worker is
scraped. Each gauge therefore says how workers combine (``multiprocess_mode``). No label ever carries a user or group id: their number is unbounded.
Labels whose values come from clients (``model``, ``from_model``, ``to_model``,
``status``) are bounded (``labels.LabelValues``): the models the rules name and the usual
statuses keep their own series, then the first ``max_label_values`` others, then
everything else is counted as ``other``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from tollway.dsl.compiled import CompiledRuleset, EvalContext
from tollway.dsl.models import named_models
from tollway.policy.model import DecideRequest, Decision, UsageReport

from .labels import DEFAULT_EXTRA, KNOWN_STATUSES, LabelValues

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "multiprocess_dir"]

# 10 µs .. 100 ms: a decision is tens of microseconds in memory, one round trip with Redis
DECIDE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)
STORE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)

# Label sets kept per metric before the cache starts over (the metric keeps every child;
# only the shortcut is dropped). Every label is bounded; this bounds the shortcut anyway.
_MAX_CHILDREN = 4096

M = TypeVar("M", Counter, Gauge, Histogram)


class _Children(Generic[M]):
    """A metric's children by label values: ``labels()`` validates and locks on every call
    (microseconds, several times per decision), a dict lookup does not."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._cache.get(values)
        if child is None:
            if len(self._cache) >= _MAX_CHILDREN:
                self._cache.clear()
            child = self._cache[values] = self._metric.labels(*values)
        return child


class StoreSizes(Protocol):
    """What the store gauges read (an ``Engine``)."""

    def store_entries(self) -> Mapping[str, int]: ...

    def store_evictions(self) -> Mapping[str, int]: ...


def multiprocess_dir() -> str | None:
    """The directory the workers of ``serve --workers N`` share their values in, or None
    in a single process (prometheus_client read the same variable when imported)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _InForce:
    """What a registry exports, less the ``tollway_ruleset_info`` series at 0: versions no
    worker has in force any more (values in the workers' files cannot be removed)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if family.name == "tollway_ruleset_info":
                family.samples = [s for s in family.samples if s.value != 0]
            yield family


class Metrics:
    """Counts what the engine reports through the ``Observer`` hooks."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_label_values: int = DEFAULT_EXTRA,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # one budget for every model label (a model is a model, requested or served)
        self.models = LabelValues(max_label_values)
        self.statuses = LabelValues(max_label_values, KNOWN_STATUSES)
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
            ["version"], registry=r, multiprocess_mode="livemax",
        )
        self.ruleset_reloads = Counter(
            "tollway_ruleset_reloads_total", "Attempts to reload the rules, by result.",
            ["result"], registry=r,
        )
        self.ruleset_rules = Gauge(
            "tollway_ruleset_rules", "Rules in the ruleset in force.", registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.metadata_ignored_total = Counter(
            "tollway_metadata_ignored_total",
            "Admin-only metadata keys that requests sent and that were not merged.",
            ["key"], registry=r,
        )
        self.decision_log_dropped = Counter(
            "tollway_decision_log_dropped_total",
            "Decision log lines dropped: the buffer was full or the write failed.",
            registry=r,
        )
        self.auth_failures = Counter(
            "tollway_auth_failures_total",
            "Calls refused for their credentials: unauthenticated or permission_denied.",
            ["code"], registry=r,
        )
        self.store_entries = Gauge(
            "tollway_store_entries", "Entries the stores keep in this process, by kind.",
            ["kind"], registry=r, multiprocess_mode="livesum",
        )
        self.store_evictions = Counter(
            "tollway_store_evictions", "Entries dropped early to respect a cap, by kind.",
            ["kind"], registry=r,
        )
        self._stores: StoreSizes | None = None
        self._evicted: dict[str, int] = {}
        self._version: str | None = None
        self._shared = multiprocess_dir()
        self.usage_backlog_events = Gauge(
            "tollway_usage_backlog",
            "Usage events accepted and not yet written to the usage database.", registry=r,
            multiprocess_mode="livemax",  # workers share one Redis stream: the same figure
        )
        self.usage_dropped_events = Counter(
            "tollway_usage_dropped", "Usage events lost (a backlog bound was reached).",
            registry=r,
        )
        self.usage_spiking = Gauge(
            "tollway_usage_spiking",
            "Users or groups spiking now (GET /v1/usage/spikes with its defaults), "
            "computed every minute.",
            ["kind", "metric"], registry=r, multiprocess_mode="livemax",  # the same in each
        )
        self.balance_low = Gauge(
            "tollway_balance_low",
            "Users or groups whose balance is under its 'warn below' amount, as last seen "
            "by this process (a decision that spent from it, a credit).",
            ["balance"], registry=r, multiprocess_mode="livemax",
        )
        self._low: dict[str, set[str]] = {}
        for result in ("success", "error"):
            self.ruleset_reloads.labels(result)
        for code in ("unauthenticated", "permission_denied"):
            self.auth_failures.labels(code)
        self._lock = threading.Lock()
        # the hot path's label lookups (never for ruleset_info, which ``clear()`` resets)
        self._decisions = _Children(self.decisions)
        self._rule_matches = _Children(self.rule_matches)
        self._shadow_matches = _Children(self.shadow_matches)
        self._quota_exceeded = _Children(self.quota_exceeded)
        self._routes = _Children(self.routes)
        self._checks = _Children(self.checks)
        self._reports = _Children(self.reports)
        self._usage_tokens = _Children(self.usage_tokens)
        self._usage_cost = _Children(self.usage_cost)
        self._store_errors = _Children(self.store_errors)
        self._store_seconds = _Children(self.store_seconds)
        self._metadata_ignored = _Children(self.metadata_ignored_total)

    # ---------------------------------------------------------------- Observer

    def decision(
        self, decision: Decision, requested_model: str, exceeded: tuple[str, ...], seconds: float
    ) -> None:
        self._decisions(decision.reason, "true" if decision.routed else "false").inc()
        self.decide_seconds.observe(seconds)
        if decision.matched_rules:
            rule_matches = self._rule_matches
            for rule in decision.matched_rules:
                rule_matches(rule).inc()
        for rule in decision.shadow.matched_rules:
            self._shadow_matches(rule).inc()
        for quota in exceeded:
            self._quota_exceeded(quota).inc()
        if not decision.allowed:  # a denied request goes nowhere and runs no checks
            return
        if decision.routed:
            models = self.models
            self._routes(models(requested_model), models(decision.model)).inc()
        for check in decision.checks:
            self._checks(check).inc()

    def report(self, report: UsageReport, outcome: str) -> None:
        self._reports(self.statuses(report.status)).inc()
        if outcome == "duplicate":
            return
        if report.total_tokens:
            self._usage_tokens(self.models(report.model)).inc(report.total_tokens)
        if report.cost_usd:
            self._usage_cost(self.models(report.model)).inc(report.cost_usd)

    def store_call(self, store: str, op: str, seconds: float, failed: bool) -> None:
        self._store_seconds(store, op).observe(seconds)
        if failed:
            self._store_errors(store, op).inc()

    def usage_backlog(self, events: int) -> None:
        self.usage_backlog_events.set(events)

    def usage_dropped(self, events: int) -> None:
        self.usage_dropped_events.inc(events)

    def spiking(self, kind: str, metric: str, count: int) -> None:
        """How many ``kind`` (users/groups) spike on ``metric`` now."""
        self.usage_spiking.labels(kind, metric).set(count)

    def metadata_ignored(self, keys: tuple[str, ...]) -> None:
        # keys come from the ruleset's schema ("user.tier"), so the label is bounded
        for key in keys:
            self._metadata_ignored(key).inc()

    def decided(self, request: DecideRequest, decision: Decision, context: EvalContext) -> None:
        pass  # counted in ``decision``; the decision log takes this hook

    def balance_level(self, balance: str, key: str, low: bool) -> None:
        # the label is a balance name from the rules: bounded
        with self._lock:
            keys = self._low.setdefault(balance, set())
            before = len(keys)
            if low:
                keys.add(key)
            else:
                keys.discard(key)
            if len(keys) != before or before == 0:
                self.balance_low.labels(balance).set(len(keys))

    def decision_log_line_dropped(self) -> None:
        self.decision_log_dropped.inc()

    def auth_failed(self, code: str) -> None:
        """A call refused for its credentials (``unauthenticated``, ``permission_denied``)."""
        self.auth_failures.labels(code).inc()

    # ---------------------------------------------------------------- ruleset

    def ruleset_loaded(self, ruleset: CompiledRuleset) -> None:
        """Point the info gauge at ``ruleset.version`` alone, count its rules, and give the
        models it names their own series."""
        self.models.know(named_models(ruleset))
        with self._lock:
            if self._shared is None:
                self.ruleset_info.clear()
            elif self._version is not None:
                # a worker's file keeps every series it wrote: 0 marks it out of force
                self.ruleset_info.labels(self._version).set(0)
            self.ruleset_info.labels(ruleset.version).set(1)
            self._version = ruleset.version
            self.ruleset_rules.set(len(ruleset.rules))

    def reload_result(self, ok: bool) -> None:
        self.ruleset_reloads.labels("success" if ok else "error").inc()

    def watch_stores(self, source: StoreSizes) -> None:
        """Export the stores' sizes and early evictions (read at each scrape, and by
        ``refresh_stores`` in each worker of ``serve --workers N``)."""
        self._stores = source
        self.refresh_stores()

    def refresh_stores(self) -> None:
        """Read the stores' sizes and evictions into their metrics now."""
        source = self._stores
        if source is None:
            return
        with self._lock:
            for kind, count in source.store_entries().items():
                self.store_entries.labels(kind).set(count)
            for kind, count in source.store_evictions().items():
                self.store_evictions.labels(kind).inc(count - self._evicted.get(kind, 0))
                self._evicted[kind] = count

    @property
    def shared(self) -> bool:
        """Whether this process is one of several workers summed at each scrape."""
        return self._shared is not None

    # ---------------------------------------------------------------- exposition

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format: this process's, or under
        ``serve --workers N`` every worker's, summed."""
        self.refresh_stores()
        source = self.registry
        if self._shared is not None:
            source = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(source, path=self._shared)
        shown = CollectorRegistry(auto_describe=False)
        shown.register(_InForce(source))
        return bytes(generate_latest(shown))
