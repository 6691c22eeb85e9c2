"""Values that cross the engine's boundary: validated requests in, decisions out.

Field names are the proto's so that the gRPC layer is a mechanical
translation. Validation lives here, once, so that the Python API and every transport
reject the same inputs with the same messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tollway.dsl.ast import Value
from tollway.dsl.compiled import RuleTrace

__all__ = [
    "MAX_ID_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "EntityRef",
    "Estimate",
    "DecideRequest",
    "UsageReport",
    "QuotaStatus",
    "ShadowOutcome",
    "Decision",
    "ReportAck",
    "Explanation",
]

MAX_ID_BYTES = 256
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 8
MAX_MODEL_BYTES = 1024
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_BYTES = 4096
MAX_STATUS_BYTES = 64


def _need_str(value: Any, name: str, *, max_bytes: int, allow_empty: bool = True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if not allow_empty and size == 0:
        raise ValueError(f"{name}: must not be empty")
    if size > max_bytes:
        raise ValueError(f"{name}: {size} bytes is over the limit of {max_bytes}")
    return value


def _need_count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a whole number, got {type(value).__name__}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ValueError(f"{name}: must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {value}")
    return int(value)


def _need_amount(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {value}")
    return value


def _check_json(value: Any, name: str, depth: int) -> None:
    """Reject what JSON cannot carry and nesting deeper than ``MAX_METADATA_DEPTH``."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"{name}: nested deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name}: {value!r} is not a JSON number")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{name}: keys must be strings, got {type(k).__name__}")
            _check_json(v, f"{name}.{k}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{name}[{i}]", depth + 1)
        return
    raise ValueError(f"{name}: {type(value).__name__} is not a JSON value")


# Bytes a JSON encoding can take per ASCII character (``\u001f``), and at most for a
# number the fast path below accepts (``-1.2345678901234567e-308``; ints under 2**63).
_JSON_CHAR_BYTES = 6
_JSON_NUMBER_BYTES = 24
_INT_BOUND = 2**63


def _surely_small(value: dict[Any, Any]) -> bool:
    """True when ``value`` is certainly valid metadata within the size limit.

    Decided without encoding, for the usual shape: string keys, and values that are
    ASCII strings, plain numbers, booleans, nulls or lists of ASCII strings, bounded
    from above. False means only "not sure": the full checks then run.
    """
    size = 2
    for k, v in value.items():
        if type(k) is not str or not k.isascii():
            return False
        size += _JSON_CHAR_BYTES * len(k) + 4
        tv = type(v)
        if tv is str:
            if not v.isascii():
                return False
            size += _JSON_CHAR_BYTES * len(v) + 2
        elif tv is bool or v is None:
            size += 5
        elif tv is int:
            if not -_INT_BOUND < v < _INT_BOUND:
                return False
            size += _JSON_NUMBER_BYTES
        elif tv is float:
            if not math.isfinite(v):
                return False
            size += _JSON_NUMBER_BYTES
        elif tv is list:
            size += 2
            for item in v:
                if type(item) is not str or not item.isascii():
                    return False
                size += _JSON_CHAR_BYTES * len(item) + 3
        else:
            return False
        if size > MAX_METADATA_BYTES:
            return False
    return True


def _need_metadata(value: Any, name: str) -> dict[str, Value] | None:
    if value is None:
        return None
    if type(value) is dict and _surely_small(value):
        return dict(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be an object, got {type(value).__name__}")
    _check_json(value, name, 1)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{name}: {size} bytes is over the limit of {MAX_METADATA_BYTES}")
    return dict(value)


def _need_attributes(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be an object of strings")
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"{name}: {len(value)} entries is over the limit of {MAX_ATTRIBUTES}")
    out: dict[str, str] = {}
    for k, v in value.items():
        key = _need_str(k, f"{name} key", max_bytes=128, allow_empty=False)
        out[key] = _need_str(v, f"{name}.{key}", max_bytes=MAX_ATTRIBUTE_BYTES)
    return out


def _need_mapping(data: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{name}: must be an object, got {type(data).__name__}")
    return data


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
        data = _need_mapping(data, name)
        unknown = () if data.keys() <= _ENTITY_FIELDS else set(data) - _ENTITY_FIELDS
        if unknown:
            raise ValueError(f"{name}: unknown field {sorted(unknown)[0]!r}")
        return cls.of(data.get("id"), data.get("metadata"), name)

    @classmethod
    def of(cls, id: Any, metadata: Any, name: str) -> EntityRef:
        """The checks of ``parse`` on an entity whose fields a transport already read apart."""
        ident = _need_str(id, f"{name}.id", max_bytes=MAX_ID_BYTES, allow_empty=False)
        return cls(ident, _need_metadata(metadata, f"{name}.metadata"))


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def parse(cls, data: Any) -> Estimate:
        if data is None:
            return cls()
        data = _need_mapping(data, "estimate")
        unknown = () if data.keys() <= _ESTIMATE_FIELDS else set(data) - _ESTIMATE_FIELDS
        if unknown:
            raise ValueError(f"estimate: unknown field {sorted(unknown)[0]!r}")
        return cls.of(data.get("input_tokens"), data.get("output_tokens"), data.get("cost_usd"))

    @classmethod
    def of(cls, input_tokens: Any, output_tokens: Any, cost_usd: Any) -> Estimate:
        """The checks of ``parse`` on fields a transport already read apart."""
        return cls(
            _need_count(input_tokens, "estimate.input_tokens"),
            _need_count(output_tokens, "estimate.output_tokens"),
            _need_amount(cost_usd, "estimate.cost_usd"),
        )


_DECIDE_FIELDS = frozenset(
    {"request_id", "user", "group", "model", "attributes", "estimate", "dry_run"}
)


@dataclass(frozen=True, slots=True)
class DecideRequest:
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
        data = _need_mapping(data, "request")
        unknown = () if data.keys() <= _DECIDE_FIELDS else set(data) - _DECIDE_FIELDS
        if unknown:
            raise ValueError(f"request: unknown field {sorted(unknown)[0]!r}")
        dry_run = data.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ValueError("dry_run: must be true or false")
        return cls(
            request_id=_need_str(data.get("request_id"), "request_id", max_bytes=MAX_ID_BYTES),
            user=EntityRef.parse(data.get("user"), "user"),
            group=EntityRef.parse(data.get("group"), "group"),
            model=_need_str(data.get("model"), "model", max_bytes=MAX_MODEL_BYTES),
            attributes=_need_attributes(data.get("attributes"), "attributes"),
            estimate=Estimate.parse(data.get("estimate")),
            dry_run=dry_run,
        )

    @classmethod
    def of(
        cls,
        request_id: Any,
        user: tuple[Any, Any] | None,
        group: tuple[Any, Any] | None,
        model: Any,
        attributes: Any,
        estimate: tuple[Any, Any, Any] | None,
        dry_run: Any,
    ) -> DecideRequest:
        """``parse`` for a transport that already holds the fields apart (no mapping to build).

        ``user``/``group`` are ``(id, metadata)`` or None, ``estimate`` is
        ``(input_tokens, output_tokens, cost_usd)`` or None. The same checks in the same
        order as ``parse``, so both reject a request with the same message.
        """
        if not isinstance(dry_run, bool):
            raise ValueError("dry_run: must be true or false")
        return cls(
            _need_str(request_id, "request_id", max_bytes=MAX_ID_BYTES),
            None if user is None else EntityRef.of(user[0], user[1], "user"),
            None if group is None else EntityRef.of(group[0], group[1], "group"),
            _need_str(model, "model", max_bytes=MAX_MODEL_BYTES),
            _need_attributes(attributes, "attributes"),
            Estimate() if estimate is None else Estimate.of(*estimate),
            dry_run,
        )


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
        data = _need_mapping(data, "report")
        unknown = set(data) - _REPORT_FIELDS
        if unknown:
            raise ValueError(f"report: unknown field {sorted(unknown)[0]!r}")
        input_tokens = _need_count(data.get("input_tokens"), "input_tokens")
        cached = _need_count(data.get("cached_input_tokens"), "cached_input_tokens")
        if cached > input_tokens:
            raise ValueError(
                f"cached_input_tokens: {cached} is more than input_tokens ({input_tokens})"
            )
        return cls(
            request_id=_need_str(
                data.get("request_id"), "request_id", max_bytes=MAX_ID_BYTES, allow_empty=False
            ),
            decision_id=_need_str(data.get("decision_id"), "decision_id", max_bytes=MAX_ID_BYTES),
            user=EntityRef.parse(data.get("user"), "user"),
            group=EntityRef.parse(data.get("group"), "group"),
            model=_need_str(data.get("model"), "model", max_bytes=MAX_MODEL_BYTES),
            input_tokens=input_tokens,
            output_tokens=_need_count(data.get("output_tokens"), "output_tokens"),
            cost_usd=_need_amount(data.get("cost_usd"), "cost_usd"),
            duration_seconds=_need_amount(data.get("duration_seconds"), "duration_seconds"),
            status=_need_str(data.get("status") or "success", "status", max_bytes=MAX_STATUS_BYTES),
            attributes=_need_attributes(data.get("attributes"), "attributes"),
            cached_input_tokens=cached,
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
    reason: str  # the proto enum's name: "ALLOWED", "QUOTA_EXCEEDED", …
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


@dataclass(frozen=True, slots=True)
class ReportAck:
    """``outcome``: "settled" (replaced a reservation), "added" or "duplicate"."""

    request_id: str
    outcome: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    trace: tuple[RuleTrace, ...] = ()
    candidates: int = 0  # how many rules the index selected
    total_rules: int = 0
