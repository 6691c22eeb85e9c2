"""Translation between the wire messages (``tollway.v1``) and the engine's values.

Mechanical on purpose: validation lives in ``policy.model`` so that every transport
rejects the same inputs with the same messages. On the server, requests become the
JSON-shaped mappings the model parses and results become messages field by field; a
client goes the other way (validated requests to messages, messages to the engine's
result dataclasses), with the functions at the end of this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from tollway.dsl.ast import Value
from tollway.dsl.compiled import RuleTrace, TestTrace
from tollway.policy.entities import EntityKind, EntityView
from tollway.policy.model import (
    BalanceView,
    DecideRequest,
    Decision,
    EntityRef,
    Explanation,
    QuotaStatus,
    ReportAck,
    ShadowOutcome,
    UsageReport,
)
from tollway.v1 import tollway_pb2 as pb

__all__ = [
    "struct_to_dict", "value_to_python", "dict_to_struct", "python_to_value",
    "decide_request", "usage_report", "decision_to_proto", "ack_to_proto",
    "explanation_to_proto", "entity_to_proto", "quota_to_proto", "set_timestamp", "seconds_of",
    "message_to_json", "decide_request_to_proto", "usage_report_to_proto",
    "decision_from_proto", "quota_from_proto", "ack_from_proto", "explanation_from_proto",
    "entity_from_proto",
]

_MAX_SAFE_INT = 2**53
_REASONS: dict[str, Any] = dict(pb.Reason.items())
_REASON_NAMES: dict[int, str] = {number: name for name, number in _REASONS.items()}
# deeper than the model's limit by a margin: the model names the field, this only bounds work
_MAX_CONVERT_DEPTH = 32


# ------------------------------------------------------------------ Struct <-> Python


def value_to_python(value: struct_pb2.Value, name: str = "value", depth: int = 0) -> Value:
    """A ``google.protobuf.Value`` as a JSON-shaped Python value.

    Struct numbers are doubles on the wire; whole ones become ``int`` so that rules and
    stored metadata see ``3`` the way a JSON client sent it. ``name`` is only used to
    name the field when nesting is absurdly deep (the model enforces the real limit).
    """
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        n = value.number_value
        if n.is_integer() and -_MAX_SAFE_INT < n < _MAX_SAFE_INT:
            return int(n)
        return n  # NaN and infinities are rejected by the model, naming the field
    if kind == "bool_value":
        return value.bool_value
    if depth >= _MAX_CONVERT_DEPTH:
        raise ValueError(f"{name}: nested too deep")
    if kind == "struct_value":
        return {k: value_to_python(v, name, depth + 1) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_python(v, name, depth + 1) for v in value.list_value.values]
    return None  # null_value, or unset


def struct_to_dict(struct: struct_pb2.Struct, name: str = "metadata") -> dict[str, Value]:
    # ``value_to_python`` inlined for strings, the usual metadata value; same results
    out: dict[str, Value] = {}
    for k, v in struct.fields.items():
        if v.WhichOneof("kind") == "string_value":
            out[k] = v.string_value
        else:
            out[k] = value_to_python(v, name, 1)
    return out


def python_to_value(value: Any, out: struct_pb2.Value | None = None) -> struct_pb2.Value:
    """A JSON-shaped Python value as a ``google.protobuf.Value``."""
    out = struct_pb2.Value() if out is None else out
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        out.number_value = float(value)
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, Mapping):
        dict_to_struct(value, out.struct_value)
    elif isinstance(value, list | tuple):
        lv = out.list_value
        lv.SetInParent()
        for item in value:
            python_to_value(item, lv.values.add())
    else:
        out.string_value = str(value)
    return out


def dict_to_struct(data: Mapping[str, Any], out: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    out = struct_pb2.Struct() if out is None else out
    out.SetInParent()  # present even when empty
    for k, v in data.items():
        python_to_value(v, out.fields[str(k)])
    return out


# ------------------------------------------------------------------ requests


def _entity(msg: Any, parent: Any, field: str) -> dict[str, Any] | None:
    """An unset Entity means "no entity"; a set one keeps its (possibly empty) id."""
    if not parent.HasField(field):
        return None
    out: dict[str, Any] = {"id": msg.id}
    if msg.HasField("metadata"):
        out["metadata"] = struct_to_dict(msg.metadata, field + ".metadata")
    return out


def decide_request(msg: pb.DecideRequest) -> dict[str, Any]:
    """The JSON-shaped request ``Engine.decide``/``explain`` validate."""
    data: dict[str, Any] = {
        "request_id": msg.request_id,
        "user": _entity(msg.user, msg, "user"),
        "group": _entity(msg.group, msg, "group"),
        "model": msg.model,
        "dry_run": msg.dry_run,
    }
    if msg.attributes:
        data["attributes"] = dict(msg.attributes)
    if msg.HasField("estimate"):
        e = msg.estimate
        data["estimate"] = {
            "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens,
            "cost_usd": e.cost_usd,
        }
    return data


def usage_report(msg: pb.UsageReport) -> dict[str, Any]:
    data: dict[str, Any] = {
        "request_id": msg.request_id,
        "decision_id": msg.decision_id,
        "user": _entity(msg.user, msg, "user"),
        "group": _entity(msg.group, msg, "group"),
        "model": msg.model,
        "input_tokens": msg.input_tokens,
        "output_tokens": msg.output_tokens,
        "cost_usd": msg.cost_usd,
        "duration_seconds": msg.duration_seconds,
        "status": msg.status,
    }
    if msg.cached_input_tokens:
        data["cached_input_tokens"] = msg.cached_input_tokens
    if msg.attributes:
        data["attributes"] = dict(msg.attributes)
    return data


# ------------------------------------------------------------------ results


def _set_duration(out: Any, seconds: float) -> None:
    out.seconds, out.nanos = divmod(round(seconds * 1e9), 1_000_000_000)


def seconds_of(value: Any) -> float:
    """A Timestamp as unix seconds, or a Duration as seconds (``set_timestamp`` read back)."""
    return value.seconds + value.nanos / 1e9


def set_timestamp(out: Any, unix: float) -> None:
    """A Timestamp (or Duration) from unix seconds, exact to the nanosecond a double holds."""
    # split first: unix * 1e9 is beyond a double's exact integers and would lose microseconds
    seconds = math.floor(unix)
    carry, nanos = divmod(round((unix - seconds) * 1e9), 1_000_000_000)
    out.seconds, out.nanos = seconds + carry, nanos


def quota_to_proto(q: QuotaStatus, out: pb.QuotaStatus | None = None) -> pb.QuotaStatus:
    out = pb.QuotaStatus() if out is None else out
    out.name = q.name
    out.metric = q.metric
    out.scope = q.scope
    out.key = q.key
    out.limit = q.limit
    out.used = q.used
    out.remaining = q.remaining
    out.exceeded = q.exceeded
    out.kind = q.kind
    _set_duration(out.retry_after, q.retry_after)
    if q.resets_at is not None:
        set_timestamp(out.resets_at, q.resets_at)
    return out


def balance_to_proto(b: BalanceView, out: pb.BalanceStatus | None = None) -> pb.BalanceStatus:
    out = pb.BalanceStatus() if out is None else out
    out.name, out.metric = b.name, b.metric
    out.available, out.reserved, out.low = b.available, b.reserved, b.low
    for line in b.ledger:
        entry = out.ledger.add(kind=line.kind, amount=line.amount, reason=line.reason, ref=line.ref)
        set_timestamp(entry.time, line.time)
    return out


def decision_to_proto(d: Decision, out: pb.Decision | None = None) -> pb.Decision:
    out = pb.Decision() if out is None else out
    out.allowed = d.allowed
    out.reason = _REASONS[d.reason]
    out.message = d.message
    out.model = d.model
    out.routed = d.routed
    out.checks.extend(d.checks)
    for q in d.quotas:
        quota_to_proto(q, out.quotas.add())
    out.matched_rules.extend(d.matched_rules)
    if d.annotations:
        out.annotations.update(d.annotations)
    out.decision_id = d.decision_id
    out.ruleset_version = d.ruleset_version
    if d.ignored_metadata:
        out.ignored_metadata.extend(d.ignored_metadata)
    s = d.shadow
    if s.matched_rules or s.denied or s.routed or s.checks or s.model or s.message:
        sh = out.shadow
        sh.matched_rules.extend(s.matched_rules)
        sh.denied = s.denied
        sh.message = s.message
        sh.model = s.model
        sh.routed = s.routed
        sh.checks.extend(s.checks)
    return out


def ack_to_proto(ack: ReportAck) -> pb.ReportAck:
    return pb.ReportAck(request_id=ack.request_id, outcome=ack.outcome, duplicate=ack.duplicate)


def _trace_to_proto(t: RuleTrace, out: pb.RuleTrace) -> None:
    out.rule = t.rule
    out.priority = t.priority
    out.shadow = t.shadow
    out.candidate = t.candidate
    out.matched = t.matched
    for test in t.tests:
        tt = out.tests.add()
        tt.text = test.text
        tt.held = test.held
        for path, value in test.values:
            python_to_value(value, tt.values[path])


def message_to_json(msg: Message) -> dict[str, Any]:
    """A message in the proto3 JSON mapping with the proto's field names: RFC 3339 times,
    durations as ``"1.5s"``, enums by name, 64-bit integers as strings, fields at their
    zero value included. The one JSON shape of a decision or explanation outside gRPC."""
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def explanation_to_proto(e: Explanation) -> pb.Explanation:
    out = pb.Explanation(candidates=e.candidates, total_rules=e.total_rules)
    decision_to_proto(e.decision, out.decision)
    for t in e.trace:
        _trace_to_proto(t, out.trace.add())
    return out


def entity_to_proto(view: EntityView) -> pb.EntityInfo:
    out = pb.EntityInfo(kind=view.kind, id=view.id, links=list(view.links))
    dict_to_struct(view.metadata, out.metadata)
    return out


# ------------------------------------------------------------------ values to the wire
#
# The direction a client needs: validated requests (``DecideRequest``, ``UsageReport``)
# as messages. Nothing is checked here: the values were checked when they were parsed.


def _entity_to_proto(ref: EntityRef, out: pb.Entity) -> None:
    out.id = ref.id
    if ref.metadata is not None:
        dict_to_struct(ref.metadata, out.metadata)


def _parties_to_proto(value: DecideRequest | UsageReport, out: Any) -> None:
    """Who a request or report is for, and its attributes (fields both messages share)."""
    if value.user is not None:
        _entity_to_proto(value.user, out.user)
    if value.group is not None:
        _entity_to_proto(value.group, out.group)
    if value.attributes:
        out.attributes.update(value.attributes)


def decide_request_to_proto(req: DecideRequest) -> pb.DecideRequest:
    out = pb.DecideRequest(request_id=req.request_id, model=req.model, dry_run=req.dry_run)
    _parties_to_proto(req, out)
    e = req.estimate
    if e.input_tokens or e.output_tokens or e.cost_usd:
        out.estimate.input_tokens = e.input_tokens
        out.estimate.output_tokens = e.output_tokens
        out.estimate.cost_usd = e.cost_usd
    return out


def usage_report_to_proto(rep: UsageReport) -> pb.UsageReport:
    out = pb.UsageReport(
        request_id=rep.request_id,
        decision_id=rep.decision_id,
        model=rep.model,
        input_tokens=rep.input_tokens,
        output_tokens=rep.output_tokens,
        cost_usd=rep.cost_usd,
        duration_seconds=rep.duration_seconds,
        status=rep.status,
        cached_input_tokens=rep.cached_input_tokens,
    )
    _parties_to_proto(rep, out)
    return out


# ------------------------------------------------------------------ results from the wire
#
# The inverse of the ``*_to_proto`` functions above: a client gets back the very
# dataclasses the in-process ``Engine`` returns.


def quota_from_proto(msg: pb.QuotaStatus) -> QuotaStatus:
    # positional and read once: a decision carries several quotas, on every call
    wait = msg.retry_after
    return QuotaStatus(
        msg.name,
        msg.metric,
        msg.scope,
        msg.key,
        msg.limit,
        msg.used,
        msg.remaining,
        msg.exceeded,
        wait.seconds + wait.nanos / 1e9 if wait.seconds or wait.nanos else 0.0,
        seconds_of(msg.resets_at) if msg.HasField("resets_at") else None,
        msg.kind or "quota",
    )


_NO_SHADOW = ShadowOutcome()


def decision_from_proto(msg: pb.Decision) -> Decision:
    shadow = _NO_SHADOW
    if msg.HasField("shadow"):
        s = msg.shadow
        shadow = ShadowOutcome(
            tuple(s.matched_rules), s.denied, s.message, s.model, s.routed, tuple(s.checks)
        )
    annotations = msg.annotations
    return Decision(
        msg.allowed,
        _REASON_NAMES.get(msg.reason, "REASON_UNSPECIFIED"),
        msg.message,
        msg.model,
        msg.routed,
        tuple(msg.checks),
        tuple([quota_from_proto(q) for q in msg.quotas]),
        tuple(msg.matched_rules),
        dict(annotations) if annotations else {},
        msg.decision_id,
        msg.ruleset_version,
        shadow,
        tuple(msg.ignored_metadata),
    )


def ack_from_proto(msg: pb.ReportAck) -> ReportAck:
    return ReportAck(request_id=msg.request_id, outcome=msg.outcome, duplicate=msg.duplicate)


def _trace_from_proto(msg: pb.RuleTrace) -> RuleTrace:
    tests = tuple(
        TestTrace(
            text=t.text,
            held=t.held,
            # a proto map keeps no order: paths come back sorted
            values=tuple((path, value_to_python(t.values[path], path)) for path in sorted(t.values)),
        )
        for t in msg.tests
    )
    return RuleTrace(
        rule=msg.rule,
        priority=msg.priority,
        shadow=msg.shadow,
        candidate=msg.candidate,
        matched=msg.matched,
        tests=tests,
    )


def explanation_from_proto(msg: pb.Explanation) -> Explanation:
    return Explanation(
        decision=decision_from_proto(msg.decision),
        trace=tuple(_trace_from_proto(t) for t in msg.trace),
        candidates=msg.candidates,
        total_rules=msg.total_rules,
    )


def entity_from_proto(msg: pb.EntityInfo) -> EntityView:
    kind: EntityKind = "group" if msg.kind == "group" else "user"
    return EntityView(
        kind=kind, id=msg.id, metadata=struct_to_dict(msg.metadata), links=tuple(msg.links)
    )
