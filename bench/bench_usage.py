"""Usage accounting throughput and listing latency, memory vs Redis.

    python bench/bench_usage.py [--redis redis://HOST:PORT/DB] [--users 100000]

Without ``--redis`` a private ``redis-server`` is started on a free port (nothing saved)
and stopped at the end. Reports are measured twice: whole, through ``Engine.report`` with
examples/gateway.rules (validation, rule evaluation, counters and usage in one store
step), and bare, through the usage ``apply`` a store runs inside that step. Listing is
``list(sort=-total_cost, limit=25)`` with ``--users`` users in the store. Prints one
table; takes about two minutes.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tollway import Engine
from tollway.policy.stores.usage_memory import MemoryUsage
from tollway.policy.stores.usage_redis import _APPLY_LUA, RedisUsage, usage_args
from tollway.policy.usage import ActivityQuery, UsageEvent, UsageQuery

RULES = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"
T0 = 1_800_000_000.0
MODELS = ["openai/gpt-4.1", "openai/gpt-4.1-mini", "anthropic/claude-sonnet-4.6", "azure-eu/gpt-4.1"]


def events(n: int, users: int, seed: int = 1) -> Iterator[UsageEvent]:
    rng = random.Random(seed)
    for i in range(n):
        u = i % users if i < users else rng.randrange(users)
        yield UsageEvent(
            time=T0 + i * 0.001, request_id=f"r{i}", user_id=f"user-{u}",
            group_id=f"group-{u % 500}", model=MODELS[i % 4],
            input_tokens=rng.randrange(2000), output_tokens=rng.randrange(800),
            cost_usd=rng.randrange(1, 5000) / 1e6, duration_seconds=rng.random() * 3,
        )


def rate(apply: Callable[[UsageEvent], None], evs: list[UsageEvent]) -> float:
    start = time.perf_counter()
    for e in evs:
        apply(e)
    return len(evs) / (time.perf_counter() - start)


def engine_report_rate(store: str, n: int, key_prefix: str = "tollway:") -> float:
    """Reports/s through ``Engine.report``: the whole report path of the server."""
    engine = Engine.from_path(RULES, store=store, key_prefix=key_prefix)
    reports = [
        {
            "request_id": f"e{i}", "user": {"id": f"user-{i % 10_000}"},
            "group": {"id": f"group-{i % 500}"}, "model": MODELS[i % 4],
            "input_tokens": 120 + i % 50, "output_tokens": 480, "cost_usd": 0.0031,
        }
        for i in range(n)
    ]
    for r in reports[:200]:  # warm caches (entities, scripts)
        engine.report(r)
    start = time.perf_counter()
    for r in reports[200:]:
        engine.report(r)
    rate_ = (n - 200) / (time.perf_counter() - start)
    engine.close()
    return rate_


def latency_ms(call: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(median, p95) in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


@contextmanager
def private_redis() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found; pass --redis URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=10)


def load_redis(client: redis.Redis, store: RedisUsage, evs: Iterator[UsageEvent]) -> None:
    """Bulk-load through the same script, 1000 calls per pipeline."""
    script = client.register_script(_APPLY_LUA)
    pipe = client.pipeline(transaction=False)
    for i, e in enumerate(evs, 1):
        script(keys=[], args=usage_args(store.prefix, e, store.retention), client=pipe)
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    # ---------------------------------------------------------------- memory
    mem_engine = engine_report_rate("memory", 30_000)
    mem = MemoryUsage()
    evs = list(events(200_000, 10_000))
    r = rate(mem.apply, evs)
    rows.append(("usage apply alone (reports/s), 10k users", f"{r:,.0f}", ""))
    mem = MemoryUsage()
    for e in events(args.users * 2, args.users):
        mem.apply(e)
    top = UsageQuery.parse(sort="-total_cost", limit=25)
    mem.list(top)  # first listing builds the sort order
    mem_list = latency_ms(lambda: mem.list(top), 200)
    extra = iter(events(10**7, args.users, seed=2))

    def write_then_list() -> None:
        for _ in range(100):
            mem.apply(next(extra))
        mem.list(top)

    mem_dirty = latency_ms(write_then_list, 30)
    search = UsageQuery.parse(sort="-total_cost", limit=25, search="user-123")
    mem_search = latency_ms(lambda: mem.list(search), 10)
    mem_get = latency_ms(lambda: mem.get("user", "user-42"), 200)
    mem_act = latency_ms(lambda: list(mem.activity(ActivityQuery(user="user-42"))), 5)

    # ---------------------------------------------------------------- redis
    with (private_redis() if args.redis is None else _given(args.redis)) as url:
        client = redis.Redis.from_url(url)
        store = RedisUsage(client, key_prefix=f"bench:{uuid.uuid4().hex[:8]}:")
        evs = list(events(20_000, 10_000))
        red_rate = rate(store.apply, evs)
        red_engine = engine_report_rate(url, 10_000, key_prefix=f"bench:{uuid.uuid4().hex[:8]}:")
        store2 = RedisUsage(client, key_prefix=f"bench:{uuid.uuid4().hex[:8]}:")
        start = time.perf_counter()
        load_redis(client, store2, events(args.users * 2, args.users))
        load_s = time.perf_counter() - start
        red_list = latency_ms(lambda: store2.list(top), 200)
        red_search = latency_ms(lambda: store2.list(search), 10)
        red_get = latency_ms(lambda: store2.get("user", "user-42"), 200)
        red_act = latency_ms(lambda: list(store2.activity(ActivityQuery(user="user-42"))), 3)
        info = client.info("memory")
        for s in (store, store2):
            keys = list(client.scan_iter(match=s.prefix + "*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.unlink(*keys[i : i + 10_000])
        client.close()

    rows[0] = (rows[0][0], rows[0][1], f"{red_rate:,.0f} (1 EVALSHA round trip each)")
    rows.insert(
        0,
        (
            "Engine.report (reports/s), 10k users",
            f"{mem_engine:,.0f}",
            f"{red_engine:,.0f} (1 EVALSHA round trip each)",
        ),
    )
    n = f"{args.users:,}"
    rows += [
        (f"bulk load {args.users * 2:,} events (pipelined)", "", f"{load_s:.1f} s"),
        (f"list -total_cost, 25, {n} users (median/p95 ms)", _ms(mem_list), _ms(red_list)),
        ("  same, after 100 new reports (memory repair)", _ms(mem_dirty), ""),
        (f"list search='user-123', {n} users", _ms(mem_search), _ms(red_search)),
        ("get one user (detail + 50 recent)", _ms(mem_get), _ms(red_get)),
        ("activity export for one user (full scan)", _ms(mem_act), _ms(red_act)),
        ("redis used_memory after load", "", info["used_memory_human"]),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'memory':>22}  {'redis':>34}")
    for name, a, b in rows:
        print(f"{name:{width}}  {a:>22}  {b:>34}")


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f} / {pair[1]:.2f}"


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
