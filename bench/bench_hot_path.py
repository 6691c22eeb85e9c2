"""Where an in-process decision on Redis spends its time, part by part.

    python bench/bench_hot_path.py [--quick]

On one private redis-server, with the workload of ``bench_service.py``'s Redis rows
(500 users, three quotas each: ``per 1m`` and ``per 1h`` on requests, ``per 1d`` on
tokens), three tables:

1. the round trip: a redis-py ``PING`` beside the same ``PING`` through ``RedisCalls``
   (the store's own reads), wall time and this thread's CPU time per call;
2. the script: Redis's own time per ``consume.lua`` call (``INFO commandstats``) and the
   commands it ran inside, per decision, with usage events on;
3. the ingester: CPU time per event to write a batch into the in-memory usage
   database, by batch size (``Ingester(batch_size=…)``, one thread, no linger).

Wall times drift with the machine's load; CPU times much less.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import REDIS_RULES, USERS, redis_server  # noqa: E402

from tollway import Engine  # noqa: E402
from tollway.policy.ingest import Ingester  # noqa: E402

RUNS = 3


def _request(u: int) -> dict[str, object]:
    return {"user": {"id": f"user-{u}"}, "model": "m", "estimate": {"output_tokens": 500}}


def per_call(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """Median over ``RUNS`` runs of (wall µs, this thread's CPU µs) per call."""
    walls, cpus = [], []
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.thread_time()
        for i in range(n):
            fn(i)
        walls.append((time.perf_counter() - wall) / n * 1e6)
        cpus.append((time.thread_time() - cpu) / n * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    n = 2000 if quick else 10000
    import redis

    with redis_server() as port, tempfile.TemporaryDirectory() as d:
        rules = Path(d) / "redis.rules"
        rules.write_text(REDIS_RULES)
        url = f"redis://127.0.0.1:{port}/0"
        engine = Engine.from_path(rules, store=url, ingest=False)
        requests = [_request(u) for u in range(USERS)]
        for r in requests:
            engine.decide(r)
        client = redis.Redis(port=port)
        calls = engine.store._calls  # type: ignore[attr-defined]

        print("## The round trip\n")
        print("| call | wall µs | CPU µs |")
        print("|---|---|---|")
        for name, fn in (
            ("redis-py `PING`", lambda i: client.ping()),
            ("`RedisCalls` `PING`", lambda i: calls.one(("PING",), time.monotonic() + 1)),
        ):
            wall, cpu = per_call(fn, n)
            print(f"| {name} | {wall:.1f} | {cpu:.1f} |")

        client.config_resetstat()
        wall, cpu = per_call(lambda i: engine.decide(requests[i % USERS]), n)
        decisions = RUNS * n
        stats = {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items()}
        script = stats.pop("evalsha")
        inside = ", ".join(
            f"{k} {v['calls'] / decisions:.2f}" for k, v in sorted(stats.items())
            if k not in ("config|resetstat", "info", "ping") and v["calls"] >= decisions / 100
        )
        print("\n## The script, usage events on\n")
        print("| what | per decision |")
        print("|---|---|")
        print(f"| `Engine.decide` wall / its thread's CPU | {wall:.1f} µs / {cpu:.1f} µs |")
        print(f"| `EVALSHA` calls | {script['calls'] / decisions:.2f} |")
        print(f"| Redis's time per `consume.lua` call | {script['usec_per_call']:.1f} µs |")
        print(f"| commands the script ran | {inside} |")

        print("\n## The ingester: CPU per event by batch size (in-memory usage database)\n")
        print("| batch | events | CPU µs per event |")
        print("|---|---|---|")
        sizes = (500, 2000, 10000) if quick else (500, 1000, 2500, 5000, 10000)
        for size in sizes:
            ingester = Ingester(engine.store.events, engine.usage_db,  # type: ignore[arg-type]
                                batch_size=size)
            while ingester.step():
                pass
            for i in range(max(n, size)):
                engine.decide(requests[i % USERS])
            cpu_start, stored = time.thread_time(), 0
            while written := ingester.step():
                stored += written
            cost = (time.thread_time() - cpu_start) / max(stored, 1) * 1e6
            print(f"| {size:,} | {stored:,} | {cost:.0f} |")
        client.close()
        engine.close()


if __name__ == "__main__":
    main()
