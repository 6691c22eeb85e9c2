"""HTTP port throughput: scrapes, usage listings and exports under a concurrent client.

    python bench/bench_http.py [--users 10000] [--seconds 5] [--concurrency 16]

The server is the real HTTP port (aiohttp, as ``tollway serve`` runs it) over an
in-memory engine holding ``--users`` users' usage and the metrics of a few thousand
decisions; the client is a second process (aiohttp, ``--concurrency`` requests in flight,
keep-alive) so that the two do not share a GIL. ``/healthz`` is the peer: the cheapest
route on the same stack, so each row's ratio says what the route itself costs. Prints
one table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RULES = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"
T0 = 1_800_000_000.0
MODELS = ["openai/gpt-4.1", "openai/gpt-4.1-mini", "anthropic/claude-sonnet-4.6"]

TARGETS = [
    ("/healthz", "peer: the cheapest route"),
    ("/metrics", "Prometheus scrape"),
    ("/v1/usage/users?sort=-total_cost&limit=25", "listing, first page by cost"),
    ("/v1/usage/users?sort=last_seen&limit=100&offset=5000", "listing, deep page of 100"),
    ("/v1/usage/users/user-42", "one user's detail"),
    ("/v1/activity?limit=100", "export, 100 JSON lines"),
    ("/v1/activity?limit=100&format=csv", "export, 100 CSV rows"),
]


# ------------------------------------------------------------------ client process


async def _client(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
    }


def client_main(url: str, seconds: float, concurrency: int) -> None:
    print(json.dumps(asyncio.run(_client(url, seconds, concurrency))))


# ------------------------------------------------------------------ server


def start_server(users: int) -> tuple[str, Any]:
    from tollway import Engine
    from tollway.policy.usage import UsageEvent
    from tollway.server.http import build_app, start_http
    from tollway.server.http_ops import Readiness
    from tollway.server.metrics import Metrics

    metrics = Metrics()
    engine = Engine.from_path(RULES, store="memory", observer=metrics)
    metrics.ruleset_loaded(engine.ruleset)
    engine.usage_db.write([
        UsageEvent(
            time=T0 + i * 0.01, request_id=f"r{i}", user_id=f"user-{i % users}",
            group_id=f"group-{i % users % 100}", model=MODELS[i % 3],
            input_tokens=100 + i % 900, output_tokens=i % 400, cost_usd=(i % 5000) / 1e6,
            duration_seconds=1.0,
        )
        for i in range(users * 2)
    ])
    for i in range(3000):  # the metrics of real traffic: several label sets per family
        tier = ("free", "pro", "enterprise")[i % 3]
        d = engine.decide({"user": {"id": f"user-{i % 50}", "metadata": {"tier": tier}},
                           "model": MODELS[i % 3]})
        engine.report({"request_id": f"m{i}", "decision_id": d.decision_id,
                       "user": {"id": f"user-{i % 50}"}, "model": d.model,
                       "input_tokens": 100, "output_tokens": 50, "cost_usd": 0.001})
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    app = build_app(engine, metrics, Readiness(engine))
    server = asyncio.run_coroutine_threadsafe(start_http("127.0.0.1:0", app), loop).result()
    return server.address, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--client", nargs=3, metavar=("URL", "SECONDS", "CONCURRENCY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client[0], float(args.client[1]), int(args.client[2]))
        return

    address, _engine = start_server(args.users)
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for path, note in TARGETS:
        out = subprocess.run(
            [sys.executable, __file__, "--client", f"http://{address}{path}",
             str(args.seconds), str(args.concurrency)],
            capture_output=True, text=True, check=True,
        )
        rows.append((path, note, json.loads(out.stdout)))

    peer = rows[0][2]["rate"]
    print()
    print(f"HTTP port, memory store, {args.users:,} users, {args.concurrency} requests in "
          f"flight from a second process, {args.seconds:g} s per row")
    print()
    print(f"{'route':<56} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs peer':>8}  note")
    print("-" * 120)
    for path, note, r in rows:
        flag = f"  ({r['errors']} non-200)" if r["errors"] else ""
        print(f"{path:<56} {r['rate']:>8,.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
              f"{r['rate'] / peer:>8.2f}  {note}{flag}")
    print()


if __name__ == "__main__":
    main()
