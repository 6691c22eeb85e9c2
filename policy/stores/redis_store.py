"""Counters in Redis, shared by every replica: one Lua script call per decision.

Every counter of a decision is read, checked and (all or none) consumed by one
``EVALSHA`` of ``lua/consume.lua``, which also appends the admitted decision's usage event
to the usage stream (``events_redis``); a report is one call of ``lua/report.lua``, which
appends the report's event unless it is a duplicate. Both take the time from Redis
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
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from .. import windows
from ..usage import LedgerEntry, UsageEvent
from . import StoreAddress, parse_store_url
from .base import (
    REPORT_OUTCOMES,
    BalanceSpec,
    BalanceState,
    BalancesUnloaded,
    CounterSpec,
    CounterState,
    ForeignDecision,
    ReportOutcome,
    StoreUnavailable,
)
from .events import DEFAULT_MAX_BACKLOG
from .events_redis import DEFAULT_CLAIM_IDLE, RedisEventStream, stream_key
from .redis_calls import RedisCalls, Script, store_error
from .spending import PreparedBalance, balance_state, chained_state, prepare_balances

if TYPE_CHECKING:
    from .cluster_calls import SlotCalls

__all__ = [
    "RedisCounterStore", "connection_options", "default_retry", "load_script", "redis_client",
]

HOLD_TTL = 3600  # seconds a reservation waits for its report (as in the memory store)
CREDIT_TTL = 30 * 86400  # seconds a credit's idempotency key is kept (the ledger keeps it too)
# which variant of consume.lua and report.lua: with balances (balances.lua) or without
_SPENDING = "local spending = true"
_NOT_SPENDING = "local spending = false"
REPORT_TTL = 86400  # seconds a request_id is remembered for idempotency
DEFAULT_TIMEOUT = 0.1
EVENTS_TIMEOUT = 5.0  # the ingester's connection: reads block on the server up to a second


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


def connection_options(timeout: float, connect_timeout: float | None = None) -> dict[str, Any]:
    """The keywords of every connection to Redis: short socket timeouts, no PING on the
    hot path, RESP2 (the replies ``RedisCalls`` reads raw: flat lists whatever the
    server's version), no handshake."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout if connect_timeout is not None else timeout,
        "health_check_interval": 0,
        "protocol": 2,
        **_NO_HANDSHAKE,
    }


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
    options = connection_options(timeout, connect_timeout)
    options["retry"] = retry if retry is not None else default_retry()
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


def load_lua(name: str) -> str:
    """The source of ``lua/<name>.lua``."""
    return files("tollway.policy.stores").joinpath("lua", f"{name}.lua").read_text()


def load_script(name: str, *parts: str) -> str:
    """The source of ``lua/<name>.lua`` with ``lua/common.lua`` and ``parts`` in front."""
    return "\n".join([load_lua("common"), *parts, load_lua(name)])


class RedisCounterStore:
    """A ``CounterStore`` in Redis: one server, or the master a Sentinel names (the
    ``StoreAddress`` of a ``redis://``, ``rediss://``, ``unix://`` or
    ``redis+sentinel://`` URL).

    ``calls`` and ``events``, when given, replace the client's calls and the usage
    stream (the cluster store gives each of its shards a store of its own this way:
    ``redis_cluster``); ``url`` and ``client`` are then not used.

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
        wall: Callable[[], float] = time.time,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        calls: RedisCalls | SlotCalls | None = None,
        events: RedisEventStream | None = None,
    ) -> None:
        self._client = client
        self._calls: RedisCalls | SlotCalls
        if calls is None:
            self._client = client or redis_client(
                url,
                timeout=timeout,
                connect_timeout=connect_timeout,
                retry=retry,
                max_connections=max_connections,
            )
            calls = RedisCalls(self._client, wall=wall)
        self.timeout = timeout
        self._calls = calls
        self._prefix = key_prefix
        self._hold_ttl = str(int(hold_ttl))
        self._report_ttl = str(int(report_ttl))
        self._honour_now = honour_now
        events_lua = load_lua("events")
        self._consume = Script.of(load_script("consume", events_lua, _NOT_SPENDING))
        self._report = Script.of(load_script("report", events_lua, _NOT_SPENDING))
        self._settle = Script.of(load_script("settle"))
        self._append = Script.of(events_lua + "\n" + load_lua("append"))
        balances_lua = load_lua("balances")
        self._spend = Script.of(load_script("consume", events_lua, balances_lua, _SPENDING))
        self._report_spending = Script.of(
            load_script("report", events_lua, balances_lua, _SPENDING)
        )
        self._balance_load = Script.of(load_lua("balance_load"))
        self._credit = Script.of(events_lua + "\n" + load_lua("credit"))
        self._balance_read = Script.of(load_script("balance_read", balances_lua))
        self._release = Script.of(load_script("release"))
        self.events = events or RedisEventStream(
            redis_client(url, timeout=EVENTS_TIMEOUT),
            stream_key(key_prefix),
            max_backlog=max_backlog,
            claim_idle=claim_idle,
        )

    # ------------------------------------------------------------------ protocol

    def check_and_consume(
        self,
        counters: Sequence[CounterSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        hold_owner: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> list[CounterState]:
        prepared = windows.prepare_counters(self._prefix, counters)
        if not prepared:
            if consume and event is not None:
                self.record_event(event, deadline=deadline)
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
        if consume and event is not None:
            keys.append(self.events.key)
            args += self.events.append_args(event)  # appended by the script if admitted
        calls = self._calls
        sent_at = calls.wall()
        reply = calls.script(self._consume, keys, args, deadline)
        sec, usec = int(reply[0]), int(reply[1])
        calls.observe_time(sent_at, calls.wall(), sec, usec)
        if int(reply[2]) < 0:
            raise StoreUnavailable(
                "redis: answered past the deadline; nothing was written", outcome="not_applied"
            )
        self._appended(reply[3])
        t = now if now is not None and self._honour_now else sec + usec / 1_000_000
        states, at = _counter_states(prepared, reply, t)
        if at != len(reply):
            raise StoreUnavailable(f"redis consume script answered {reply!r}", outcome="unknown")
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
        event: UsageEvent | None = None,
        deadline: float | None = None,
        balances: Sequence[BalanceSpec] = (),
    ) -> ReportOutcome:
        units = {m: windows.amount_units(v, m, f"actual {m}") for m, v in actual.items()}
        checked = windows.prepare_counters(self._prefix, fallback)
        spends = prepare_balances(self._prefix, balances, checked)
        if spends:  # what each metric is in balance units
            units |= {
                f"{m}#b": windows.balance_units(v, m, f"actual {m}") for m, v in actual.items()
            }
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
        script = self._report
        if spends:
            script = self._report_spending
            keys += [b.key for b in spends]
            keys.append(windows.balances_marker_key(self._prefix))
        if event is not None:
            keys.append(self.events.key)
            args += self.events.append_args(event)
        if spends:
            for b in spends:
                args += _balance_args(b)
            ref = windows.report_key("", reporter, request_id)
            args += (hold_id or "", ref, str(len(spends)))
        reply = self._calls.script(script, keys, args, deadline)
        if not isinstance(reply, list) or len(reply) not in (2, 3):
            raise StoreUnavailable(f"redis report script answered {reply!r}", outcome="unknown")
        if len(reply) == 3:  # reserved counters the report did not declare: settled now
            self._settle_parts(json.loads(_text(reply[2])), now, deadline)
        text = _text(reply[0])
        if text == "late":
            raise StoreUnavailable(
                "redis: answered past the deadline; nothing was written", outcome="not_applied"
            )
        if text == "foreign":
            raise ForeignDecision()
        if text == "unloaded":
            raise BalancesUnloaded("redis: the balances are not loaded")
        for known in REPORT_OUTCOMES:
            if text == known:
                self._appended(reply[1])
                return known
        raise StoreUnavailable(f"redis report script answered {text!r}", outcome="unknown")

    def _settle_parts(self, parts: list[list[Any]], now: float | None, deadline: float) -> None:
        """Settle the parts of a reservation whose counters the report script could not
        touch (they were not among its keys: the rules changed since the decision, say),
        in a second call that declares them. The report is recorded already: if this call
        fails, those parts stay reserved until their buckets leave the window."""
        keys = [str(key) for key, _, _, _ in parts]
        args = [self._clock_arg(now, deadline)]
        for _, field, delta, finish in parts:
            args += (str(field), str(delta), str(finish))
        reply = self._calls.script(self._settle, keys, args, deadline)
        if _text(reply) == "late":
            raise StoreUnavailable(
                "redis: answered past the deadline; part of a settled reservation stays "
                "reserved", outcome="unknown",
            )

    # ------------------------------------------------------------------ balances

    def check_and_spend(
        self,
        counters: Sequence[CounterSpec],
        balances: Sequence[BalanceSpec],
        *,
        consume: bool,
        hold_id: str | None = None,
        hold_owner: str = "*",
        now: float | None = None,
        event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> tuple[list[CounterState], list[BalanceState]]:
        if not balances:
            return self.check_and_consume(
                counters, consume=consume, hold_id=hold_id, hold_owner=hold_owner, now=now,
                event=event, deadline=deadline,
            ), []
        prepared = windows.prepare_counters(self._prefix, counters)
        spends = prepare_balances(self._prefix, balances, prepared)
        deadline = self._deadline(deadline)
        hold = consume and hold_id is not None
        keys = [c.key for c in prepared]
        if hold:
            assert hold_id is not None
            keys.append(windows.hold_key(self._prefix, hold_id))
        keys += [b.key for b in spends]
        keys.append(windows.balances_marker_key(self._prefix))
        args: list[str] = [
            self._clock_arg(now, deadline),
            "1" if consume else "0",
            self._hold_ttl if hold else "0",
            hold_owner,
        ]
        for spec, _, amount, limit in prepared:
            window = spec.window
            args += (window.code, str(window.bucket), str(limit), str(amount), spec.metric)
        if consume and event is not None:
            keys.append(self.events.key)
            args += self.events.append_args(event)
        for b in spends:
            args += _balance_args(b)
        args += (hold_id if hold and hold_id is not None else "", str(len(spends)))
        calls = self._calls
        reply = calls.script(self._spend, keys, args, deadline)
        sec, usec = int(reply[0]), int(reply[1])
        admitted = int(reply[2])
        if admitted == -1:
            raise StoreUnavailable(
                "redis: answered past the deadline; nothing was written", outcome="not_applied"
            )
        if admitted == -2:
            raise BalancesUnloaded("redis: the balances are not loaded")
        self._appended(reply[3])
        t = now if now is not None and self._honour_now else sec + usec / 1_000_000
        states, at = _counter_states(prepared, reply, t)
        if at + 4 * len(spends) != len(reply):
            raise StoreUnavailable(f"redis consume script answered {reply!r}", outcome="unknown")
        raws = [reply[at + 4 * j:at + 4 * j + 4] for j in range(len(spends))]
        for b, raw in zip(spends, raws, strict=True):
            if b.after >= 0:
                states[b.after] = chained_state(states[b.after], int(raw[3]) == 0)
        taken = consume and admitted == 1
        return states, [
            balance_state(b, (int(raw[0]), int(raw[1])), int(raw[2]), taken, int(raw[3]) == 0)
            for b, raw in zip(spends, raws, strict=True)
        ]

    def load_balances(self, totals: Mapping[tuple[str, str], int]) -> bool:
        keys = [windows.balances_marker_key(self._prefix)]
        args: list[str] = []
        for (name, key), units in totals.items():
            keys.append(windows.balance_key(self._prefix, name, key))
            args.append(str(units))
        reply = self._calls.script(self._balance_load, keys, args, self._deadline(None))
        return int(reply) == 1

    def credit(
        self, entry: LedgerEntry, metric: str, *, event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> bool:
        keys = [
            windows.balance_key(self._prefix, entry.balance, entry.key),
            f"{self._prefix}c:{entry.balance}:{entry.key}:{entry.ref}",
            windows.balances_marker_key(self._prefix),
        ]
        args = [str(entry.amount), str(CREDIT_TTL)]
        if event is not None:
            keys.append(self.events.key)
            args += self.events.append_args(event)
        reply = int(self._calls.script(self._credit, keys, args, self._deadline(deadline)))
        if reply < 0:
            raise BalancesUnloaded("redis: the balances are not loaded")
        return reply == 1

    def balance(self, balance: str, key: str) -> tuple[int, int]:
        keys = [
            windows.balance_key(self._prefix, balance, key),
            windows.balances_marker_key(self._prefix),
        ]
        reply = self._calls.script(self._balance_read, keys, [], self._deadline(None))
        if int(reply[0]) == 0:
            raise BalancesUnloaded("redis: the balances are not loaded")
        return int(reply[1]), int(reply[2])

    def record_event(self, event: UsageEvent, *, deadline: float | None = None) -> None:
        status = self._calls.script(
            self._append, [self.events.key], self.events.append_args(event),
            self._deadline(deadline),
        )
        self._appended(status)

    def release(
        self,
        hold_id: str,
        counters: Sequence[CounterSpec],
        *,
        now: float | None = None,
        deadline: float | None = None,
    ) -> bool:
        """Take back what the decision ``hold_id`` reserved in ``counters``
        (``lua/release.lua``): the cluster store's rollback of a decision another shard
        refused. False when nothing was reserved; raises ``StoreUnavailable``."""
        deadline = self._deadline(deadline)
        keys = [windows.hold_key(self._prefix, hold_id)]
        keys += [windows.counter_key(self._prefix, c.quota, c.key) for c in counters]
        reply = self._calls.script(self._release, keys, [self._clock_arg(now, deadline)],
                                   deadline)
        if _text(reply) == "late":
            raise StoreUnavailable(
                "redis: answered past the deadline; nothing was released", outcome="not_applied"
            )
        return int(reply) == 1

    def ping(self) -> bool:
        """Whether Redis answers now (``/readyz``); raises ``StoreUnavailable`` (or
        ``StoreRejected`` for refused credentials) when not."""
        assert self._client is not None, "a shard's store is pinged through its cluster"
        try:
            return bool(self._client.ping())
        except (RedisError, OSError) as exc:
            raise store_error(exc) from exc

    def entries(self) -> dict[str, int]:
        return {}  # everything lives in Redis: watch Redis's own memory metrics

    def evictions(self) -> dict[str, int]:
        return {}  # reservations and request_ids are keys with a TTL: no cap to evict at

    def close(self) -> None:
        if isinstance(self._calls, RedisCalls):
            self._calls.close()  # its idle connections back to the pool, closed just after
        if self._client is not None:
            self._client.close()
        self.events.close()

    # ------------------------------------------------------------------ internals

    def _appended(self, status: Any) -> None:
        """Count an event the script could not append (the stream was full)."""
        if int(status) < 0:
            self.events.count_dropped()

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.timeout if deadline is None else deadline

    def _clock_arg(self, now: float | None, deadline: float) -> str:
        """The scripts' clock: the test-only override, or Redis TIME with the deadline."""
        if now is not None and self._honour_now:
            return str(math.floor(now))
        return self._calls.redis_deadline(deadline)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _balance_args(b: PreparedBalance) -> tuple[str, ...]:
    """The 6 values of one balance in the spending scripts (``balance_args``)."""
    spec = b.spec
    return (str(b.amount), str(b.after + 1), str(b.ratio), spec.balance, spec.key, spec.metric)



def _counter_states(
    prepared: Sequence[windows.Checked], reply: Any, t: float
) -> tuple[list[CounterState], int]:
    """The counters' states from a consume script's flat reply, and where they end."""
    state = windows.counter_state
    states = []
    at = 4
    for spec, _, amount, limit in prepared:
        # the script sends the counted total and the live buckets the state needs
        # (all of them when the amount does not fit, else the oldest one)
        used, live = reply[at], reply[at + 1]
        fields = {reply[j]: reply[j + 1] for j in range(at + 2, at + 2 + 2 * live, 2)}
        at += 2 + 2 * live
        states.append(state(spec, t, fields, amount, limit, used=used, clean=True))
    return states, at
