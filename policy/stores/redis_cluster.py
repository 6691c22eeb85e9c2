"""Counters on a Redis Cluster: one script per shard, all or nothing across shards.

Every key lives under the hash tag of its shard (``cluster_tags``): a counter in the
shard of its scope key, next to that shard's reservation records, report markers and
usage stream. Each shard is served by a ``RedisCounterStore`` of its own whose key
prefix carries the tag (``{prefix}{<tag>}``) and whose calls go to the master of the
tag's slot (``cluster_calls``): within a shard everything is exactly as on one Redis,
one script call that reads, checks and consumes, appends the usage event and returns
Redis ``TIME``.

A decision whose counters fall in several shards is made in two steps:

1. *reserve*: each shard's script runs at once (one call per shard, in parallel), and
   consumes its counters if they all fit there, keeping a reservation record
   (``{prefix}{<tag>}h:{decision_id}``: which bucket got how much);
2. if every shard admitted, the decision is admitted and its usage event is appended
   to the stream of its first shard (the *commit*: one more call, made in the store's
   pool while the decision goes back to the caller); otherwise each shard
   that consumed, or whose answer never came, runs ``lua/release.lua``, which takes the
   reserved amounts back out of the buckets they went into (the *rollback*).

A counter is never over its limit in any shard at any moment, so no interleaving of
decisions admits more than a limit. What a decision reserved and then released counted
against its quotas in between: a concurrent decision may have been refused because of
it (docs/internals.md says for how long). A report is applied shard by shard, each
with its own marker (``{prefix}{<tag>}r:…``), so a retry completes the shards a failed
report missed and counts the others once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, cast

import redis
from redis.cluster import RedisCluster

from .. import windows
from ..usage import LedgerEntry, UsageEvent
from . import StoreAddress
from .base import (
    BalanceSpec,
    BalanceState,
    CounterSpec,
    CounterState,
    ForeignDecision,
    ReportOutcome,
    StoreUnavailable,
)
from .cluster_calls import ClusterCalls
from .cluster_tags import SHARDS, TAGS, check_prefix, shard_of, tagged_prefix
from .events import DEFAULT_MAX_BACKLOG
from .events_cluster import ShardedEventStream
from .events_redis import DEFAULT_CLAIM_IDLE, RedisEventStream, stream_key
from .redis_calls import store_error
from .redis_store import (
    DEFAULT_TIMEOUT,
    EVENTS_TIMEOUT,
    HOLD_TTL,
    REPORT_TTL,
    RedisCounterStore,
    connection_options,
)

__all__ = ["RedisClusterCounterStore", "cluster_calls"]

log = logging.getLogger("tollway.store")

T = TypeVar("T")


def cluster_calls(
    address: StoreAddress, *, timeout: float, connect_timeout: float | None = None,
    wall: Callable[[], float] = time.time,
) -> ClusterCalls:
    """Calls on the cluster at ``address`` with the store's connection options."""
    return ClusterCalls(address, connection_options(timeout, connect_timeout), wall=wall)


class _LazyCluster:
    """The redis-py cluster client of a ``ClusterCalls``, connected on first use (the
    usage streams' reads go through it)."""

    def __init__(self, calls: ClusterCalls) -> None:
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._calls.client(), name)

    def close(self) -> None:
        self._calls.close()


class RedisClusterCounterStore:
    """A ``CounterStore`` on a Redis Cluster (a ``redis+cluster://`` URL's address).

    The keywords are those of ``RedisCounterStore``. ``parallel``: how many shard calls
    may be under way at once beyond their callers' own threads (as many as the servers'
    engine threads, so that every decision in flight can have its other shards' calls
    under way).
    """

    name = "redis"
    blocking = True

    def __init__(
        self,
        address: StoreAddress,
        *,
        key_prefix: str = "tollway:",
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        hold_ttl: int = HOLD_TTL,
        report_ttl: int = REPORT_TTL,
        honour_now: bool = False,
        wall: Callable[[], float] = time.time,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        parallel: int = 32,
    ) -> None:
        self._prefix = check_prefix(key_prefix)
        self.timeout = timeout
        self._calls = cluster_calls(address, timeout=timeout, connect_timeout=connect_timeout,
                                    wall=wall)
        self._events_calls = cluster_calls(address, timeout=EVENTS_TIMEOUT)
        reader = cast(redis.Redis, _LazyCluster(self._events_calls))
        streams = [
            RedisEventStream(
                reader, stream_key(tagged_prefix(key_prefix, tag)),
                max_backlog=max_backlog, claim_idle=claim_idle,
            )
            for tag in TAGS
        ]
        self.events = ShardedEventStream(streams)
        self._shards = [
            RedisCounterStore(
                address, key_prefix=tagged_prefix(key_prefix, tag), timeout=timeout,
                hold_ttl=hold_ttl, report_ttl=report_ttl, honour_now=honour_now,
                calls=self._calls.at(tagged_prefix(key_prefix, tag)), events=stream,
            )
            for tag, stream in zip(TAGS, streams, strict=True)
        ]
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="tollway-cluster")

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
        parts = _by_shard(counters)
        if len(parts) <= 1:  # the shard's store checks the input
            shard = next(iter(parts), shard_of(hold_owner))
            return self._shards[shard].check_and_consume(
                counters, consume=consume, hold_id=hold_id, hold_owner=hold_owner, now=now,
                event=event, deadline=deadline,
            )
        windows.prepare_counters(self._prefix, counters)  # all valid before any shard runs
        deadline = self._deadline(deadline)
        if consume and hold_id is None:  # the record a rollback reads
            hold_id = "x" + uuid.uuid4().hex
        shards = list(parts)
        results = self._each(
            shards,
            lambda shard: self._shards[shard].check_and_consume(
                parts[shard], consume=consume, hold_id=hold_id, hold_owner=hold_owner,
                now=now, deadline=deadline,
            ),
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for r in failed:
            if not isinstance(r, StoreUnavailable):
                raise r  # a script error: raised before its first write, as on one Redis
        states = {
            shard: r for shard, r in zip(shards, results, strict=True)
            if not isinstance(r, BaseException)
        }
        admitted = not failed and not any(s.exceeded for got in states.values() for s in got)
        if consume and not admitted:
            assert hold_id is not None
            reserved = [  # shards that consumed, or may have
                s for s, r in zip(shards, results, strict=True)
                if (isinstance(r, StoreUnavailable) and r.outcome == "unknown")
                or (s in states and not any(x.exceeded for x in states[s]))
            ]
            taken_back = self._roll_back(reserved, hold_id, parts, now)
            if failed:
                exc = cast(StoreUnavailable, failed[0])
                if taken_back:
                    raise StoreUnavailable(
                        f"{exc}; what other shards reserved was released",
                        outcome="not_applied",
                    ) from exc
                raise StoreUnavailable(
                    f"{exc}; a reservation in another shard may count until its window "
                    "passes", outcome="unknown",
                ) from exc
        elif failed:
            raise failed[0]
        if consume and admitted and event is not None:
            self.events.expect_one()
            self._pool.submit(self._commit_event, shards[0], event)
        out: list[CounterState] = []
        index = {shard: 0 for shard in shards}
        for spec in counters:
            shard = shard_of(spec.key)
            out.append(states[shard][index[shard]])
            index[shard] += 1
        return out

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
        parts = _by_shard(fallback)
        if len(parts) <= 1:  # the shard's store checks the input
            shard = next(iter(parts), shard_of(owner))
            return self._shards[shard].record_report(
                request_id, hold_id, actual, fallback, owner=owner, reporter=reporter,
                now=now, event=event, deadline=deadline,
            )
        for m, v in actual.items():  # all valid before any shard runs
            windows.amount_units(v, m, f"actual {m}")
        windows.prepare_counters(self._prefix, fallback)
        deadline = self._deadline(deadline)
        shards = list(parts)
        results = self._each(
            shards,
            lambda shard: self._shards[shard].record_report(
                request_id, hold_id, actual, parts[shard], owner=owner, reporter=reporter,
                now=now, event=event if shard == shards[0] else None, deadline=deadline,
            ),
        )
        for r in results:
            if isinstance(r, ForeignDecision | ValueError):
                raise r
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, StoreUnavailable):
                    raise StoreUnavailable(
                        f"{r} (a retry with the same request_id completes the report)",
                        outcome="unknown",
                    ) from r
                raise r
        outcomes = [cast(ReportOutcome, r) for r in results]
        if all(o == "duplicate" for o in outcomes):
            return "duplicate"
        return "settled" if "settled" in outcomes else "added"

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
        if balances:
            raise StoreUnavailable("redis cluster: balances need one Redis (or Sentinel) store")
        return self.check_and_consume(
            counters, consume=consume, hold_id=hold_id, hold_owner=hold_owner, now=now,
            event=event, deadline=deadline,
        ), []

    def load_balances(self, totals: Mapping[tuple[str, str], int]) -> bool:
        raise StoreUnavailable("redis cluster: balances need one Redis (or Sentinel) store")

    def credit(
        self, entry: LedgerEntry, metric: str, *, event: UsageEvent | None = None,
        deadline: float | None = None,
    ) -> bool:
        raise StoreUnavailable("redis cluster: balances need one Redis (or Sentinel) store")

    def balance(self, balance: str, key: str) -> tuple[int, int]:
        raise StoreUnavailable("redis cluster: balances need one Redis (or Sentinel) store")

    def record_event(self, event: UsageEvent, *, deadline: float | None = None) -> None:
        self._shards[shard_of(event.request_id or "")].record_event(event, deadline=deadline)

    def ping(self) -> bool:
        """Whether every master answers now (``/readyz``)."""
        try:
            return bool(self._calls.client().ping(target_nodes=RedisCluster.PRIMARIES))
        except (redis.RedisError, OSError) as exc:
            self._calls.refresh()
            raise store_error(exc) from exc

    def entries(self) -> dict[str, int]:
        return {}

    def evictions(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # the events being committed are appended first
        self.events.close()
        self._calls.close()
        self._events_calls.close()

    # ------------------------------------------------------------------ internals

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.timeout if deadline is None else deadline

    def _each(self, shards: Sequence[int], work: Callable[[int], T]) -> list[T | BaseException]:
        """``work(shard)`` for every shard at once: the first in this thread, the others
        in the pool. Each result, or the exception it raised."""
        futures: list[Future[T]] = [self._pool.submit(work, s) for s in shards[1:]]
        results: list[T | BaseException] = []
        try:
            results.append(work(shards[0]))
        except Exception as exc:
            results.append(exc)
        for f in futures:
            try:
                results.append(f.result())
            except Exception as exc:
                results.append(exc)
        return results

    def _roll_back(
        self, shards: Sequence[int], hold_id: str, parts: Mapping[int, Sequence[CounterSpec]],
        now: float | None,
    ) -> bool:
        """Release what ``hold_id`` reserved in ``shards`` (a fresh budget: the decision's
        may be spent); whether every release answered."""
        if not shards:
            return True
        deadline = time.monotonic() + self.timeout

        results = self._each(
            shards,
            lambda shard: self._shards[shard].release(
                hold_id, parts[shard], now=now, deadline=deadline
            ),
        )
        ok = True
        for shard, r in zip(shards, results, strict=True):
            if isinstance(r, BaseException):
                ok = False
                log.warning(
                    "redis cluster: a reservation in shard %s could not be released (%s); it "
                    "counts until its buckets leave their windows", TAGS[shard], r,
                )
        return ok

    def _commit_event(self, shard: int, event: UsageEvent) -> None:
        """Append an admitted decision's event, in the pool while the decision goes back
        to its caller (a budget of its own); counted as dropped when its shard cannot take
        it: the decision stands."""
        store = self._shards[shard]
        try:
            store.record_event(event, deadline=time.monotonic() + self.timeout)
        except StoreUnavailable as exc:
            store.events.count_dropped()
            log.warning("redis cluster: a decision's usage event was lost: %s", exc)
        finally:
            self.events.arrived()


def _by_shard(counters: Sequence[CounterSpec]) -> dict[int, list[CounterSpec]]:
    """The counters of each shard, in the order of their first counter (anything but a
    ``CounterSpec`` in shard 0, where it is refused before anything runs)."""
    parts: dict[int, list[CounterSpec]] = {}
    for spec in counters:
        shard = shard_of(spec.key) if isinstance(spec, CounterSpec) else 0
        parts.setdefault(shard, []).append(spec)
    return parts


assert len(TAGS) == SHARDS
