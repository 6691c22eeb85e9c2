"""Redis calls on a Redis Cluster: each goes to the master serving its keys' slot.

redis-py's ``RedisCluster`` keeps the map of slots to nodes; the calls themselves go
through ``RedisCalls`` on the master's own connection pool, so each keeps its deadline,
says what is known when it fails, and measures the offset of that master's clock (each
node has its own). ``ClusterCalls.at(key)`` is the ``RedisCalls`` face of one slot,
looked up anew on every call, so after a failover the next call goes to the promoted
replica.

The map is read again (``CLUSTER SLOTS`` from any node that answers) when a call was
redirected (``MOVED``: the slot moved, the script did not run; it is sent once more to
the new master if the deadline allows), when the cluster said it is down, and when a
node could not be reached or did not answer in time; at most one thread reads it at a
time, the others fail fast meanwhile, and not more often than every ``REFRESH_EVERY``
seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from . import StoreAddress
from .base import StoreUnavailable
from .redis_calls import RedisCalls, Script, store_error

__all__ = ["ClusterCalls", "SlotCalls", "REFRESH_EVERY"]

REFRESH_EVERY = 0.2  # seconds between two reads of the slot map
# error replies after which the slot map is read again (the call did not run)
_MOVED = ("redis: MOVED ", "redis: ASK ")
_STALE = (*_MOVED, "redis: CLUSTERDOWN", "redis: TRYAGAIN")


class ClusterCalls:
    """Calls routed by slot to the masters of the cluster at ``address``."""

    def __init__(
        self,
        address: StoreAddress,
        options: dict[str, Any],
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``options``: the connection keywords of every node (timeouts, protocol)."""
        self._address = address
        self._options = options
        self._wall = wall
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshed_at = -float("inf")
        self._cluster: RedisCluster | None = None
        self._nodes: dict[tuple[str, int], RedisCalls] = {}

    def client(self) -> RedisCluster:
        """The redis-py cluster client (connected on first use); ``StoreUnavailable``
        when no listed node answers."""
        cluster = self._cluster
        if cluster is not None:
            return cluster
        with self._lock:
            if self._cluster is None:
                address = self._address
                try:
                    self._cluster = RedisCluster(
                        startup_nodes=[ClusterNode(h, p) for h, p in address.nodes],
                        username=address.username,
                        password=address.password,
                        require_full_coverage=False,
                        # its own commands (ping, the usage streams' reads) try a second
                        # node at once after a moved slot or a dead one, never more
                        retry=Retry(NoBackoff(), 1),
                        **self._options,
                    )
                except (RedisError, RedisClusterException, OSError) as exc:
                    raise store_error(exc) from exc
            return self._cluster

    def at(self, key: str) -> SlotCalls:
        """The calls of ``key``'s slot."""
        return SlotCalls(self, key_slot(key.encode("utf-8", "surrogatepass")))

    def node(self, slot: int) -> RedisCalls:
        """The ``RedisCalls`` of the master serving ``slot`` now."""
        cluster = self.client()
        try:
            node = cluster.nodes_manager.get_node_from_slot(slot)
        except (RedisError, RedisClusterException) as exc:
            self.refresh()
            raise store_error(exc) from exc
        connection = cluster.get_redis_connection(node)
        name = (node.name, id(connection))
        calls = self._nodes.get(name)
        if calls is None:
            with self._lock:
                calls = self._nodes.get(name)
                if calls is None:
                    calls = self._nodes[name] = RedisCalls(connection, wall=self._wall)
        return calls

    def refresh(self) -> None:
        """Read the slot map again, unless another thread is at it or it was read less
        than ``REFRESH_EVERY`` seconds ago."""
        if time.monotonic() - self._refreshed_at < REFRESH_EVERY:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return
        try:
            cluster = self._cluster
            if cluster is not None:
                # no node answering is left to the next failure to try again
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    cluster.nodes_manager.initialize()
        finally:
            self._refreshed_at = time.monotonic()
            self._refresh_lock.release()

    def call(self, slot: int, work: Callable[[RedisCalls], Any], deadline: float) -> Any:
        """``work`` on the calls of ``slot``'s master; once more on the new master when
        the slot had moved (nothing ran), while the deadline allows."""
        for attempt in (0, 1):
            try:
                return work(self.node(slot))
            except StoreUnavailable as exc:
                # the map may be stale: a moved slot, a dead or stalled master
                self.refresh()
                moved = str(exc).startswith(_MOVED)
                if attempt or not moved or time.monotonic() >= deadline:
                    raise
        raise AssertionError("unreachable")

    def wall(self) -> float:
        return self._wall()

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
            nodes, self._nodes = self._nodes, {}
        for calls in nodes.values():
            calls.close()
        if cluster is not None:
            cluster.close()


class SlotCalls:
    """The calls of one slot, in ``RedisCalls``'s terms (what the Redis stores use)."""

    def __init__(self, cluster: ClusterCalls, slot: int) -> None:
        self._cluster = cluster
        self.slot = slot

    def run(self, commands: Sequence[Sequence[Any]], deadline: float) -> list[Any]:
        return self._cluster.call(
            self.slot, lambda calls: _checked(calls.run(commands, deadline)), deadline
        )

    def one(self, command: Sequence[Any], deadline: float) -> Any:
        return self._cluster.call(self.slot, lambda calls: calls.one(command, deadline), deadline)

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any],
               deadline: float) -> Any:
        return self._cluster.call(
            self.slot, lambda calls: calls.script(script, keys, args, deadline), deadline
        )

    def redis_deadline(self, deadline: float) -> str:
        return self._cluster.call(
            self.slot, lambda calls: calls.redis_deadline(deadline), deadline
        )

    def wall(self) -> float:
        return self._cluster.wall()

    def observe_time(self, sent_at: float, received_at: float, sec: int, usec: int) -> None:
        self._cluster.node(self.slot).observe_time(sent_at, received_at, sec, usec)


def _checked(replies: list[Any]) -> list[Any]:
    """Replies of a pipeline: a redirection among them is raised (so the call is sent
    again where the slot lives now); other error replies stay in place."""
    for reply in replies:
        if isinstance(reply, Exception):
            error = store_error(reply)
            if str(error).startswith(_STALE):
                raise error
    return replies
