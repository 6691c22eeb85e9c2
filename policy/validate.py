"""The one place where values that come from callers are checked.

Ids, kinds, strings, numbers, metadata, attributes, listing parameters and times: every
transport (gRPC, HTTP, the CLI, the Python API) and every request type goes through the
functions here, so the same bad value is refused the same way everywhere. A refusal is a
``FieldError`` (a ``ValueError``) whose message is ``field: problem``.

The numeric ranges below are part of the API contract (docs/api.md, "Limits"). They are
chosen so that no amount a request or report carries can overflow a store:

- counters keep integer units (tokens whole, cost in micro-USD) that the Redis scripts
  read as Lua doubles, exact up to 2**53: one amount is at most ``MAX_TOKENS`` tokens
  (1e9) or ``MAX_COST_USD`` (1e10 micro-USD), so at least 900,000 maximal amounts fit in
  one counter field, and past that it saturates at 2**53 - 1 units instead of losing
  precision (``policy.windows.MAX_UNITS``);
- usage totals are 64-bit integers (protobuf int64, SQL BIGINT: 2**63 - 1): tokens in
  units, cost in nano-USD (1e13 per maximal report), durations in microseconds
  (6.048e11 per maximal report), so one entity needs at least 9.2e5 maximal reports
  (9.2 billion USD) before a 64-bit total is full.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from tollway.dsl.ast import Value

__all__ = [
    "EntityKind",
    "KIND_NAMES",
    "MAX_ID_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_STATUS_BYTES",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_BYTES",
    "MAX_ATTRIBUTE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_GROUPS",
    "MAX_TOKENS",
    "MAX_COST_USD",
    "MAX_DURATION_SECONDS",
    "FieldError",
    "need_object",
    "need_known_fields",
    "need_kind",
    "need_id",
    "need_text",
    "need_groups",
    "need_bool",
    "need_tokens",
    "need_hits",
    "need_part",
    "need_usd",
    "need_seconds",
    "need_metadata",
    "need_attributes",
    "need_whole",
    "need_credit",
    "MAX_REASON_BYTES",
    "MAX_CREDIT",
    "need_number",
    "need_time",
]

EntityKind = Literal["user", "group"]

# ``kind`` as callers may spell it: singular (GetEntity) or plural (ListUsage, URLs).
KIND_NAMES: Mapping[str, EntityKind] = {
    "user": "user",
    "users": "user",
    "group": "group",
    "groups": "group",
}

MAX_ID_BYTES = 256
MAX_MODEL_BYTES = 1024
MAX_STATUS_BYTES = 64
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_BYTES = 128
MAX_ATTRIBUTE_BYTES = 4096
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 8
MAX_GROUPS = 100  # groups one UpsertEntity may link a user to

MAX_TOKENS = 1_000_000_000  # per field of one request or report: 1000x today's largest contexts
MAX_COST_USD = 10_000.0  # one request or report
MAX_CREDIT = 1_000_000_000.0  # one credit, in the balance's metric (USD for cost)
MAX_REASON_BYTES = 1024
MAX_DURATION_SECONDS = 7 * 86_400.0  # one model call (batch jobs finish within a day)


class FieldError(ValueError):
    """A value refused by a check; ``str()`` is ``field: problem``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    @property
    def parameter(self) -> str:
        """The field's name as an HTTP error body carries it."""
        return self.field


def _size(text: str, field: str) -> int:
    """UTF-8 bytes of ``text``; lone surrogates (which no store can encode) are refused."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise FieldError(field, "must be valid Unicode text (it holds a lone surrogate)") from None


# ------------------------------------------------------------------ shapes


def need_object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be an object, got {type(value).__name__}")
    return value


def need_known_fields(data: Mapping[str, Any], known: frozenset[str], field: str) -> None:
    """Refuse a field that ``known`` does not list (a typo must not be silently ignored)."""
    if data.keys() <= known:
        return
    unknown = sorted(str(k) for k in data if k not in known)
    raise FieldError(field, f"unknown field {unknown[0]!r}")


# ------------------------------------------------------------------ names


def need_kind(value: Any, field: str = "kind") -> EntityKind:
    """``user`` or ``group``; the plural forms ``users``/``groups`` are accepted too."""
    kind = KIND_NAMES.get(value) if isinstance(value, str) else None
    if kind is None:
        raise FieldError(field, f"must be 'user' or 'group' (or 'users', 'groups'), got {value!r}")
    return kind


def need_text(value: Any, field: str, max_bytes: int, *, required: bool = False) -> str:
    """A string of at most ``max_bytes`` UTF-8 bytes; None is ""; ``required``: not empty."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type(value).__name__}")
    if not value:
        if required:
            raise FieldError(field, "must not be empty")
        return value
    size = _size(value, field)
    if size > max_bytes:
        raise FieldError(field, f"{size} bytes is over the limit of {max_bytes}")
    return value


def need_id(value: Any, field: str, *, required: bool = True) -> str:
    """An opaque id: 1..256 bytes (0..256 when not ``required``)."""
    return need_text(value, field, MAX_ID_BYTES, required=required)


def need_groups(value: Any, kind: EntityKind, field: str = "groups") -> list[str]:
    """Groups to link a user to: at most ``MAX_GROUPS`` ids; none for a group."""
    groups = list(value or ())
    if groups and kind != "user":
        raise FieldError(field, "only a user can be linked to groups")
    if len(groups) > MAX_GROUPS:
        raise FieldError(field, f"{len(groups)} entries is over the limit of {MAX_GROUPS}")
    return [need_id(g, f"{field}[{i}]") for i, g in enumerate(groups)]


def need_bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FieldError(field, "must be true or false")
    return value


# ------------------------------------------------------------------ numbers


def _whole(value: Any, field: str) -> int:
    """An int, or a float holding a whole number (JSON and Struct numbers are doubles)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise FieldError(field, f"must be a whole number, got {value!r}")


def _at_most(number: float, field: str, high: float) -> None:
    """``0 <= number <= high``."""
    if number < 0:
        raise FieldError(field, f"must not be negative, got {number!r}")
    if number > high:
        limit = f"{int(high):_}" if float(high).is_integer() else f"{high:g}"
        raise FieldError(field, f"{number!r} is over the limit of {limit}")


def need_tokens(value: Any, field: str) -> int:
    """A token count: a whole number in ``0..MAX_TOKENS``; None is 0."""
    if value is None:
        return 0
    number = _whole(value, field)
    _at_most(number, field, MAX_TOKENS)
    return number


def need_hits(value: Any, field: str = "hits") -> int:
    """How many requests one decision counts: a whole number in ``1..MAX_TOKENS``."""
    if type(value) is not int or not 1 <= value <= MAX_TOKENS:
        raise FieldError(field, f"must be a whole number from 1 to {MAX_TOKENS:_}, got {value!r}")
    return value


def need_part(value: Any, field: str, whole: int, whole_field: str) -> int:
    """A token count that is part of another (``cached_input_tokens`` of ``input_tokens``)."""
    part = need_tokens(value, field)
    if part > whole:
        raise FieldError(field, f"{part} is more than {whole_field} ({whole})")
    return part


def _need_amount(value: Any, field: str, high: float) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(field, f"must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise FieldError(field, f"must be a finite number, got {number!r}")
    _at_most(number, field, high)
    return number


def need_usd(value: Any, field: str) -> float:
    """A cost in USD: finite, in ``0..MAX_COST_USD``; None is 0."""
    return _need_amount(value, field, MAX_COST_USD)


def need_seconds(value: Any, field: str) -> float:
    """A duration in seconds: finite, in ``0..MAX_DURATION_SECONDS``; None is 0."""
    return _need_amount(value, field, MAX_DURATION_SECONDS)


def need_whole(value: Any, field: str, low: int, high: int, default: int) -> int:
    """A whole number in ``low..high``: an int, a whole float, or a string of ASCII digits
    (URL parameters); None or "" is ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise FieldError(field, "must be a whole number")
    if isinstance(value, str):
        text = value.strip()
        # ASCII only: str.isdigit() also accepts other scripts' digits and superscripts
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise FieldError(field, f"must be a whole number, got {value!r}")
        number = int(text)
    else:
        number = _whole(value, field)
    if not low <= number <= high:
        raise FieldError(field, f"must be between {low} and {high}, got {number}")
    return number


def need_number(value: Any, field: str, default: float) -> float:
    """A finite number, not negative: an int, a float, or a decimal string of ASCII
    characters (URL parameters); None or "" is ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise FieldError(field, "must be a number")
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or len(text) > 32:
            raise FieldError(field, f"must be a number, got {value!r}")
        try:
            value = float(text)
        except ValueError:
            raise FieldError(field, f"must be a number, got {text!r}") from None
    elif not isinstance(value, int | float):
        raise FieldError(field, f"must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise FieldError(field, f"must be a finite number, got {value!r}")
    if number < 0:
        raise FieldError(field, f"must not be negative, got {number!r}")
    return number


# ------------------------------------------------------------------ metadata


def _check_json(value: Any, field: str, depth: int) -> None:
    """Refuse what JSON cannot carry and nesting deeper than ``MAX_METADATA_DEPTH``."""
    if depth > MAX_METADATA_DEPTH:
        raise FieldError(field, f"nested deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(field, f"{value!r} is not a JSON number")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise FieldError(field, f"keys must be strings, got {type(k).__name__}")
            _check_json(v, f"{field}.{k}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{field}[{i}]", depth + 1)
        return
    raise FieldError(field, f"{type(value).__name__} is not a JSON value")


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


def need_metadata(value: Any, field: str) -> dict[str, Value] | None:
    """A JSON object of at most 8 levels and 64 KiB as compact JSON; None stays None."""
    if value is None:
        return None
    if type(value) is dict and _surely_small(value):
        return dict(value)
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be an object, got {type(value).__name__}")
    _check_json(value, field, 1)
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except ValueError as exc:  # a lone surrogate, an int too long to print
        raise FieldError(field, f"not valid JSON ({exc})") from None
    if size > MAX_METADATA_BYTES:
        raise FieldError(field, f"{size} bytes is over the limit of {MAX_METADATA_BYTES}")
    return dict(value)


def need_attributes(value: Any, field: str) -> dict[str, str]:
    """At most 64 string entries: keys 1..128 bytes, values up to 4096 bytes."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(field, "must be an object of strings")
    if len(value) > MAX_ATTRIBUTES:
        raise FieldError(field, f"{len(value)} entries is over the limit of {MAX_ATTRIBUTES}")
    out: dict[str, str] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key:
            raise FieldError(field, f"keys must be non-empty strings, got {key!r}")
        size = _size(key, field)
        if size > MAX_ATTRIBUTE_KEY_BYTES:
            raise FieldError(
                field, f"a key of {size} bytes is over the limit of {MAX_ATTRIBUTE_KEY_BYTES}"
            )
        out[key] = need_text(v, f"{field}.{key}", MAX_ATTRIBUTE_BYTES)
    return out


# ------------------------------------------------------------------ times


def need_time(value: Any, field: str) -> float | None:
    """An ISO 8601 time (naive means UTC), a datetime or a unix time -> unix seconds.

    None or "" -> None (unset).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError(field, "must be an ISO 8601 time")
    if isinstance(value, int | float):
        t = float(value)
    elif isinstance(value, datetime):
        t = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FieldError(
                field, f"expected an ISO 8601 time such as 2026-01-15T12:00:00Z, got {value!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        t = parsed.timestamp()
    else:
        raise FieldError(field, f"must be an ISO 8601 time, got {type(value).__name__}")
    if not math.isfinite(t) or t < 0 or t >= _YEAR_10000:
        raise FieldError(field, f"must be a time between 1970 and 9999, got {value!r}")
    return t


_YEAR_10000 = 253_402_300_800.0  # times are written as ISO 8601, which ends at 9999


def need_credit(value: Any, metric: str) -> int:
    """A credit's amount in balance units (nano-USD for ``cost``): a number other than 0,
    within ``±MAX_CREDIT``, rounded to the nearest unit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError("amount", f"must be a number, got {value!r}")
    if not math.isfinite(value) or not -MAX_CREDIT <= value <= MAX_CREDIT:
        raise FieldError("amount", f"must be within ±{MAX_CREDIT:.0f}, got {value!r}")
    units = round(value * (1_000_000_000 if metric == "cost" else 1))
    if units == 0:
        raise FieldError("amount", "must not be 0")
    return units
