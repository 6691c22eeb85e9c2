"""Values that cross the engine's boundary: validated requests in, decisions out.

Field names are the proto's so that the gRPC layer is a mechanical
translation. Every field is checked by ``policy.validate`` while a request is parsed, so
a request that parses is whole: nothing later can refuse it after something was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

from tollway.dsl.ast import Value
from tollway.dsl.compiled import RuleTrace

from .validate import (
    MAX_MODEL_BYTES,
    MAX_STATUS_BYTES,
    need_attributes,
    need_bool,
    need_id,
    need_known_fields,
    need_metadata,
    need_object,
    need_part,
    need_seconds,
    need_text,
    need_tokens,
    need_usd,
)

__all__ = [
    "EntityRef",
    "Estimate",
    "DecideRequest",
    "UsageReport",
    "QuotaStatus",
    "ShadowOutcome",
    "Decision",
    "ReportAck",
    "ReportOutcome",
    "REPORT_OUTCOMES",
    "Explanation",
    "LedgerLine",
    "BalanceView",
]

_ENTITY_FIELDS = frozenset({"id", "metadata"})
_ESTIMATE_FIELDS = frozenset({"input_tokens", "output_tokens", "cost_usd"})


@dataclass(frozen=True, slots=True)
class EntityRef:
    """A user or group named by a request; ``metadata`` is None when none was sent."""

    id: str
    metadata: dict[str, Value] | None = None

    @classmethod
    def parse(cls, data: Any, name: str) -> EntityRef | None:
        """None or absent -> no entity; a present entity needs a 1..256-byte id."""
        if data is None:
            return None
        if isinstance(data, str):  # shorthand: "user": "alice"
            data = {"id": data}
        data = need_object(data, name)
        need_known_fields(data, _ENTITY_FIELDS, name)
        return cls.of(data.get("id"), data.get("metadata"), name)

    @classmethod
    def of(cls, id: Any, metadata: Any, name: str) -> EntityRef:
        """The checks of ``parse`` on an entity whose fields a transport already read apart."""
        return cls(need_id(id, f"{name}.id"), need_metadata(metadata, f"{name}.metadata"))


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def parse(cls, data: Any) -> Estimate:
        if data is None:
            return cls()
        data = need_object(data, "estimate")
        need_known_fields(data, _ESTIMATE_FIELDS, "estimate")
        return cls(
            need_tokens(data.get("input_tokens"), "estimate.input_tokens"),
            need_tokens(data.get("output_tokens"), "estimate.output_tokens"),
            need_usd(data.get("cost_usd"), "estimate.cost_usd"),
        )


_DECIDE_FIELDS = frozenset(
    {"request_id", "user", "group", "model", "attributes", "estimate", "dry_run"}
)


@dataclass(frozen=True, slots=True)
class DecideRequest:
    """The input of ``decide`` and ``explain``; ``model`` is required (1..1024 bytes)."""

    request_id: str = ""
    user: EntityRef | None = None
    group: EntityRef | None = None
    model: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    estimate: Estimate = field(default_factory=Estimate)
    dry_run: bool = False

    @classmethod
    def parse(cls, data: Any) -> DecideRequest:
        """Validate a JSON-shaped request; raises ``ValueError`` naming the bad field."""
        if isinstance(data, DecideRequest):
            return data
        data = need_object(data, "request")
        need_known_fields(data, _DECIDE_FIELDS, "request")
        return cls(
            need_id(data.get("request_id"), "request_id", required=False),
            _entity(data.get("user"), "user"),
            _entity(data.get("group"), "group"),
            need_text(data.get("model"), "model", MAX_MODEL_BYTES, required=True),
            need_attributes(data.get("attributes"), "attributes"),
            _estimate(data.get("estimate")),
            need_bool(data.get("dry_run", False), "dry_run"),
        )


def _entity(value: Any, name: str) -> EntityRef | None:
    return value if isinstance(value, EntityRef) else EntityRef.parse(value, name)


def _estimate(value: Any) -> Estimate:
    return value if isinstance(value, Estimate) else Estimate.parse(value)


_REPORT_FIELDS = frozenset(
    {
        "request_id",
        "decision_id",
        "user",
        "group",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "duration_seconds",
        "status",
        "attributes",
        "cached_input_tokens",
    }
)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What a request really used, sent after the model answered."""

    request_id: str
    decision_id: str = ""
    user: EntityRef | None = None
    group: EntityRef | None = None
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    duration_seconds: float = 0.0
    status: str = "success"
    attributes: dict[str, str] = field(default_factory=dict)
    cached_input_tokens: int = 0  # the part of input_tokens served from a prompt cache

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def parse(cls, data: Any) -> UsageReport:
        """Validate a JSON-shaped report; ``request_id`` is required: it makes reports idempotent."""
        if isinstance(data, UsageReport):
            return data
        data = need_object(data, "report")
        need_known_fields(data, _REPORT_FIELDS, "report")
        input_tokens = need_tokens(data.get("input_tokens"), "input_tokens")
        return cls(
            request_id=need_id(data.get("request_id"), "request_id"),
            decision_id=need_id(data.get("decision_id"), "decision_id", required=False),
            user=EntityRef.parse(data.get("user"), "user"),
            group=EntityRef.parse(data.get("group"), "group"),
            model=need_text(data.get("model"), "model", MAX_MODEL_BYTES),
            input_tokens=input_tokens,
            output_tokens=need_tokens(data.get("output_tokens"), "output_tokens"),
            cost_usd=need_usd(data.get("cost_usd"), "cost_usd"),
            duration_seconds=need_seconds(data.get("duration_seconds"), "duration_seconds"),
            status=need_text(data.get("status") or "success", "status", MAX_STATUS_BYTES),
            attributes=need_attributes(data.get("attributes"), "attributes"),
            cached_input_tokens=need_part(
                data.get("cached_input_tokens"), "cached_input_tokens", input_tokens, "input_tokens"
            ),
        )


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """One quota counter as a decision saw it (the proto's ``QuotaStatus``).

    ``used`` includes this decision's amount when the decision consumed it, and is the
    usage before it otherwise (denied, dry run, explain); ``retry_after`` is in seconds
    and ``resets_at`` a unix timestamp (None when the store could not be read).
    """

    name: str
    metric: str
    scope: str
    key: str
    limit: float
    used: float
    remaining: float
    exceeded: bool
    retry_after: float = 0.0
    resets_at: float | None = None
    # "quota", or "balance": then ``used`` is what this decision reserved from it,
    # ``remaining`` what is left to spend, ``limit`` 0
    kind: str = "quota"


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """What the shadow rules would have done, had they been enforced."""

    matched_rules: tuple[str, ...] = ()
    denied: bool = False
    message: str = ""
    model: str = ""
    routed: bool = False
    checks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # the proto enum's name: one of ``tollway.dsl.ast.REASONS`` from the engine; a decision
    # decoded from the wire may also carry "REASON_UNSPECIFIED" (a server that set none)
    reason: str
    message: str = ""
    model: str = ""
    routed: bool = False
    checks: tuple[str, ...] = ()
    quotas: tuple[QuotaStatus, ...] = ()
    matched_rules: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    decision_id: str = ""
    ruleset_version: str = ""
    shadow: ShadowOutcome = field(default_factory=ShadowOutcome)
    # metadata keys the request sent but may not set (``admin`` in the schema): "user.tier"
    ignored_metadata: tuple[str, ...] = ()


# what a report did: replaced a reservation, added to the counters, or nothing (seen before)
ReportOutcome: TypeAlias = Literal["duplicate", "settled", "added"]
REPORT_OUTCOMES: tuple[ReportOutcome, ...] = get_args(ReportOutcome)


@dataclass(frozen=True, slots=True)
class ReportAck:
    """``outcome``: a ``ReportOutcome`` — "settled" (replaced a reservation), "added" or
    "duplicate" — from the engine; a client that could not reach the sidecar says
    "queued" or "dropped"."""

    request_id: str
    outcome: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    trace: tuple[RuleTrace, ...] = ()
    candidates: int = 0  # how many rules the index selected
    total_rules: int = 0


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One ledger entry of a balance as ``GetBalance`` shows it: ``amount`` in the
    balance's metric (USD for cost), positive for a top-up."""

    time: float
    kind: str
    amount: float
    reason: str = ""
    ref: str = ""

    @classmethod
    def of(cls, time: float, entry: Any, scale: int) -> LedgerLine:
        """From a ``usage.LedgerEntry`` whose amount is in balance units."""
        return cls(time, entry.kind, entry.amount / scale, entry.reason, entry.ref)


@dataclass(frozen=True, slots=True)
class BalanceView:
    """One balance of one user or group (the proto's ``BalanceStatus``)."""

    name: str
    metric: str
    key: str
    available: float
    reserved: float
    ledger: tuple[LedgerLine, ...] = ()
    low: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (``GET /v1/balances/…``): times as ISO 8601 UTC."""
        from .usage import format_time  # usage reads this module

        return {
            "name": self.name,
            "metric": self.metric,
            "available": self.available,
            "reserved": self.reserved,
            "low": self.low,
            "ledger": [
                {"time": format_time(x.time), "kind": x.kind, "amount": x.amount,
                 "reason": x.reason, "ref": x.ref}
                for x in self.ledger
            ],
        }
