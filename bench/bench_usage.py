"""Usage in SQL: the event pipeline and the usage queries, SQLite and PostgreSQL side by side.

    python bench/bench_usage.py [--users 100000] [--reports 20000] [--seconds 10]
                                [--postgres URL]

Everything runs on private servers: a ``redis-server`` on a free port (nothing saved),
a SQLite file in a temporary directory, and a database of its own on the PostgreSQL
server at ``--postgres`` (default ``TOLLWAY_TEST_POSTGRES_URL`` or
``postgresql://postgres@127.0.0.1:5432/postgres``), created here and dropped at the end.
For each database:

1. ``--users`` users are written straight into the usage database (one report each in
   the previous calendar month, one more this month for every third user), then
   ``ANALYZE``.
2. Two ``tollway serve`` processes (examples/gateway.rules, the Redis store with
   ``--store-timeout 2s``, that database) start: replica A takes Decides and Reports, replica B answers listings;
   both ingest.
3. **Pipeline throughput:** ``--reports`` Reports, 64 in flight to replica A; the time
   from the first call until every event is in the database.
4. **Ingest lag:** Reports paced at 1,000/s for ``--seconds``, to both replicas in turn;
   every 20th is a probe whose row is looked for every 5 ms: lag is from the start of its
   call to its row being visible to a query (so up to 5 ms coarse). A machine that
   cannot keep the pace shows it in the achieved rate.
5. **Queries** on replica B over gRPC, one at a time: ``ListUsage`` of the first 25 by cost
   over all time and over the previous calendar month, and a search by id.
6. **Decide p99** on replica A, one at a time, alone and while 8 clients (another
   process) list and search on replica B without pause.

Prints one table. Takes about five minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import bindparam, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import _decide_requests, redis_server, tollway_server  # noqa: E402

from tollway.policy.usage import UsageEvent  # noqa: E402
from tollway.policy.usage_db import UsageDatabase  # noqa: E402
from tollway.v1 import tollway_pb2 as pb  # noqa: E402
from tollway.v1 import tollway_pb2_grpc as pb_grpc  # noqa: E402

RULES = ROOT / "examples" / "gateway.rules"
MODELS = ("openai/gpt-4.1", "openai/gpt-4.1-mini", "anthropic/claude-sonnet-4.6")
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
LISTERS = 8


# ------------------------------------------------------------------ databases


@contextmanager
def private_postgres(admin: str) -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"tollway_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def months(now: float) -> tuple[float, float]:
    """The starts of the previous and of this calendar month (UTC)."""
    d = datetime.fromtimestamp(now, UTC)
    this = datetime(d.year, d.month, 1, tzinfo=UTC)
    prev = datetime(d.year - (d.month == 1), 12 if d.month == 1 else d.month - 1, 1, tzinfo=UTC)
    return prev.timestamp(), this.timestamp()


def seed(url: str, users: int, now: float) -> float:
    """Write the users' reports straight into the database, in time order (as the
    ingester meets them: each batch touches a few hours); returns the seconds taken."""
    prev, this = months(now)
    began = time.perf_counter()
    events: list[UsageEvent] = []
    for i in range(users):
        times = [prev + (i % (27 * 24)) * 3600 + 60]
        if i % 3 == 0:
            times.append(min(this + (i % 24) * 60, now - 60))
        for k, t in enumerate(times):
            events.append(UsageEvent(
                time=t, request_id=f"seed-{i}-{k}", user_id=f"user-{i}",
                group_id=f"group-{i % 500}", model=MODELS[(i + k) % 3],
                input_tokens=100 + i % 900, output_tokens=i % 400,
                cost_usd=(1 + (i * 7919) % 5000) / 1e6, duration_seconds=1.0,
            ))
    events.sort(key=lambda e: e.time)
    db = UsageDatabase(url)

    def analyze() -> None:
        with db.engine.connect() as connection, connection.begin():
            connection.execute(text("ANALYZE"))

    for i in range(0, len(events), 2000):
        db.write(events[i : i + 2000])
        if i == 20_000:  # tables with statistics from the start, as autovacuum gives them
            analyze()
    analyze()
    db.close()
    return time.perf_counter() - began


# ------------------------------------------------------------------ measuring


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def report(i: int, prefix: str, user: str | None = None) -> pb.UsageReport:
    return pb.UsageReport(
        request_id=f"{prefix}{i}", user=pb.Entity(id=user or f"user-{i % 10_000}"),
        group=pb.Entity(id=f"group-{i % 500}"), model=MODELS[i % 3],
        input_tokens=120 + i % 50, output_tokens=480, cost_usd=0.0031,
    )


def count_reports(db: UsageDatabase, prefix: str) -> int:
    """Reports whose request id starts with ``prefix`` (bench prefixes need no escaping)."""
    with db.engine.connect() as connection:
        return int(connection.execute(
            text("SELECT count(*) FROM usage_events WHERE kind = 'report' "
                 "AND request_id LIKE :p"), {"p": prefix + "%"}
        ).scalar() or 0)


def throughput(address: str, db: UsageDatabase, n: int) -> tuple[float, float]:
    """(calls/s of the Reports themselves, events/s until all were stored)."""
    prefix = f"tp{uuid.uuid4().hex[:6]}-"
    requests = [report(i, prefix) for i in range(n)]

    async def send() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.TollwayStub(channel)
            it = iter(requests)

            async def worker() -> None:
                for r in it:
                    await stub.Report(r, timeout=30)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(64)))
            return time.perf_counter() - start

    began = time.perf_counter()
    sent = asyncio.run(send())
    while count_reports(db, prefix) < n:
        time.sleep(0.02)
    stored = time.perf_counter() - began
    return n / sent, n / stored


def ingest_lag(addresses: list[str], db: UsageDatabase, seconds: float, rate: int = 1000) -> tuple[
    float, float, float, int
]:
    """(lag p50 ms, lag p99 ms, achieved reports/s, probes) at ``rate`` reports/s."""
    prefix = f"lag{uuid.uuid4().hex[:6]}-"
    probe_user = f"probe-{prefix}"
    sent_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        sql = text("SELECT request_id FROM usage_events WHERE kind = 'report' "
                   "AND user_id = :u AND request_id IN :ids").bindparams(
            bindparam("ids", expanding=True))
        with db.engine.connect() as connection:
            while not (done.is_set() and len(seen_at) >= len(sent_at)):
                waiting = [r for r in list(sent_at) if r not in seen_at]
                if waiting:
                    found = connection.execute(sql, {"u": probe_user, "ids": waiting})
                    now = time.perf_counter()
                    for (rid,) in found:
                        seen_at[rid] = now
                    connection.rollback()  # a fresh snapshot next time
                time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    async def send() -> float:
        """``rate`` calls a second from 32 workers, alternating replicas; a call starts
        at its turn or, when every worker is busy, as soon as one is free."""
        channels = [grpc.aio.insecure_channel(a) for a in addresses]
        stubs = [pb_grpc.TollwayStub(c) for c in channels]
        total = int(seconds * rate)
        turns = iter(range(total))
        start = time.perf_counter()

        async def worker() -> None:
            for i in turns:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                probe = i % 20 == 0
                r = report(i, prefix, probe_user if probe else None)
                if probe:
                    sent_at[r.request_id] = time.perf_counter()
                await stubs[i % len(stubs)].Report(r, timeout=30)

        await asyncio.gather(*(worker() for _ in range(32)))
        achieved = total / (time.perf_counter() - start)
        for c in channels:
            await c.close()
        return achieved

    achieved = asyncio.run(send())
    done.set()
    watcher.join(timeout=120)
    lags = [(seen_at[r] - sent_at[r]) * 1000 for r in sent_at if r in seen_at]
    return statistics.median(lags), percentile(lags, 0.99), achieved, len(lags)


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(seconds))
    return ts


def listing_requests(now: float) -> dict[str, pb.ListUsageRequest]:
    prev, this = months(now)
    return {
        "lifetime": pb.ListUsageRequest(kind="users", sort="-total_cost", limit=25),
        "month": pb.ListUsageRequest(kind="users", sort="-total_cost", limit=25,
                                     start=_timestamp(prev), end=_timestamp(this)),
        "search": pb.ListUsageRequest(kind="users", sort="-total_cost", limit=25,
                                      search="user-4242"),
    }


def timed(call: Callable[[], Any], rounds: int) -> list[float]:
    call()  # warm
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def decide_latencies(address: str, calls: int) -> tuple[list[float], int]:
    """Sequential Decides: (milliseconds each, calls that failed)."""
    requests = [pb.DecideRequest.FromString(b) for b in _decide_requests(calls, MODELS)]
    failed = 0
    samples = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TollwayStub(channel)
        stub.Decide(requests[0], timeout=10)
        for r in requests:
            start = time.perf_counter()
            try:
                stub.Decide(r, timeout=10)
            except grpc.RpcError:
                failed += 1
            samples.append((time.perf_counter() - start) * 1000)
    return samples, failed


def _lister(address: str, now: float, stop: Any, counter: Any) -> None:
    """A process of ``LISTERS`` threads that list and search without pause."""
    requests = list(listing_requests(now).values())

    def loop(k: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.TollwayStub(channel)
            while not stop.is_set():
                stub.ListUsage(requests[k % len(requests)], timeout=30)
                with counter.get_lock():
                    counter.value += 1
                k += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(LISTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextmanager
def listers(address: str, now: float) -> Iterator[Any]:
    ctx = multiprocessing.get_context("spawn")
    stop, counter = ctx.Event(), ctx.Value("q", 0)
    proc = ctx.Process(target=_lister, args=(address, now, stop, counter), daemon=True)
    proc.start()
    while counter.value < LISTERS:  # every client is listing
        time.sleep(0.05)
    try:
        yield counter
    finally:
        stop.set()
        proc.join(timeout=60)


# ------------------------------------------------------------------ one database


def measure(name: str, url: str, redis_url: str, args: argparse.Namespace) -> dict[str, str]:
    now = time.time()
    print(f"{name}: seeding {args.users:,} users …", file=sys.stderr, flush=True)
    seeded = seed(url, args.users, now)
    out = {"seed": f"{seeded:.0f} s"}
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    # a longer store deadline than the default 0.1 s: on a machine shared with the
    # database and the clients, a Redis call can wait on a busy core
    common = ("--key-prefix", prefix, "--usage-db", url, "--store-timeout", "2s")
    db = UsageDatabase(url)
    with ExitStack() as stack:
        a = stack.enter_context(tollway_server(RULES, redis_url, *common))
        b = stack.enter_context(tollway_server(RULES, redis_url, *common))
        print(f"{name}: pipeline …", file=sys.stderr, flush=True)
        calls, stored = throughput(a, db, args.reports)
        out["throughput"] = f"{stored:,.0f} /s ({calls:,.0f} calls/s)"
        p50, p99, achieved, probes = ingest_lag([a, b], db, args.seconds)
        out["lag"] = f"{p50:.0f} / {p99:.0f} ms ({achieved:,.0f}/s, {probes} probes)"
        print(f"{name}: queries …", file=sys.stderr, flush=True)
        channel = stack.enter_context(grpc.insecure_channel(b))
        stub = pb_grpc.TollwayStub(channel)
        for key, request in listing_requests(now).items():
            samples = timed(lambda r=request: stub.ListUsage(r, timeout=30), args.rounds)
            out[key] = f"{statistics.median(samples):.1f} ms"
        print(f"{name}: decisions …", file=sys.stderr, flush=True)
        alone, failed = decide_latencies(a, args.decides)
        with listers(b, now) as counter:
            began, listed = time.perf_counter(), counter.value
            busy, failed_busy = decide_latencies(a, args.decides)
            rate = (counter.value - listed) / (time.perf_counter() - began)
        p99_alone, p99_busy = percentile(alone, 0.99), percentile(busy, 0.99)
        out["decide"] = f"{p99_alone:.2f} ms" + (f" ({failed} failed)" if failed else "")
        out["decide_busy"] = (f"{p99_busy:.2f} ms, {p99_busy / p99_alone:.2f}x "
                              f"({rate:,.0f} listings/s)"
                              + (f", {failed_busy} failed" if failed_busy else ""))
    db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--decides", type=int, default=3000)
    parser.add_argument("--postgres", default=os.environ.get("TOLLWAY_TEST_POSTGRES_URL")
                        or PG_DEFAULT)
    args = parser.parse_args()

    results: dict[str, dict[str, str]] = {}
    with redis_server() as port, tempfile.TemporaryDirectory() as d:
        redis_url = f"redis://127.0.0.1:{port}/0"
        results["SQLite"] = measure("SQLite", f"sqlite:///{d}/usage.db", redis_url, args)
        with private_postgres(args.postgres) as url:
            results["PostgreSQL"] = measure("PostgreSQL", url, redis_url, args)

    n = f"{args.users:,}"
    rows = [
        ("seed", f"{n} users written straight into the database, then ANALYZE"),
        ("throughput", f"Reports through the pipeline, 64 in flight, until all {args.reports:,} "
                       "are stored"),
        ("lag", "ingest lag p50 / p99, Reports paced at 1,000/s (target p99 <= 2 s)"),
        ("lifetime", f"ListUsage p50, first 25 by cost, {n} users, all time (target <= 5 ms)"),
        ("month", "ListUsage p50, the same over the previous calendar month (target <= 5 ms)"),
        ("search", f"ListUsage p50, search by id among {n} users (target <= 50 ms)"),
        ("decide", "Decide p99, one at a time, replica A"),
        ("decide_busy", f"the same while {LISTERS} clients list on replica B (target <= 1.5x)"),
    ]
    names = list(results)
    width = max(len(r[1]) for r in rows)
    cols = [max(len(c), *(len(results[c][k]) for k, _ in rows)) for c in names]
    print()
    print(f"Usage database, two tollway serve replicas on one private Redis; {os.cpu_count()} "
          f"cores shared by the servers, Redis, the database and the clients")
    print()
    print(f"| {'':<{width}} | " + " | ".join(f"{c:>{w}}" for c, w in zip(names, cols, strict=True)) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 1) + ":" for w in cols) + "|")
    for key, label in rows:
        cells = " | ".join(f"{results[c][key]:>{w}}" for c, w in zip(names, cols, strict=True))
        print(f"| {label:<{width}} | {cells} |")


if __name__ == "__main__":
    main()
