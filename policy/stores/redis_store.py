"""Counters in Redis, shared by every replica: one Lua script call per decision.

Every counter of a decision is read, checked and (all or none) consumed by one
``EVALSHA`` of ``lua/consume.lua``, which also counts the admitted request in the usage
aggregates; a report is one call of ``lua/report.lua``. Both take the time from Redis
``TIME`` so that replicas with skewed clocks still agree on windows and periods. A Redis
that lost its script cache costs one ``SCRIPT LOAD``, not an error.

Every script call has a deadline (``RedisCalls``): the caller waits for its answer only
until then, and the script itself writes nothing once Redis's clock is past it, so a
script queued behind a stall cannot apply after its caller gave up. The timeout is short
(100 ms by default) so that a dead or stalled Redis turns into ``StoreUnavailable``
quickly and the engine can apply ``on_store_error``. Script calls are never retried
(running one twice could consume twice); a connection the server closed is replaced
before a command is sent on it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from .. import windows
from ..usage import RequestSeen, Retention, UsageEvent
from . import StoreAddress, parse_store_url
from .base import (
    REPORT_OUTCOMES,
    CounterSpec,
    CounterState,
    ForeignDecision,
    ReportOutcome,
    StoreUnavailable,
)
from .redis_calls import RedisCalls, Script, store_error
from .usage_redis import USAGE_LUA, RedisUsage, request_args, usage_args

__all__ = ["RedisCounterStore", "default_retry", "load_script", "redis_client"]

HOLD_TTL = 3600  # seconds a reservation waits for its report (as in the memory store)
REPORT_TTL = 86400  # seconds a request_id is remembered for idempotency
DEFAULT_TIMEOUT = 0.1


def default_retry() -> Retry:
    """One immediate retry on a broken connection, none on a timeout.

    A connection the server closed (Redis restarted) fails on first use; retrying at
    once on a fresh connection makes recovery invisible. A timeout is never retried: the
    script may have run, and running it twice would consume twice.
    """
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


# A new connection sends nothing before the first command (no CLIENT SETINFO), so opening
# one to a stalled server waits for nothing: the keyword depends on redis-py's version.
_NO_HANDSHAKE: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def redis_client(
    address: StoreAddress | str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float | None = None,
    retry: Retry | None = None,
    max_connections: int | None = None,
) -> redis.Redis:
    """A client with short socket timeouts; the pool reconnects by itself after an outage.

    For a Sentinel address the client's pool asks the sentinels for the master each time
    it opens a connection, so after a failover new connections go to the new master.
    """
    if isinstance(address, str):
        address = parse_store_url(address)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout if connect_timeout is not None else timeout,
        "retry": retry if retry is not None else default_retry(),
        "health_check_interval": 0,  # no PING on the hot path
        "protocol": 2,  # the replies RedisCalls reads raw: flat lists whatever the version
        **_NO_HANDSHAKE,
    }
    if address.kind == "sentinel":
        sentinels = Sentinel(
            list(address.nodes),
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": options["socket_connect_timeout"],
            },
        )
        return sentinels.master_for(
            address.service, db=address.db, username=address.username,
            password=address.password, max_connections=max_connections, **options,
        )
    if address.password is not None:  # given apart from the URL (``with_password``)
        options["password"] = address.password
    return redis.Redis.from_url(address.url, max_connections=max_connections, **options)


def load_script(name: str, *parts: str) -> str:
    """The source of ``lua/<name>.lua`` with ``lua/common.lua`` and ``parts`` in front."""
    lua = files("tollway.policy.stores").joinpath("lua")
    head = [lua.joinpath("common.lua").read_text(), *parts]
    return "\n".join([*head, lua.joinpath(f"{name}.lua").read_text()])


class RedisCounterStore:
    """A ``CounterStore`` in Redis: one server, or the master a Sentinel names (the
    ``StoreAddress`` of a ``redis://``, ``rediss://``, ``unix://`` or
    ``redis+sentinel://`` URL).

    ``honour_now``: pass ``now=`` through to the scripts instead of using Redis TIME. For
    tests only (they cannot move Redis's clock); a deployment must leave it off so that
    replicas agree on one clock. ``wall``: this host's unix time, against which the
    offset of Redis's clock is measured (tests skew it). ``timeout``: the budget of one
    call's store work when the caller gives no deadline.
    """

    name = "redis"
    blocking = True

    def __init__(
        self,
        url: StoreAddress | str,
        *,
        key_prefix: str = "tollway:",
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        retry: Retry | None = None,
        max_connections: int | None = None,
        hold_ttl: int = HOLD_TTL,
        report_ttl: int = REPORT_TTL,
        honour_now: bool = False,
        client: redis.Redis | None = None,
        retention: Retention | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._client = client or redis_client(
            url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retry=retry,
            max_connections=max_connections,
        )
        self.timeout = timeout
        self._calls = RedisCalls(self._client, wall=wall)
        self._prefix = key_prefix
        self._hold_ttl = str(int(hold_ttl))
        self._report_ttl = str(int(report_ttl))
        self._honour_now = honour_now
        self._consume = Script.of(load_script("consume", USAGE_LUA))
        self._report = Script.of(load_script("report", USAGE_LUA))
        self.retention = retention or Retention()
        self.usage = RedisUsage(self._client, key_prefix=key_prefix, retention=self.retention)

    # ------------------------------------------------------------------ protocol

    def check_and_consume(
        self,
        counters: Sequence[CounterSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        hold_owner: str = "*",
        now: float | None = None,
        seen: RequestSeen | None = None,
        deadline: float | None = None,
    ) -> list[CounterState]:
        prepared = windows.prepare_counters(self._prefix, counters)
        if not prepared:
            if consume and seen is not None:
                self.record_request(seen, deadline=deadline)
            return []
        deadline = self._deadline(deadline)
        keys = [c.key for c in prepared]
        hold = consume and hold_id is not None
        if hold:
            assert hold_id is not None
            keys.append(windows.hold_key(self._prefix, hold_id))
        args: list[str] = [
            self._clock_arg(now, deadline),
            "1" if consume else "0",
            self._hold_ttl if hold else "0",
            hold_owner,
        ]
        for spec, _, amount, limit in prepared:
            window = spec.window
            args += (window.code, str(window.bucket), str(limit), str(amount), spec.metric)
        if consume and seen is not None:
            args += request_args(self._prefix, seen)  # counted by the script if admitted
        calls = self._calls
        sent_at = calls.wall()
        reply = calls.script(self._consume, keys, args, deadline)
        sec, usec = int(reply[0]), int(reply[1])
        calls.observe_time(sent_at, calls.wall(), sec, usec)
        if int(reply[2]) < 0:
            raise StoreUnavailable(
                "redis: answered past the deadline; nothing was written", outcome="not_applied"
            )
        t = now if now is not None and self._honour_now else sec + usec / 1_000_000
        state = windows.counter_state
        states = []
        for (spec, _, amount, limit), raw in zip(prepared, reply[3:], strict=True):
            # the script sends the counted total and the live buckets the state needs
            # (all of them when the amount does not fit, else the oldest one)
            fields: dict[int | str, int] = {
                int(raw[i]): int(raw[i + 1]) for i in range(1, len(raw), 2)
            }
            states.append(state(spec, t, fields, amount, limit, used=int(raw[0]), clean=True))
        return states

    def record_report(
        self,
        request_id: str,
        hold_id: str | None,
        actual: Mapping[str, float],
        fallback: Sequence[CounterSpec],
        *,
        owner: str = "*",
        reporter: str = "*",
        now: float | None = None,
        usage: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> ReportOutcome:
        units = {m: windows.amount_units(v, m, f"actual {m}") for m, v in actual.items()}
        checked = windows.prepare_counters(self._prefix, fallback)
        deadline = self._deadline(deadline)
        keys = [windows.report_key(self._prefix, reporter, request_id)]
        if hold_id is not None:
            keys.append(windows.hold_key(self._prefix, hold_id))
        keys += [c.key for c in checked]
        args = [
            self._clock_arg(now, deadline),
            self._report_ttl,
            owner if hold_id is not None else "",
            str(len(units)),
        ]
        for metric, value in units.items():
            args += (metric, str(value))
        for c in checked:
            args += (c.spec.window.code, str(c.spec.window.bucket), str(c.amount))
        if usage is not None:
            args += usage_args(self._prefix, usage, self.retention)
        reply = self._calls.script(self._report, keys, args, deadline)
        text = _text(reply[0] if isinstance(reply, list) else reply)
        if text == "late":
            raise StoreUnavailable(
                "redis: answered past the deadline; nothing was written", outcome="not_applied"
            )
        if text == "foreign":
            raise ForeignDecision()
        for known in REPORT_OUTCOMES:
            if text == known:
                return known
        raise StoreUnavailable(f"redis report script answered {text!r}", outcome="unknown")

    def record_request(self, seen: RequestSeen, *, deadline: float | None = None) -> None:
        if deadline is not None and deadline <= time.monotonic():
            raise StoreUnavailable("redis: no time left for the call", outcome="not_applied")
        self.usage.count_request(seen)

    def ping(self) -> bool:
        """Whether Redis answers now (``/readyz``); raises ``StoreUnavailable`` (or
        ``StoreRejected`` for refused credentials) when not."""
        try:
            return bool(self._client.ping())
        except (RedisError, OSError) as exc:
            raise store_error(exc) from exc

    def entries(self) -> dict[str, int]:
        return {}  # everything lives in Redis: watch Redis's own memory metrics

    def evictions(self) -> dict[str, int]:
        return {}  # reservations and request_ids are keys with a TTL: no cap to evict at

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ internals

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.timeout if deadline is None else deadline

    def _clock_arg(self, now: float | None, deadline: float) -> str:
        """The scripts' clock: the test-only override, or Redis TIME with the deadline."""
        if now is not None and self._honour_now:
            return str(math.floor(now))
        return self._calls.redis_deadline(deadline)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
