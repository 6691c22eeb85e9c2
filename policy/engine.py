"""The engine: one object that decides, reports and explains (the in-process API).

Every transport (gRPC, HTTP, the CLI, an embedding gateway) calls the same methods, so
there is one behaviour. The engine holds one immutable ``CompiledRuleset`` reference;
``reload`` swaps it in one assignment, and every call works on the snapshot it took at
its start, so in-flight decisions finish on the rules they began with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollway import dsl
from tollway.dsl.ast import Balance, Quota, Value
from tollway.dsl.compiled import CompiledRule, CompiledRuleset, EvalContext
from tollway.dsl.spelling import did_you_mean

from .entities import EntityKind, EntityStore, EntityView, merge_metadata
from .evaluation import Verdict, combine, combine_shadow
from .ingest import Ingester
from .model import (
    BalanceView,
    DecideRequest,
    Decision,
    EntityRef,
    Explanation,
    LedgerLine,
    QuotaStatus,
    ReportAck,
    ShadowOutcome,
    UsageReport,
)
from .observer import NullObserver, Observer
from .pricing import token_cost
from .quotas import (
    Unresolved,
    balances_for,
    counters_for,
    metric_amounts,
    owner_key,
    reporter_key,
    subject_key,
)
from .stores import open_entity_store, open_store
from .stores.base import (
    BalanceSpec,
    BalanceState,
    BalancesUnloaded,
    CounterSpec,
    CounterState,
    CounterStore,
    ReportOutcome,
    StoreOptions,
    StoreRejected,
    StoreUnavailable,
)
from .usage import (
    LEDGER_KIND,
    LedgerEntry,
    Spike,
    UsageDetail,
    UsageEvent,
    UsageSeries,
    UsageUnavailable,
)
from .usage_db import DEFAULT_MAX_MODELS, DEFAULT_RETENTION_DAYS, UsageDatabase
from .usage_query import ActivityQuery, SeriesQuery, SpikeQuery, UsagePage, UsageQuery
from .validate import (
    MAX_REASON_BYTES,
    need_credit,
    need_groups,
    need_hits,
    need_id,
    need_kind,
    need_text,
)
from .windows import balance_scale, enforced_limit

__all__ = ["Engine"]

log = logging.getLogger("tollway.policy")

# What callers read when the store is down; the store's own words (host, port, driver)
# go to the log only.
STORE_UNREACHABLE = "counter store unreachable"
# how long a credit waits for its ledger entry to be written before it is answered
CREDIT_FLUSH = 10.0


@dataclass(frozen=True, slots=True)
class _Evaluated:
    """A request evaluated against one ruleset snapshot, before any counter is touched."""

    request: DecideRequest
    ruleset: CompiledRuleset
    ctx: EvalContext
    verdict: Verdict
    shadow: ShadowOutcome
    ignored: tuple[str, ...]  # admin-only metadata keys the request sent, left out


def _trusted(
    ref: EntityRef | None, admin: frozenset[str] | None, kind: str, ignored: list[str]
) -> EntityRef | None:
    """``ref`` without the metadata keys only admins may set; their names go to ``ignored``."""
    if ref is None or not admin or not ref.metadata or admin.isdisjoint(ref.metadata):
        return ref
    ignored.extend(sorted(f"{kind}.{k}" for k in ref.metadata if k in admin))
    return EntityRef(ref.id, {k: v for k, v in ref.metadata.items() if k not in admin})


def _fmt_number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


class Engine:
    """Decides requests against a compiled ruleset with quotas on a counter store."""

    def __init__(
        self,
        ruleset: CompiledRuleset,
        *,
        store: CounterStore | str = "memory",
        entities: EntityStore | None = None,
        key_prefix: str = "tollway:",
        clock: Callable[[], float] | None = None,
        observer: Observer | None = None,
        rules_path: str | Path | None = None,
        store_options: StoreOptions | None = None,
        usage_db: UsageDatabase | str | None = "memory",
        usage_retention_days: float = DEFAULT_RETENTION_DAYS,
        usage_max_models: int = DEFAULT_MAX_MODELS,
        ingest: bool = True,
    ) -> None:
        """``usage_db``: where usage is kept (a URL: ``sqlite:///PATH``, ``postgresql://…``,
        ``memory``; a ``UsageDatabase``; or None for no usage at all). Its schema is
        migrated here; a database migrated by a newer tollway raises ``SchemaTooNew``, one
        that cannot be reached is only logged (usage waits for it). ``ingest`` runs the
        thread that moves events from the counter store into the database (every process
        should, so that a replica's events never wait for another)."""
        self._ruleset = ruleset
        url = store if isinstance(store, str) else None
        self._store: CounterStore = (
            open_store(store, key_prefix=key_prefix, clock=clock, options=store_options)
            if isinstance(store, str)
            else store
        )
        if entities is None:
            entities = open_entity_store(
                url or "memory", key_prefix=key_prefix, clock=clock, options=store_options
            )
        self._entities = entities
        self._observer: Observer = observer or NullObserver()
        self._rules_path = Path(rules_path) if rules_path is not None else None
        self._perf = time.perf_counter
        self._clock = clock or time.time
        self._usage: UsageDatabase | None = (
            UsageDatabase(
                usage_db, max_models=usage_max_models, retention_days=usage_retention_days,
                clock=self._clock,
            )
            if isinstance(usage_db, str)
            else usage_db
        )
        self._ingester: Ingester | None = None
        if self._usage is not None:
            try:
                self._usage.prepare()
            except UsageUnavailable as exc:
                log.warning("%s; usage waits until it answers", exc)
            if ingest:
                self._ingester = Ingester(self._store.events, self._usage, observer=self._observer)
                self._ingester.start()
        self._store_logged = -float("inf")  # when a store failure was last logged

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        store: CounterStore | str = "memory",
        **options: Any,
    ) -> Engine:
        """Compile the rules at ``path`` (file or directory); raises ``RulesError``."""
        return cls(dsl.load(path), store=store, rules_path=path, **options)

    @classmethod
    def from_text(cls, text: str, store: CounterStore | str = "memory", **options: Any) -> Engine:
        """An engine over rules held in a string (tests, embedding)."""
        return cls(dsl.load_text(text), store=store, **options)

    # ------------------------------------------------------------------ state

    @property
    def ruleset(self) -> CompiledRuleset:
        return self._ruleset

    @property
    def store(self) -> CounterStore:
        return self._store

    @property
    def blocking(self) -> bool:
        """True when decisions may wait on the network (the server then keeps them off its loop)."""
        return bool(self._store.blocking or self._entities.blocking)

    def store_entries(self) -> dict[str, int]:
        """What the stores keep in this process, by kind: counters, reservations, report
        ids, entities, memberships (memory), or the read caches (Redis)."""
        return {**self._store.entries(), **self._entities.entries()}

    def store_evictions(self) -> dict[str, int]:
        """Entries the stores dropped early to respect a cap, by kind."""
        return dict(self._store.evictions())

    def swap(self, ruleset: CompiledRuleset) -> None:
        """Replace the ruleset atomically; calls already running keep their snapshot."""
        self._ruleset = ruleset

    def reload(self) -> CompiledRuleset:
        """Recompile from the rules path; on ``RulesError`` the current rules stay in force."""
        if self._rules_path is None:
            raise RuntimeError("this engine was not loaded from a path; use swap()")
        ruleset = dsl.load(self._rules_path)
        self.swap(ruleset)
        return ruleset

    @property
    def usage_db(self) -> UsageDatabase | None:
        return self._usage

    def flush_usage(self, timeout: float = 10.0) -> bool:
        """Wait until the usage events accepted so far are in the usage database (or
        ``timeout`` seconds); True when nothing is left waiting."""
        if self._ingester is None:
            return self._usage is None
        return self._ingester.flush(timeout)

    def close(self, *, drain: float = 5.0) -> None:
        """Write the waiting usage events (up to ``drain`` seconds), then close."""
        if self._ingester is not None:
            self._ingester.stop(drain)
        self._store.close()
        self._entities.close()
        if self._usage is not None:
            self._usage.close()

    def _deadline(self, received_at: float | None) -> float | None:
        """When a call's store work must end: ``received_at`` plus the store's timeout
        (None for a store that never waits)."""
        timeout = self._store.timeout
        if not timeout:
            return None
        return (time.monotonic() if received_at is None else received_at) + timeout

    # --------------------------------------------------------------- entities

    def _metadata(
        self, kind: EntityKind, ref: EntityRef, persist: bool, deadline: float | None
    ) -> Mapping[str, Value]:
        try:
            if persist:
                return self._entities.observe(kind, ref.id, ref.metadata, deadline=deadline)
            # explain and dry runs write nothing: merge into a copy
            stored = self._entities.get(kind, ref.id, deadline=deadline)
        except StoreRejected:
            raise  # wrong credentials: never decide on what the request alone says
        except StoreUnavailable:
            # degrade to what the request itself says; the counter store, unreachable
            # too, then decides by each quota's on_store_error
            self._observer.store_call(self._store.name, "entity", 0.0, True)
            return {k: v for k, v in (ref.metadata or {}).items() if v is not None}
        base = stored.metadata if stored is not None else {}
        merged = merge_metadata(base, ref.metadata)
        return base if merged is None else merged

    def _link(self, user_id: str, group_id: str, deadline: float | None) -> None:
        try:
            self._entities.link(user_id, group_id, deadline=deadline)
        except StoreUnavailable:
            # a lost link only affects what GetEntity shows; the decision needs none
            self._observer.store_call(self._store.name, "entity", 0.0, True)

    def _context(
        self,
        user: EntityRef | None,
        group: EntityRef | None,
        model: str,
        attributes: Mapping[str, str],
        persist: bool,
        deadline: float | None,
    ) -> EvalContext:
        metadata = self._metadata
        user_meta = metadata("user", user, persist, deadline) if user is not None else {}
        group_meta = metadata("group", group, persist, deadline) if group is not None else {}
        if persist and user is not None and group is not None:
            self._link(user.id, group.id, deadline)
        request: dict[str, Value] = dict(attributes)
        request["model"] = model
        return EvalContext(
            user_id=user.id if user is not None else None,
            user=user_meta,
            group_id=group.id if group is not None else None,
            group=group_meta,
            request=request,
        )

    def upsert_entity(
        self,
        kind: str,
        id: str,
        metadata: Mapping[str, Value] | None = None,
        *,
        groups: Sequence[str] = (),
        replace: bool = False,
    ) -> EntityView:
        """Set an entity's metadata ahead of time (admin); ``groups`` links a user to groups.

        ``kind`` is ``user`` or ``group`` (``users``/``groups`` too). Everything is checked
        before anything is written.
        """
        entity_kind = need_kind(kind)
        ref = EntityRef.of(id, metadata, entity_kind)
        group_ids = need_groups(groups, entity_kind)
        view = self._entities.put(entity_kind, ref.id, ref.metadata, replace=replace)
        for group_id in group_ids:
            self._entities.link(ref.id, group_id)
        if group_ids:
            return self._entities.get(entity_kind, ref.id) or view
        return view

    def get_entity(self, kind: str, id: str) -> EntityView | None:
        """A stored user or group (``kind``: ``user``/``users``/``group``/``groups``)."""
        return self._entities.get(need_kind(kind), need_id(id, "id"))

    # -------------------------------------------------------------- decisions

    def _trust(
        self, ruleset: CompiledRuleset, user: EntityRef | None, group: EntityRef | None
    ) -> tuple[EntityRef | None, EntityRef | None, tuple[str, ...]]:
        """The request's entities without admin-only keys (docs/security.md), and those keys."""
        admin = ruleset.admin_keys
        if not admin:
            return user, group, ()
        ignored: list[str] = []
        user = _trusted(user, admin.get("user"), "user", ignored)
        group = _trusted(group, admin.get("group"), "group", ignored)
        if ignored:
            self._observer.metadata_ignored(tuple(ignored))
        return user, group, tuple(ignored)

    def _evaluate(
        self, request: DecideRequest, persist: bool, deadline: float | None
    ) -> _Evaluated:
        ruleset = self._ruleset  # one snapshot for the whole call
        user, group, ignored = self._trust(ruleset, request.user, request.group)
        ctx = self._context(user, group, request.model, request.attributes, persist, deadline)
        matched = ruleset.match(ctx)
        enforced = [r for r in matched if not r.shadow]
        shadows = [r for r in matched if r.shadow]
        return _Evaluated(
            request=request,
            ruleset=ruleset,
            ctx=ctx,
            verdict=combine(enforced, ruleset.default, ctx, request.model),
            shadow=combine_shadow(shadows, ctx, request.model),
            ignored=ignored,
        )

    def _store_call(self, op: str, call: Callable[[], Any]) -> Any:
        start = self._perf()
        try:
            result = call()
        except StoreUnavailable:
            self._observer.store_call(self._store.name, op, self._perf() - start, True)
            raise
        self._observer.store_call(self._store.name, op, self._perf() - start, False)
        return result

    def _decide(
        self, ev: _Evaluated, consume: bool, deadline: float | None, hits: int = 1
    ) -> tuple[Decision, tuple[str, ...]]:
        """Apply the combining algorithm's quota step; returns the decision and exceeded names.

        ``hits`` is how many requests the decision counts against ``requests`` quotas.
        """
        verdict, request, ruleset = ev.verdict, ev.request, ev.ruleset
        base: dict[str, Any] = {
            "model": verdict.model,
            "routed": verdict.routed,
            "checks": verdict.checks,
            "matched_rules": verdict.matched,
            "annotations": verdict.annotations,
            "ruleset_version": ruleset.version,
            "shadow": ev.shadow,
            "ignored_metadata": ev.ignored,
        }
        decision_id = _new_decision_id()
        if verdict.reason:
            return Decision(
                allowed=False,
                reason=verdict.reason,
                message=verdict.message,
                decision_id=decision_id,
                **base,
            ), ()
        estimate = request.estimate
        cost = estimate.cost_usd
        if not cost and (estimate.input_tokens or estimate.output_tokens):
            # tokens but no cost: priced for the model that will serve, when a price covers it
            priced = token_cost(
                ruleset.prices, verdict.model, estimate.input_tokens, estimate.output_tokens
            )
            cost = priced or 0.0
        amounts = metric_amounts(
            estimate.input_tokens, estimate.output_tokens, cost, float(hits)
        )
        specs, unresolved = counters_for(
            verdict.quotas, ruleset.quotas, ev.ctx, verdict.model, amounts
        )
        spends = (
            balances_for(verdict.balances, ruleset.balances, specs, ev.ctx, verdict.model, amounts)
            if verdict.balances else []
        )
        if unresolved:
            return Decision(
                allowed=False,
                reason="QUOTA_UNRESOLVED",
                message=_unresolved_message(unresolved),
                quotas=tuple(_unresolved_status(u) for u in unresolved),
                decision_id=decision_id,
                **base,
            ), ()
        consume = consume and not request.dry_run
        # usage counts the request where it is admitted (a report with this decision_id
        # then adds only amounts); explain and dry runs count nothing
        event = self._decision_event(request, verdict.model, decision_id) if consume else None
        if not specs and not spends:
            if event is not None:
                self._record_event(event, deadline)
            return Decision(allowed=True, reason="ALLOWED", decision_id=decision_id, **base), ()
        owner = owner_key(ev.ctx.user_id, ev.ctx.group_id)
        if spends:
            return self._spend(
                ev, specs, spends, base, decision_id, consume, event, owner, deadline
            )
        try:
            states: list[CounterState] = self._store_call(
                "consume" if consume else "peek",
                lambda: self._store.check_and_consume(
                    specs,
                    consume=consume,
                    hold_id=decision_id if consume else None,
                    event=event,
                    hold_owner=owner,
                    deadline=deadline,
                ),
            )
        except StoreRejected:
            raise  # wrong credentials never heal by themselves: refuse, never fail open
        except StoreUnavailable as exc:
            self._log_store_error(exc)
            return _store_down(specs, ruleset.quotas, base, decision_id), ()
        pairs = list(zip(specs, states, strict=True))
        exceeded = tuple([s.quota for s, st in pairs if st.exceeded])
        taken = consume and not exceeded
        quotas = ruleset.quotas
        statuses = tuple([_status(s, st, taken, quotas[s.quota].scope.name) for s, st in pairs])
        if exceeded:
            return Decision(
                allowed=False,
                reason="QUOTA_EXCEEDED",
                quotas=statuses,
                message=_exceeded_message(statuses),
                decision_id=decision_id,
                **base,
            ), exceeded
        return Decision(
            allowed=True, reason="ALLOWED", quotas=statuses, decision_id=decision_id, **base
        ), ()

    def _spend(
        self,
        ev: _Evaluated,
        specs: list[CounterSpec],
        spends: list[BalanceSpec],
        base: dict[str, Any],
        decision_id: str,
        consume: bool,
        event: UsageEvent | None,
        owner: str,
        deadline: float | None,
    ) -> tuple[Decision, tuple[str, ...]]:
        """The quota step of a decision that spends from balances: counters and balances
        in one store call. A balance never fails open: when the store cannot answer, the
        decision is refused (STORE_UNAVAILABLE)."""
        ruleset = ev.ruleset

        def call() -> tuple[list[CounterState], list[BalanceState]]:
            return self._store.check_and_spend(
                specs,
                spends,
                consume=consume,
                hold_id=decision_id if consume else None,
                event=event,
                hold_owner=owner,
                deadline=deadline,
            )

        try:
            try:
                states, balance_states = self._store_call(
                    "consume" if consume else "peek", call
                )
            except BalancesUnloaded:
                self.load_balances()
                states, balance_states = self._store_call(
                    "consume" if consume else "peek", call
                )
        except StoreRejected:
            raise
        except (StoreUnavailable, UsageUnavailable, BalancesUnloaded) as exc:
            self._log_store_error(exc)
            down = _store_down(specs, ruleset.quotas, base, decision_id)
            return dataclasses.replace(
                down,
                allowed=False,
                reason="STORE_UNAVAILABLE",
                message=f"{STORE_UNREACHABLE}; balances are not spent blindly",
            ), ()
        pairs = list(zip(specs, states, strict=True))
        balance_pairs = list(zip(spends, balance_states, strict=True))
        exceeded = tuple(
            [s.quota for s, st in pairs if st.exceeded]
            + [b.balance for b, st in balance_pairs if st.exceeded]
        )
        taken = consume and not exceeded
        quotas = ruleset.quotas
        # a chained quota took the amount less what its balance took
        spilled = {b.after: st.taken for b, st in balance_pairs if b.after}
        statuses = tuple(
            [
                _status(
                    dataclasses.replace(s, amount=s.amount - spilled[s.quota])
                    if s.quota in spilled else s,
                    st, taken, quotas[s.quota].scope.name,
                )
                for s, st in pairs
            ]
            + [
                _balance_status(b, st, ruleset.balances[b.balance].scope.name)
                for b, st in balance_pairs
            ]
        )
        if exceeded:
            return Decision(
                allowed=False,
                reason="QUOTA_EXCEEDED",
                quotas=statuses,
                message=_exceeded_message(statuses),
                decision_id=decision_id,
                **base,
            ), exceeded
        levels = _low_balances(balance_pairs, ruleset)
        for name, key, low in levels:
            if taken:
                self._observer.balance_level(name, key, low)
        low_names = [name for name, _, low in levels if low]
        if low_names:
            notes = dict(base["annotations"])
            notes.setdefault("balance_low", low_names[0])
            base = {**base, "annotations": notes}
        return Decision(
            allowed=True, reason="ALLOWED", quotas=statuses, decision_id=decision_id, **base
        ), ()

    def _decision_event(
        self, request: DecideRequest, model: str, decision_id: str
    ) -> UsageEvent | None:
        """The usage event of a consumed decision, if usage is kept and it names anyone."""
        if self._usage is None:
            return None
        user = request.user.id if request.user is not None else ""
        group = request.group.id if request.group is not None else ""
        if not user and not group:
            return None
        return UsageEvent.decision(
            self._clock(), decision_id, user, group, model, request.request_id
        )

    def _record_event(self, event: UsageEvent, deadline: float | None) -> None:
        """Record an allowed decision that has no counters (one store call).

        Usage is an account, not a limit: if the store is down the decision stands and
        only the failed call is observed.
        """
        with contextlib.suppress(StoreUnavailable):
            self._store_call(
                "consume", lambda: self._store.record_event(event, deadline=deadline)
            )

    def _log_store_error(self, exc: Exception, every: float = 10.0) -> None:
        """The store's own words, for operators: at most once per ``every`` seconds."""
        now = time.monotonic()
        if now - self._store_logged >= every:
            self._store_logged = now
            log.warning("%s: %s", STORE_UNREACHABLE, exc)

    def decide(
        self,
        request: Mapping[str, Any] | DecideRequest,
        *,
        hits: int = 1,
        received_at: float | None = None,
    ) -> Decision:
        """Decide one request: rules, then quotas checked and consumed all-or-nothing.

        ``hits`` (at least 1) is how many requests this decision counts against
        ``requests`` quotas: a transport that batches calls (Envoy's rate-limit
        ``hits_addend``) asks for them in one decision. An estimate with tokens but no
        cost is priced from the ruleset's ``price`` table for the routed model.
        ``received_at`` (``time.monotonic()``) is when a transport received the call: the
        store work of the decision ends by then plus the store's timeout, time spent
        waiting for a thread included (``on_store_error`` decides past it).
        Raises ``ValueError`` naming the field for a malformed request (nothing is
        consumed or stored then).
        """
        start = self._perf()
        deadline = self._deadline(received_at)
        hits = need_hits(hits)
        req = DecideRequest.parse(request)
        ev = self._evaluate(req, not req.dry_run, deadline)
        decision, exceeded = self._decide(ev, True, deadline, hits=hits)
        observer = self._observer
        observer.decision(decision, req.model, exceeded, self._perf() - start)
        observer.decided(req, decision, ev.ctx)
        return decision

    def explain(
        self, request: Mapping[str, Any] | DecideRequest, *, received_at: float | None = None
    ) -> Explanation:
        """The decision ``decide`` would give, with the rule trace; nothing consumed or stored."""
        deadline = self._deadline(received_at)
        req = DecideRequest.parse(request)
        ev = self._evaluate(req, False, deadline)
        decision, _ = self._decide(ev, False, deadline)
        candidates = len(ev.ruleset.index.candidates(ev.ctx))
        return Explanation(
            decision=decision,
            trace=tuple(ev.ruleset.trace(ev.ctx)),
            candidates=candidates,
            total_rules=len(ev.ruleset.rules),
        )

    # ---------------------------------------------------------------- reports

    def report(
        self, report: Mapping[str, Any] | UsageReport, *, received_at: float | None = None
    ) -> ReportAck:
        """Record what a request really used; idempotent per ``request_id`` of each user.

        A report with tokens and no ``cost_usd`` is priced from the ruleset's ``price``
        table for the reported model (none covers it: the cost stays 0).

        With a live ``decision_id`` the reservation made by ``decide`` is replaced by
        the actuals; the report must then name the user and group the decision was for,
        else ``ValueError`` (``ForeignDecision``) and nothing changes. Without one (or once it expired), the actual tokens and cost are
        added to the quotas that apply to the reported user, group and model; requests
        are not counted again, since ``decide`` counted them. Usage likewise: a report
        with a ``decision_id`` adds amounts only (``decide`` counted the request); one
        without counts its request too (a gateway that only reports).

        ``received_at`` as for ``decide``. Raises ``StoreUnavailable`` when the store did
        not answer in time: its ``outcome`` says whether the report may have been applied
        ("unknown": retry with the same request_id, it counts once) or not
        ("not_applied").
        """
        deadline = self._deadline(received_at)
        rep = UsageReport.parse(report)
        ruleset = self._ruleset
        if not rep.cost_usd and rep.total_tokens:
            priced = token_cost(
                ruleset.prices,
                rep.model,
                rep.input_tokens,
                rep.output_tokens,
                rep.cached_input_tokens,
            )
            if priced:
                rep = dataclasses.replace(rep, cost_usd=priced)
        user, group, _ = self._trust(ruleset, rep.user, rep.group)
        ctx = self._context(user, group, rep.model, rep.attributes, True, deadline)
        actual = metric_amounts(rep.input_tokens, rep.output_tokens, rep.cost_usd, 1.0)
        event = UsageEvent.from_report(rep, self._clock()) if self._usage is not None else None
        # used only when no live reservation matches (no decision_id, or it expired)
        fallback, spends = self._report_counters(ruleset, ctx, rep)
        user_id = rep.user.id if rep.user is not None else None
        group_id = rep.group.id if rep.group is not None else None

        def call() -> ReportOutcome:
            return self._store.record_report(
                rep.request_id,
                rep.decision_id or None,
                actual,
                fallback,
                event=event,
                owner=owner_key(user_id, group_id),
                reporter=reporter_key(user_id, group_id),
                deadline=deadline,
                balances=spends,
            )

        try:
            outcome: ReportOutcome = self._store_call("report", call)
        except BalancesUnloaded:
            self.load_balances()
            outcome = self._store_call("report", call)
        self._observer.report(rep, outcome)
        return ReportAck(
            request_id=rep.request_id, outcome=outcome, duplicate=outcome == "duplicate"
        )

    # ------------------------------------------------------------------ usage

    def _usage_db(self) -> UsageDatabase:
        if self._usage is None:
            raise NotImplementedError("usage is not kept by this engine (usage_db=None)")
        return self._usage

    def get_usage(self, kind: str, id: str) -> UsageDetail | None:
        """One user's or group's lifetime usage: aggregates, cost by model, recent reports.

        ``kind`` is ``user``/``users``/``group``/``groups``; a bad ``id`` is refused as
        ``user_id``/``group_id`` (the proto's names). Raises ``UsageUnavailable`` when the
        usage database cannot answer, ``NotImplementedError`` without a usage database.
        """
        return self._usage_db().detail(kind, id)

    def list_usage(
        self, query: Mapping[str, Any] | UsageQuery | None = None, **params: Any
    ) -> UsagePage:
        """A page of users or groups (``kind``): lifetime totals, or the amounts within
        ``start``/``end``; sorted, searched, paged by offset or cursor."""
        return self._usage_db().page(UsageQuery.parse(query, **params))

    def usage_series(
        self, kind: str, id: str, query: Mapping[str, Any] | SeriesQuery | None = None,
        **params: Any,
    ) -> UsageSeries | None:
        """One entity's ``metric`` per ``step`` (``1h``/``1d``); None when it has no usage."""
        parsed = query if isinstance(query, SeriesQuery) else SeriesQuery.parse(query, **params)
        return self._usage_db().series(kind, id, parsed)

    def list_spikes(
        self, query: Mapping[str, Any] | SpikeQuery | None = None, **params: Any
    ) -> list[Spike]:
        """Users or groups whose usage in the last window is over ``factor`` times their
        baseline average (see ``SpikeQuery``), highest ratio first."""
        parsed = query if isinstance(query, SpikeQuery) else SpikeQuery.parse(query, **params)
        return self._usage_db().spikes(parsed)

    def activity(
        self, query: Mapping[str, Any] | ActivityQuery | None = None, **params: Any
    ) -> Iterator[UsageEvent]:
        """The reports, newest first, for billing export; raises ValueError."""
        return self._usage_db().activity(ActivityQuery.parse(query, **params))

    def _report_counters(
        self, ruleset: CompiledRuleset, ctx: EvalContext, rep: UsageReport
    ) -> tuple[list[CounterSpec], list[BalanceSpec]]:
        enforced: list[CompiledRule] = [r for r in ruleset.match(ctx) if not r.shadow]
        verdict = combine(enforced, ruleset.default, ctx, rep.model)
        amounts = metric_amounts(rep.input_tokens, rep.output_tokens, rep.cost_usd, 0.0)
        # the report names the model that served, which is what per-model counters track
        specs, _ = counters_for(verdict.quotas, ruleset.quotas, ctx, rep.model, amounts)
        spends = (
            balances_for(verdict.balances, ruleset.balances, specs, ctx, rep.model, amounts)
            if verdict.balances else []
        )
        # every counter, those without an amount too: a report settling a reservation
        # declares the counters it touches (their keys are the decision's)
        return specs, spends

    # --------------------------------------------------------------- balances

    def load_balances(self) -> bool:
        """Load every balance into the counter store from the ledger, unless the store
        holds them already; True when this call loaded them. The events already
        accepted are written to the ledger first, so that none is left out. Raises
        ``UsageUnavailable`` when the ledger cannot be read (nothing spends meanwhile)."""
        totals: dict[tuple[str, str], int] = {}
        if self._usage is not None:
            self.flush_usage(self._store.timeout * 10 or 1.0)
            totals = self._usage.balance_totals()
        loaded: bool = self._store_call("balances", lambda: self._store.load_balances(totals))
        if loaded:
            log.info("balances loaded from the ledger: %d", len(totals))
        return loaded

    def _balance_of(self, kind: str, id: str, name: str) -> tuple[Balance, str]:
        """A balance counted for each ``kind`` and the scope key of ``id`` in it."""
        entity = need_kind(kind)
        ident = need_id(id, "id")
        balance = self._ruleset.balances.get(name)
        if balance is None:
            raise ValueError(
                f"balance: no balance named {name!r} in the rules"
                + did_you_mean(name, list(self._ruleset.balances))
            )
        if balance.scope.subject != entity or balance.scope.per_model:
            raise ValueError(
                f"balance: {name!r} is counted {_scope_words(balance)}, not for each {entity}"
            )
        key = subject_key(entity, ident if entity == "user" else None,
                          ident if entity == "group" else None)
        assert key is not None
        return balance, key

    def _with_balances(self, call: Callable[[], Any]) -> Any:
        try:
            return self._store_call("balances", call)
        except BalancesUnloaded:
            self.load_balances()
            return self._store_call("balances", call)

    def credit(
        self, kind: str, id: str, balance: str, amount: float, *, reason: str = "",
        idempotency_key: str,
    ) -> tuple[bool, BalanceView]:
        """Top up (``amount`` > 0) or correct (< 0) one user's or group's balance, once
        per ``idempotency_key``; returns whether it applied, and the balance after it.
        The credit is a ledger entry written through the usage events."""
        decl, key = self._balance_of(kind, id, balance)
        ref = need_id(idempotency_key, "idempotency_key")
        reason = need_text(reason, "reason", MAX_REASON_BYTES)
        units = need_credit(amount, decl.metric)
        entry = LedgerEntry(decl.name, key, units, "credit", reason, ref)
        applied = False
        if self._usage is None or not self._usage.has_credit(decl.name, key, ref):
            event = (
                UsageEvent(time=self._clock(), kind=LEDGER_KIND, status="", ledger=(entry,))
                if self._usage is not None else None
            )
            applied = bool(self._with_balances(
                lambda: self._store.credit(entry, decl.metric, event=event)
            ))
            if applied and event is not None:
                # answered once in the ledger: a store that loses it then rebuilds it
                self.flush_usage(CREDIT_FLUSH)
        view = self._balance_view(decl, key, ledger=False)
        if decl.warn_below is not None:
            self._observer.balance_level(decl.name, key, view.available < decl.warn_below)
        return applied, view

    def get_balance(self, kind: str, id: str) -> list[BalanceView]:
        """Every balance of the rules counted for each ``kind`` (user or group), for
        ``id``: available, reserved and the latest ledger entries."""
        entity = need_kind(kind)
        ident = need_id(id, "id")
        out = []
        for name in sorted(self._ruleset.balances):
            decl = self._ruleset.balances[name]
            if decl.scope.subject == entity and not decl.scope.per_model:
                _, key = self._balance_of(entity, ident, name)
                out.append(self._balance_view(decl, key, ledger=True))
        return out

    def _balance_view(self, decl: Balance, key: str, *, ledger: bool) -> BalanceView:
        units, reserved = self._with_balances(lambda: self._store.balance(decl.name, key))
        scale = balance_scale(decl.metric)
        entries: list[tuple[float, LedgerEntry]] = []
        if ledger and self._usage is not None:
            entries = self._usage.ledger_entries(decl.name, key)
        available = (units - reserved) / scale
        return BalanceView(
            name=decl.name,
            metric=decl.metric,
            key=key,
            available=available,
            reserved=reserved / scale,
            ledger=tuple(LedgerLine.of(t, e, scale) for t, e in entries),
            low=decl.warn_below is not None and available < decl.warn_below,
        )


# The version and variant bits of a random (version 4) UUID, as ``uuid.uuid4`` sets them.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def _new_decision_id() -> str:
    """``uuid.uuid4().hex``, the same 32 hex digits, without building a ``UUID`` object."""
    n = int.from_bytes(os.urandom(16), "big")
    return f"{(n & _UUID4_CLEAR) | _UUID4_SET:032x}"


def _store_down(
    specs: list[CounterSpec], quotas: Mapping[str, Quota], base: dict[str, Any], decision_id: str
) -> Decision:
    """The store is unreachable: quotas marked ``on_store_error deny`` fail closed. The
    message says so without the store's words (host, port, driver: logged instead)."""
    strict = [s.quota for s in specs if s.on_store_error == "deny"]
    statuses = tuple(
        QuotaStatus(
            name=s.quota,
            metric=s.metric,
            scope=quotas[s.quota].scope.name,
            key=s.key,
            limit=enforced_limit(s.limit, s.metric),
            used=0.0,
            remaining=0.0,
            exceeded=False,
        )
        for s in specs
    )
    outcome = f"quota {strict[0]} fails closed" if strict else "quotas not enforced"
    return Decision(
        allowed=not strict,
        reason="STORE_UNAVAILABLE" if strict else "ALLOWED",
        quotas=statuses,
        message=f"{STORE_UNREACHABLE}; {outcome}",
        decision_id=decision_id,
        **base,
    )


def _status(spec: CounterSpec, state: CounterState, taken: bool, scope: str) -> QuotaStatus:
    """``scope`` is the quota's ``Scope.name``."""
    used = state.used + spec.amount if taken else state.used
    limit = state.limit  # as enforced: rounded down to whole units
    remaining = limit - used
    exceeded = state.exceeded
    return QuotaStatus(
        spec.quota,
        spec.metric,
        scope,
        spec.key,
        limit,
        used,
        0.0 if remaining < 0.0 else remaining,
        exceeded,
        state.retry_after if exceeded else 0.0,
        state.resets_at,
    )


def _scope_words(balance: Balance) -> str:
    scope = balance.scope
    words = "for everyone" if scope.subject == "everyone" else (
        "for each " + scope.subject.replace("_", " ")
    )
    return words + (" and model" if scope.per_model else "")


def _balance_status(spec: BalanceSpec, state: BalanceState, scope: str) -> QuotaStatus:
    """A balance as a decision saw it: ``used`` what it reserved, ``remaining`` what is
    left to spend after it."""
    left = state.available - state.taken
    return QuotaStatus(
        spec.balance,
        spec.metric,
        scope,
        spec.key,
        0.0,
        state.taken,
        left if left > 0.0 else 0.0,
        state.exceeded,
        kind="balance",
    )


def _low_balances(
    pairs: list[tuple[BalanceSpec, BalanceState]], ruleset: CompiledRuleset
) -> list[tuple[str, str, bool]]:
    """(balance, key, low) of each balance with a ``warn below`` amount."""
    out = []
    for spec, state in pairs:
        threshold = ruleset.balances[spec.balance].warn_below
        if threshold is not None:
            out.append((spec.balance, spec.key, state.available - state.taken < threshold))
    return out


def _unresolved_status(u: Unresolved) -> QuotaStatus:
    return QuotaStatus(
        name=u.quota.name,
        metric=u.quota.metric,
        scope=u.quota.scope.name,
        key=u.key,
        limit=0.0,
        used=0.0,
        remaining=0.0,
        exceeded=False,
    )


def _unresolved_message(unresolved: list[Unresolved]) -> str:
    u = unresolved[0]
    return f"quota {u.quota.name}: limit {u.quota.limit.path} is not set for {u.key}"


def _exceeded_message(statuses: tuple[QuotaStatus, ...]) -> str:
    parts = [
        f"balance {s.name} ({_fmt_number(s.remaining)} {s.metric} left)"
        if s.kind == "balance"
        else f"{s.name} ({_fmt_number(s.used)}/{_fmt_number(s.limit)} {s.metric}, "
        f"retry in {s.retry_after:.0f}s)"
        for s in statuses
        if s.exceeded
    ]
    return "quota exceeded: " + ", ".join(parts)
