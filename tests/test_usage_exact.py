"""Usage is exact across replicas and failures: two ``tollway serve`` processes on one
Redis and one PostgreSQL, Decides and Reports sent concurrently (every Report to both
replicas), compared with what the clients were told, to the nano-dollar.

The PostgreSQL server is a private one (``postgres_cluster``) so that one test can stop
it. The database is read once the stream is drained (nothing unread, nothing pending):
from then on nothing more can arrive, so the comparison is exact, not eventual.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import redis
from conftest import reset_postgres
from server_harness import Served, tollway_serve

from tollway.policy.stores.events_redis import GROUP, stream_key
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

RULES = """
quota calls limits requests to 1000000 per 1h for each user
rule everyone { when user.id exists enforce calls }
"""
USERS = 13
WORKERS = 8


class Replica:
    """One ``tollway serve`` on the shared Redis and PostgreSQL, that a test can kill -9
    and start again (calls made meanwhile fail, as a gateway's would)."""

    def __init__(self, stack: ExitStack, rules: Path, args: tuple[str, ...]) -> None:
        self._rules, self._args = rules, args
        self._lock = threading.Lock()
        self._stack = stack
        self.served: Served | None = None
        self.stub: pb_grpc.TollwayStub | None = None
        self.start()

    def start(self) -> None:
        served = self._stack.enter_context(tollway_serve(self._rules, *self._args))
        channel = self._stack.enter_context(grpc.insecure_channel(served.grpc))
        with self._lock:
            self.served, self.stub = served, pb_grpc.TollwayStub(channel)

    def kill(self) -> None:
        with self._lock:
            assert self.served is not None
            self.served.proc.kill()  # SIGKILL: no shutdown, no flush, no acknowledgement
            self.served.proc.wait(timeout=10)

    def call(self, method: str, request: Any) -> Any:
        with self._lock:
            stub = self.stub
        return getattr(stub, method)(request, timeout=10)


@dataclass
class Ledger:
    """What the clients were told, per user."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    admitted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed_decides: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # request_id -> (user, nano-USD, whether it counts a request), reports some replica acked
    reports: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    unacknowledged: list[str] = field(default_factory=list)
    decision_ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    denied: int = 0

    def expected(self) -> dict[str, tuple[int, int]]:
        """Per user: (nano-USD, requests counted by reports without a decision)."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for user, nanos, counts in self.reports.values():
            out[user][0] += nanos
            out[user][1] += counts
        return {u: (v[0], v[1]) for u, v in out.items()}


def _nanos(i: int) -> int:
    """A report's cost in nano-USD: up to 0.01 USD, every digit significant."""
    return 1 + (i * 7_919_993) % 9_999_991


def _load(replicas: list[Replica], stop: threading.Event, ledger: Ledger) -> Callable[[], None]:
    """Start ``WORKERS`` threads sending Decides (alternating replicas) and Reports (each
    to both replicas, the order alternating) until ``stop``; returns the join."""
    numbers = itertools.count()

    def decide(i: int, user: str) -> None:
        request = pb.DecideRequest(request_id=f"d{i}", user=pb.Entity(id=user), model="m")
        try:
            decision = replicas[i % 2].call("Decide", request)
        except grpc.RpcError:
            with ledger.lock:
                ledger.failed_decides[user] += 1
            return
        with ledger.lock:
            if decision.allowed:
                ledger.admitted[user] += 1
                ledger.decision_ids[user].append(decision.decision_id)
            else:
                ledger.denied += 1

    def report(i: int, user: str) -> None:
        with ledger.lock:
            ids = ledger.decision_ids[user]
            decision_id = ids.pop() if ids and i % 2 else ""
        nanos = _nanos(i)
        request = pb.UsageReport(
            request_id=f"r{i}", decision_id=decision_id, user=pb.Entity(id=user), model="m",
            input_tokens=i % 100, cost_usd=nanos / 1e9,
        )
        acked = False
        for k in (i % 2, 1 - i % 2):
            try:
                replicas[k].call("Report", request)
                acked = True
            except grpc.RpcError:
                pass
        with ledger.lock:
            if acked:
                ledger.reports[request.request_id] = (user, nanos, not decision_id)
            else:
                ledger.unacknowledged.append(request.request_id)

    def work() -> None:
        while not stop.is_set():
            i = next(numbers)
            user = f"u{i % USERS}"
            (decide if i % 3 == 0 else report)(i, user)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()

    def join() -> None:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    return join


def _drained(client: redis.Redis, key: str, timeout: float) -> None:
    """Wait until the group has read and acknowledged every entry of the stream."""
    deadline = time.monotonic() + timeout
    left: object = None
    while time.monotonic() < deadline:
        groups = [g for g in client.xinfo_groups(key) if g["name"] in (GROUP, GROUP.encode())]
        if groups:
            g = groups[0]
            lag = g.get("lag")
            left = (client.xlen(key) if lag is None else lag, g["pending"])
            if left == (0, 0):
                return
        time.sleep(0.05)
    raise AssertionError(f"usage stream not drained in {timeout} s (unread, pending): {left}")


def _stored(url: str) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Per user: (nano-USD, requests) of the all-time rollup rows, and the same summed
    from the events themselves."""
    with psycopg.connect(url) as conn:
        rollups = {
            u: (cost, requests) for u, cost, requests in conn.execute(
                "SELECT entity_id, cost_nusd, request_count FROM usage_periods "
                "WHERE entity_kind = 'user' AND span = 'a'"
            )
        }
        events = {
            u: (int(cost), int(requests)) for u, cost, requests in conn.execute(
                "SELECT user_id, sum(cost_nusd), sum(requests) FROM usage_events GROUP BY user_id"
            )
        }
    return rollups, events


@dataclass
class Setup:
    replicas: list[Replica]
    redis: redis.Redis
    stream: str
    url: str

    def run(self, seconds: float, during: Callable[[], None] = lambda: None) -> Ledger:
        """Load for ``seconds`` around ``during()`` (a fault), then wait until every
        event is stored."""
        ledger, stop = Ledger(), threading.Event()
        join = _load(self.replicas, stop, ledger)
        try:
            time.sleep(seconds / 2)
            during()
            time.sleep(seconds / 2)
        finally:
            join()
        _drained(self.redis, self.stream, timeout=60)
        return ledger

    def check(self, ledger: Ledger) -> dict[str, tuple[int, int]]:
        """Stored usage equals the acknowledged reports to the nano-USD; the requests
        counted are the reports without a decision plus the decisions admitted (within
        the decisions whose answer was lost to a killed replica). Returns the rollups."""
        assert ledger.unacknowledged == []
        rollups, events = _stored(self.url)
        assert rollups == events  # the rollups are the events summed, nothing twice
        expected = ledger.expected()
        users = {u for u in {*expected, *ledger.admitted} if expected.get(u) or ledger.admitted[u]}
        assert set(rollups) == users
        for user in users:
            nanos, counted = expected.get(user, (0, 0))
            cost, requests = rollups[user]
            assert cost == nanos, user
            low = counted + ledger.admitted[user]
            assert low <= requests <= low + ledger.failed_decides[user], user
        return rollups


@pytest.fixture
def setup(
    tmp_path: Path, redis_url: str, redis_prefix: str, postgres_cluster: Any
) -> Iterator[Setup]:
    reset_postgres(postgres_cluster.url)
    rules = tmp_path / "exact.rules"
    rules.write_text(RULES)
    args = ("--store", redis_url, "--key-prefix", redis_prefix,
            "--usage-db", postgres_cluster.url, "--store-timeout", "10s")
    client = redis.Redis.from_url(redis_url)
    with ExitStack() as stack:
        replicas = [Replica(stack, rules, args) for _ in range(2)]
        yield Setup(replicas, client, stream_key(redis_prefix), postgres_cluster.url)
    client.close()
    reset_postgres(postgres_cluster.url)


def test_two_replicas_store_every_report_once_to_the_nano_dollar(setup: Setup) -> None:
    ledger = setup.run(2.0)
    setup.check(ledger)
    assert sum(ledger.failed_decides.values()) == 0  # nothing failed: the counts are exact
    assert len(ledger.reports) > 50 and sum(ledger.admitted.values()) > 25
    assert ledger.denied == 0


def test_a_replica_killed_mid_load_and_restarted_loses_and_doubles_nothing(
    setup: Setup,
) -> None:
    victim = setup.replicas[0]

    def kill_and_restart() -> None:
        victim.kill()
        time.sleep(0.5)  # calls to it fail meanwhile; every Report still reaches the other
        victim.start()

    ledger = setup.run(3.0, kill_and_restart)
    # what the dead replica had read and not acknowledged was taken over (after the
    # claim delay) and written once
    rollups = setup.check(ledger)
    assert len(rollups) == USERS
    assert sum(ledger.failed_decides.values()) > 0  # the kill did land mid-load


def test_postgresql_down_for_ten_seconds_mid_load(setup: Setup, postgres_cluster: Any) -> None:
    def outage_of_ten_seconds() -> None:
        postgres_cluster.stop()
        try:
            time.sleep(10.0)
        finally:
            postgres_cluster.start()

    ledger = setup.run(2.0, outage_of_ten_seconds)
    # decisions and reports carried on throughout: none failed, none was refused
    assert sum(ledger.failed_decides.values()) == 0 and ledger.denied == 0
    assert len(ledger.reports) > 200  # the load ran through the outage
    setup.check(ledger)
