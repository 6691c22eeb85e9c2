"""Usage aggregates, recent reports and the activity log in Redis, shared by every replica.

Writing is Lua (``lua/usage.lua``) so that it runs inside the counter store's scripts,
in the same round trip and atomic step: the report script after its ``request_id``
check (``usage_args`` builds the ARGV slice of ``usage_apply``), and the consume script
once a decision is admitted (``request_args`` for ``usage_request``, which counts the
request). ``USAGE_LUA`` is the snippet to concatenate. ``RedisUsage.apply`` and
``RedisUsage.count_request`` run the same code on their own (``lua/usage_apply.lua``,
``lua/usage_request.lua``).

Reading:
- ``get``: one pipelined round trip (the entity's hash and its recent list).
- ``list`` without ``search``/``start``/``end``: ZCARD + ZRANGE on the sort field's
  sorted set, then the page's hashes: O(log n + page), two round trips.
- ``list`` with filters: ``lua/usage_list.lua`` walks the sort index in order inside
  Redis, O(n) in the entities of the kind (tens of ms per 100,000), one round trip.
- ``activity``: XREVRANGE in chunks of 500, newest first, filtered here.

The activity log is a stream rather than a sorted set: entries are stored compactly in
listpacks (a sorted set keeps a skiplist node and a dict entry per event), IDs are the
event's milliseconds so ``start``/``end`` are ID ranges, and ``XADD … MAXLEN`` plus
``XTRIM … MINID`` trim by count and by age in the same script. Requires Redis >= 7.0
(``<ms>-*`` IDs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any, cast

import redis

from ..usage import (
    ActivityQuery,
    EntityKind,
    RequestSeen,
    Retention,
    Totals,
    UsageDetail,
    UsageEvent,
    UsagePage,
    UsageQuery,
    cost_units,
    duration_units,
    fold,
    time_units,
)
from .base import StoreUnavailable

__all__ = [
    "USAGE_LUA",
    "USAGE_ARGC",
    "REQUEST_ARGC",
    "RedisUsage",
    "usage_args",
    "request_args",
    "entity_key",
    "index_key",
]


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua", name).read_text(encoding="utf-8")


USAGE_LUA: str = _lua("usage.lua")
USAGE_ARGC = 14
REQUEST_ARGC = 5
_APPLY_LUA = USAGE_LUA + "\n" + _lua("usage_apply.lua")
_REQUEST_LUA = USAGE_LUA + "\n" + _lua("usage_request.lua")
_LIST_LUA = _lua("usage_list.lua")
_ACTIVITY_CHUNK = 500
# An event from a replica whose clock is behind is filed after the newest entry, so its
# ID may be later than its time by the clock skew; ``end`` reads this far past it.
MAX_CLOCK_SKEW = 300.0


def entity_key(prefix: str, kind: EntityKind, ident: str) -> str:
    return f"{prefix}usage:{kind}:{ident}"


def recent_key(prefix: str, kind: EntityKind, ident: str) -> str:
    return f"{prefix}usage:recent:{kind}:{ident}"


def index_key(prefix: str, kind: EntityKind, sort_field: str) -> str:
    return f"{prefix}usage:{kind}s:by:{sort_field}"


def activity_key(prefix: str) -> str:
    return f"{prefix}usage:activity"


def usage_args(prefix: str, event: UsageEvent, retention: Retention) -> list[str]:
    """The ``USAGE_ARGC`` ARGV values of ``usage_apply`` (see ``lua/usage.lua``)."""
    return [
        prefix,
        event.user_id,
        event.group_id,
        event.model,
        str(time_units(event.time)),
        "1" if event.counts_request else "0",
        str(event.input_tokens),
        str(event.output_tokens),
        str(cost_units(event.cost_usd)),
        str(duration_units(event.duration_seconds)),
        event.to_json(),
        str(retention.recent_reports),
        str(retention.max_reports),
        str(math.ceil(retention.max_age_seconds * 1000)),
    ]


def request_args(prefix: str, seen: RequestSeen) -> list[str]:
    """The ``REQUEST_ARGC`` ARGV values of ``usage_request`` (see ``lua/usage.lua``)."""
    return [prefix, seen.user_id, seen.group_id, seen.model, str(time_units(seen.time))]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _totals(fields: dict[Any, Any]) -> Totals:
    """An entity's hash as ``Totals``; model fields are ``m:{model}:{n|tokens|cost}``."""
    totals = Totals()
    for raw_name, raw_value in fields.items():
        name, value = _text(raw_name), int(raw_value)
        if name.startswith("m:"):
            model, _, what = name[2:].rpartition(":")
            slot = totals.models.setdefault(model, [0, 0, 0])
            slot[("n", "tokens", "cost").index(what)] = value
        elif name == "cost":
            totals.cost_nusd = value
        elif name == "duration":
            totals.duration_us = value
        elif name in ("request_count", "input_tokens", "output_tokens"):
            setattr(totals, name, value)
        elif name == "first_seen":
            totals.first_seen_us = value
        elif name == "last_seen":
            totals.last_seen_us = value
    return totals


_Rows = list[dict[Any, Any]]  # HGETALL replies (``list`` is a method name in the class)
_Entries = list[tuple[Any, dict[Any, Any]]]  # XREVRANGE replies


class RedisUsage:
    """``UsageReader`` over a Redis client, and a ``UsageWriter`` for standalone use.

    Redis errors surface as ``StoreUnavailable``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "tollway:",
        retention: Retention | None = None,
    ) -> None:
        self._redis = client
        self.prefix = key_prefix
        self.retention = retention or Retention()
        self._apply = client.register_script(_APPLY_LUA)
        self._request = client.register_script(_REQUEST_LUA)
        self._list = client.register_script(_LIST_LUA)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisUsage:
        return cls(redis.Redis.from_url(url), **options)

    def close(self) -> None:
        self._redis.close()

    # ------------------------------------------------------------------ writer

    def apply(self, event: UsageEvent) -> None:
        try:
            self._apply(keys=[], args=usage_args(self.prefix, event, self.retention))
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def count_request(self, seen: RequestSeen) -> None:
        try:
            self._request(keys=[], args=request_args(self.prefix, seen))
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    # ------------------------------------------------------------------ reader

    def get(self, kind: EntityKind, ident: str) -> UsageDetail | None:
        entity = kind
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(entity_key(self.prefix, entity, ident))
            pipe.lrange(recent_key(self.prefix, entity, ident), 0, -1)
            fields, recent = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not fields:
            return None
        events = tuple(UsageEvent.from_json(e) for e in recent)
        return _totals(fields).detail(entity, ident, events)

    def list(self, query: UsageQuery) -> UsagePage:
        kind = query.entity_kind
        index = index_key(self.prefix, kind, query.sort_field)
        if query.empty_span:
            return UsagePage.build(query, (), 0)
        try:
            if query.filtered:
                count, raw_ids = self._list(
                    keys=[
                        index,
                        index_key(self.prefix, kind, "first_seen"),
                        index_key(self.prefix, kind, "last_seen"),
                    ],
                    args=[
                        "1" if query.descending else "0",
                        fold(query.search),
                        "" if query.start is None else str(time_units(query.start)),
                        "" if query.end is None else str(time_units(query.end)),
                        str(query.offset),
                        str(query.limit),
                    ],
                )
            else:
                pipe = self._redis.pipeline(transaction=True)
                pipe.zcard(index)
                last = query.offset + query.limit - 1
                if query.descending:
                    pipe.zrevrange(index, query.offset, last)
                else:
                    pipe.zrange(index, query.offset, last)
                count, raw_ids = pipe.execute()
            ids = [_text(i) for i in raw_ids]
            rows = self._hashes(kind, ids)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        results = tuple(_totals(f).record(kind, i) for i, f in zip(ids, rows, strict=True) if f)
        return UsagePage.build(query, results, int(count))

    def _hashes(self, kind: EntityKind, ids: Sequence[str]) -> _Rows:
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for ident in ids:
            pipe.hgetall(entity_key(self.prefix, kind, ident))
        return list(pipe.execute())

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]:
        # Validate the connection eagerly would cost a round trip; errors surface on
        # iteration as StoreUnavailable instead.
        return self._activity(query)

    def _activity(self, query: ActivityQuery) -> Iterator[UsageEvent]:
        key = activity_key(self.prefix)
        # IDs are the event's milliseconds (or later, when filed after a newer entry), so
        # these bounds are loose on purpose; each event's own time is checked exactly.
        upper = (
            "+" if query.end is None else str(time_units(query.end + MAX_CLOCK_SKEW) // 1000)
        )
        lower = "-" if query.start is None else str(time_units(query.start) // 1000)
        # cheap test on the raw JSON before parsing: our writer's exact encoding of each
        # wanted field (``UsageEvent.to_json``); the parsed event is still checked exactly
        needles = [
            json.dumps({name: value}, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
            for name, value in (
                ("user_id", query.user), ("group_id", query.group), ("model", query.model)
            )
            if value
        ]
        left = query.limit
        while left is None or left > 0:
            try:
                chunk = cast(
                    _Entries, self._redis.xrevrange(key, upper, lower, count=_ACTIVITY_CHUNK)
                )
            except redis.RedisError as exc:
                raise StoreUnavailable(str(exc)) from exc
            for entry_id, fields in chunk:
                upper = "(" + _text(entry_id)
                raw = fields.get(b"e") or fields["e"]
                raw = raw.encode() if isinstance(raw, str) else raw
                if not all(n in raw for n in needles):
                    continue
                event = UsageEvent.from_json(raw)
                if query.matches(event):
                    yield event
                    if left is not None:
                        left -= 1
                        if left <= 0:
                            return
            if len(chunk) < _ACTIVITY_CHUNK:
                return
