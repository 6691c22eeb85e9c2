import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    ALLOWED: _ClassVar[Reason]
    DENIED_BY_RULE: _ClassVar[Reason]
    DEFAULT_DENY: _ClassVar[Reason]
    QUOTA_EXCEEDED: _ClassVar[Reason]
    QUOTA_UNRESOLVED: _ClassVar[Reason]
    STORE_UNAVAILABLE: _ClassVar[Reason]
REASON_UNSPECIFIED: Reason
ALLOWED: Reason
DENIED_BY_RULE: Reason
DEFAULT_DENY: Reason
QUOTA_EXCEEDED: Reason
QUOTA_UNRESOLVED: Reason
STORE_UNAVAILABLE: Reason

class Entity(_message.Message):
    __slots__ = ("id", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "cost_usd")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    cost_usd: float
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("request_id", "user", "group", "model", "attributes", "estimate", "dry_run")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user: Entity
    group: Entity
    model: str
    attributes: _containers.ScalarMap[str, str]
    estimate: Estimate
    dry_run: bool
    def __init__(self, request_id: _Optional[str] = ..., user: _Optional[_Union[Entity, _Mapping]] = ..., group: _Optional[_Union[Entity, _Mapping]] = ..., model: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class QuotaStatus(_message.Message):
    __slots__ = ("name", "metric", "scope", "key", "limit", "used", "remaining", "exceeded", "retry_after", "resets_at", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    metric: str
    scope: str
    key: str
    limit: float
    used: float
    remaining: float
    exceeded: bool
    retry_after: _duration_pb2.Duration
    resets_at: _timestamp_pb2.Timestamp
    kind: str
    def __init__(self, name: _Optional[str] = ..., metric: _Optional[str] = ..., scope: _Optional[str] = ..., key: _Optional[str] = ..., limit: _Optional[float] = ..., used: _Optional[float] = ..., remaining: _Optional[float] = ..., exceeded: _Optional[bool] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class ShadowOutcome(_message.Message):
    __slots__ = ("matched_rules", "denied", "message", "model", "routed", "checks")
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    matched_rules: _containers.RepeatedScalarFieldContainer[str]
    denied: bool
    message: str
    model: str
    routed: bool
    checks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, matched_rules: _Optional[_Iterable[str]] = ..., denied: _Optional[bool] = ..., message: _Optional[str] = ..., model: _Optional[str] = ..., routed: _Optional[bool] = ..., checks: _Optional[_Iterable[str]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("allowed", "reason", "message", "model", "routed", "checks", "quotas", "matched_rules", "annotations", "decision_id", "ruleset_version", "shadow", "ignored_metadata")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    RULESET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    IGNORED_METADATA_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: Reason
    message: str
    model: str
    routed: bool
    checks: _containers.RepeatedScalarFieldContainer[str]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaStatus]
    matched_rules: _containers.RepeatedScalarFieldContainer[str]
    annotations: _containers.ScalarMap[str, str]
    decision_id: str
    ruleset_version: str
    shadow: ShadowOutcome
    ignored_metadata: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[_Union[Reason, str]] = ..., message: _Optional[str] = ..., model: _Optional[str] = ..., routed: _Optional[bool] = ..., checks: _Optional[_Iterable[str]] = ..., quotas: _Optional[_Iterable[_Union[QuotaStatus, _Mapping]]] = ..., matched_rules: _Optional[_Iterable[str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., decision_id: _Optional[str] = ..., ruleset_version: _Optional[str] = ..., shadow: _Optional[_Union[ShadowOutcome, _Mapping]] = ..., ignored_metadata: _Optional[_Iterable[str]] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("request_id", "decision_id", "user", "group", "model", "input_tokens", "output_tokens", "cost_usd", "duration_seconds", "status", "attributes", "cached_input_tokens")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision_id: str
    user: Entity
    group: Entity
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    duration_seconds: float
    status: str
    attributes: _containers.ScalarMap[str, str]
    cached_input_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., user: _Optional[_Union[Entity, _Mapping]] = ..., group: _Optional[_Union[Entity, _Mapping]] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., status: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., cached_input_tokens: _Optional[int] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("request_id", "outcome", "duplicate")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    outcome: str
    duplicate: bool
    def __init__(self, request_id: _Optional[str] = ..., outcome: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class TestTrace(_message.Message):
    __slots__ = ("text", "held", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    text: str
    held: bool
    values: _containers.MessageMap[str, _struct_pb2.Value]
    def __init__(self, text: _Optional[str] = ..., held: _Optional[bool] = ..., values: _Optional[_Mapping[str, _struct_pb2.Value]] = ...) -> None: ...

class RuleTrace(_message.Message):
    __slots__ = ("rule", "priority", "shadow", "candidate", "matched", "tests")
    RULE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    rule: str
    priority: int
    shadow: bool
    candidate: bool
    matched: bool
    tests: _containers.RepeatedCompositeFieldContainer[TestTrace]
    def __init__(self, rule: _Optional[str] = ..., priority: _Optional[int] = ..., shadow: _Optional[bool] = ..., candidate: _Optional[bool] = ..., matched: _Optional[bool] = ..., tests: _Optional[_Iterable[_Union[TestTrace, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("decision", "trace", "candidates", "total_rules")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RULES_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    trace: _containers.RepeatedCompositeFieldContainer[RuleTrace]
    candidates: int
    total_rules: int
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., trace: _Optional[_Iterable[_Union[RuleTrace, _Mapping]]] = ..., candidates: _Optional[int] = ..., total_rules: _Optional[int] = ...) -> None: ...

class UpsertEntityRequest(_message.Message):
    __slots__ = ("kind", "id", "metadata", "replace", "groups")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    metadata: _struct_pb2.Struct
    replace: bool
    groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., replace: _Optional[bool] = ..., groups: _Optional[_Iterable[str]] = ...) -> None: ...

class GetEntityRequest(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class EntityInfo(_message.Message):
    __slots__ = ("kind", "id", "metadata", "links")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    metadata: _struct_pb2.Struct
    links: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., links: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("user_id", "group_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group_id: str
    def __init__(self, user_id: _Optional[str] = ..., group_id: _Optional[str] = ...) -> None: ...

class ListUsageRequest(_message.Message):
    __slots__ = ("kind", "search", "sort", "limit", "offset", "start", "end", "cursor")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    search: str
    sort: str
    limit: int
    offset: int
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    cursor: str
    def __init__(self, kind: _Optional[str] = ..., search: _Optional[str] = ..., sort: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cursor: _Optional[str] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model", "request_count", "total_tokens", "total_cost")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_count: int
    total_tokens: int
    total_cost: float
    def __init__(self, model: _Optional[str] = ..., request_count: _Optional[int] = ..., total_tokens: _Optional[int] = ..., total_cost: _Optional[float] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("user_id", "group_id", "request_count", "first_seen", "last_seen", "total_tokens", "input_tokens", "output_tokens", "total_cost", "total_duration", "models")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group_id: str
    request_count: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    total_tokens: int
    input_tokens: int
    output_tokens: int
    total_cost: float
    total_duration: float
    models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    def __init__(self, user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., request_count: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_tokens: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_cost: _Optional[float] = ..., total_duration: _Optional[float] = ..., models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("time", "request_id", "decision_id", "user_id", "group_id", "model", "input_tokens", "output_tokens", "cost_usd", "duration_seconds", "status")
    TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    request_id: str
    decision_id: str
    user_id: str
    group_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    duration_seconds: float
    status: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., status: _Optional[str] = ...) -> None: ...

class UsageDetail(_message.Message):
    __slots__ = ("usage", "cost_by_model", "recent_reports")
    class CostByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    RECENT_REPORTS_FIELD_NUMBER: _ClassVar[int]
    usage: UsageRecord
    cost_by_model: _containers.ScalarMap[str, float]
    recent_reports: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    def __init__(self, usage: _Optional[_Union[UsageRecord, _Mapping]] = ..., cost_by_model: _Optional[_Mapping[str, float]] = ..., recent_reports: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ...) -> None: ...

class ListUsageResponse(_message.Message):
    __slots__ = ("results", "count", "next", "previous", "next_cursor", "previous_cursor", "period_start", "period_end")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CURSOR_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    count: int
    next: int
    previous: int
    next_cursor: str
    previous_cursor: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, results: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., count: _Optional[int] = ..., next: _Optional[int] = ..., previous: _Optional[int] = ..., next_cursor: _Optional[str] = ..., previous_cursor: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageSeriesRequest(_message.Message):
    __slots__ = ("user_id", "group_id", "metric", "step", "start", "end")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group_id: str
    metric: str
    step: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., metric: _Optional[str] = ..., step: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SeriesPoint(_message.Message):
    __slots__ = ("time", "value")
    TIME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    value: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[float] = ...) -> None: ...

class UsageSeries(_message.Message):
    __slots__ = ("user_id", "group_id", "metric", "step", "start", "end", "points")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group_id: str
    metric: str
    step: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    points: _containers.RepeatedCompositeFieldContainer[SeriesPoint]
    def __init__(self, user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., metric: _Optional[str] = ..., step: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., points: _Optional[_Iterable[_Union[SeriesPoint, _Mapping]]] = ...) -> None: ...

class ListSpikesRequest(_message.Message):
    __slots__ = ("kind", "metric", "window", "baseline", "factor", "min", "limit")
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    metric: str
    window: str
    baseline: str
    factor: float
    min: float
    limit: int
    def __init__(self, kind: _Optional[str] = ..., metric: _Optional[str] = ..., window: _Optional[str] = ..., baseline: _Optional[str] = ..., factor: _Optional[float] = ..., min: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class Spike(_message.Message):
    __slots__ = ("user_id", "group_id", "window_amount", "baseline_average", "ratio")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    BASELINE_AVERAGE_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group_id: str
    window_amount: float
    baseline_average: float
    ratio: float
    def __init__(self, user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., window_amount: _Optional[float] = ..., baseline_average: _Optional[float] = ..., ratio: _Optional[float] = ...) -> None: ...

class ListSpikesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Spike]
    def __init__(self, results: _Optional[_Iterable[_Union[Spike, _Mapping]]] = ...) -> None: ...

class CreditRequest(_message.Message):
    __slots__ = ("kind", "id", "balance", "amount", "reason", "idempotency_key")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    balance: str
    amount: float
    reason: str
    idempotency_key: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., balance: _Optional[str] = ..., amount: _Optional[float] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CreditAck(_message.Message):
    __slots__ = ("applied", "balance")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    balance: BalanceStatus
    def __init__(self, applied: _Optional[bool] = ..., balance: _Optional[_Union[BalanceStatus, _Mapping]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("time", "kind", "amount", "reason", "ref")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    kind: str
    amount: float
    reason: str
    ref: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., amount: _Optional[float] = ..., reason: _Optional[str] = ..., ref: _Optional[str] = ...) -> None: ...

class BalanceStatus(_message.Message):
    __slots__ = ("name", "metric", "available", "reserved", "ledger", "low")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    metric: str
    available: float
    reserved: float
    ledger: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    low: bool
    def __init__(self, name: _Optional[str] = ..., metric: _Optional[str] = ..., available: _Optional[float] = ..., reserved: _Optional[float] = ..., ledger: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., low: _Optional[bool] = ...) -> None: ...

class BalanceInfo(_message.Message):
    __slots__ = ("kind", "id", "balances")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    balances: _containers.RepeatedCompositeFieldContainer[BalanceStatus]
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., balances: _Optional[_Iterable[_Union[BalanceStatus, _Mapping]]] = ...) -> None: ...
