"""Memory the in-process (memory) store costs per active user.

    python bench/bench_memory.py [--users 20000]

Each user sends one Decide with metadata (tier, region, categories) and a group, under
the quotas of examples/gateway.rules, and one Report with its decision_id: the steady
state of a user active in the last hour. Measured twice in one run: Python allocations
(tracemalloc, exact, what the stores hold) and the process's resident memory (RSS, what
the kernel sees, allocator overhead included). Prints one table; the per-user figures
are what docs/operations.md quotes.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tracemalloc
from pathlib import Path

from tollway import Engine
from tollway.policy.stores import StoreOptions

RULES = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"
T0 = 1_800_000_000.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def fill(engine: Engine, first: int, count: int) -> None:
    for i in range(first, first + count):
        uid = f"user-{i:08d}"
        d = engine.decide({
            "request_id": f"q{i}",
            "user": {"id": uid, "metadata": {"tier": "free", "region": "eu",
                                             "categories": ["a", "b"]}},
            "group": {"id": f"team-{i % 500}", "metadata": {"monthly_credits": 1000}},
            "model": "openai/gpt-4.1",
            "estimate": {"input_tokens": 800, "output_tokens": 400},
        })
        engine.report({"request_id": f"r{i}", "decision_id": d.decision_id,
                       "user": {"id": uid}, "group": {"id": f"team-{i % 500}"},
                       "model": d.model, "input_tokens": 812, "output_tokens": 377,
                       "cost_usd": 0.0042, "duration_seconds": 1.2})


def measure(users: int, traced: bool) -> tuple[int, dict[str, int], dict[str, int]]:
    """Bytes per user between a warmed-up engine and one holding ``users`` more users,
    the traced bytes per user by the module that allocated them, and the entries."""
    engine = Engine.from_path(RULES, clock=lambda: T0, store_options=StoreOptions())
    fill(engine, 0, 500)  # rules, plans, caches, the groups: paid once, not per user
    gc.collect()
    if traced:
        tracemalloc.start()
        before_snapshot = tracemalloc.take_snapshot()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    fill(engine, 500, users)
    gc.collect()
    by_module: dict[str, int] = {}
    if traced:
        after = tracemalloc.get_traced_memory()[0]
        diff = tracemalloc.take_snapshot().compare_to(before_snapshot, "filename")
        for stat in diff:
            name = Path(stat.traceback[0].filename).name
            by_module[name] = by_module.get(name, 0) + stat.size_diff // users
        tracemalloc.stop()
    else:
        after = rss_bytes()
    entries = engine.store_entries()
    engine.close()
    return (after - before) // users, by_module, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    args = parser.parse_args()
    resident, _, _ = measure(args.users, traced=False)  # first: a fresh heap
    traced, by_module, entries = measure(args.users, traced=True)
    print(f"memory store, {args.users:,} users, one decision and one report each")
    print("| what | per user |")
    print("|---|---|")
    print(f"| resident memory (RSS) | {resident:,} bytes |")
    print(f"| Python allocations (tracemalloc) | {traced:,} bytes |")
    top = sorted(by_module.items(), key=lambda kv: -kv[1])[:6]
    for name, size in top:
        print(f"| of which allocated in {name} | {size:,} bytes |")
    print(f"| entries at the end | {', '.join(f'{k} {v:,}' for k, v in entries.items())} |")


if __name__ == "__main__":
    main()
