"""Service benchmark: Decide over gRPC against an empty RPC on the same stack, and Redis costs.

    python bench/bench_service.py [--rules examples/gateway.rules] [--seconds 5] [--inflight 64]

Rows printed:
  (a) Decide over gRPC, memory store, the gateway example rules (server in a subprocess);
  (b) an empty unary RPC on a grpc.aio server with the same options (the stack's ceiling)
      and the ratio a/b (target >= 0.7);
  (b2) the same empty RPC with its decoding guarded as tollway's methods are (registered
       on ``GuardedServer``), and b2/b (what the guard costs);
  (c) Decide on a private redis-server with 3 quotas per request, and the Redis commands
      per Decide read from INFO commandstats (target: one EVALSHA and nothing else);
  (d) the ``limits`` library doing the same 3 limits on the same Redis (a peer row);
  (e) ``Engine.decide`` in-process on the same Redis and quotas, sequential like (d), so
      e/d compares the two on equal terms.
The client runs in this process with ``--inflight`` calls outstanding and sends
pre-serialized requests, so both servers are measured with the same client cost.
Numbers on a shared 2-core machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tollway.server.app import server_options  # noqa: E402
from tollway.server.decoding import GuardedServer  # noqa: E402
from tollway.v1 import tollway_pb2 as pb  # noqa: E402

READY = re.compile(r"tollway serving: grpc=(\S+)")

# 3 quotas on every request, each for each user: the Redis rows' workload
REDIS_RULES = """
default allow
quota per_minute limits requests to 1_000_000 per 1m for each user
quota per_hour   limits requests to 1_000_000 per 1h for each user
quota tokens     limits tokens to 1_000_000_000 per 1d for each user
rule everyone { enforce per_minute, per_hour, tokens }
"""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    note: str = ""
    calls: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ servers


@contextmanager
def tollway_server(rules: Path, store: str = "memory") -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway", "serve", "--rules", str(rules), "--store", store,
         "--listen", "127.0.0.1:0", "--http", "off", "--reload-interval", "0",
         "--log-level", "info"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    assert proc.stderr is not None
    address = None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if m := READY.search(line):
            address = m.group(1)
            break
    if address is None:
        proc.wait()
        raise SystemExit("tollway serve did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True).start()
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _echo_main(port_file: str, guarded: bool) -> None:
    """The empty-RPC server: grpc.aio with tollway's server options, one unary method
    (whose request is decoded by an identity function); ``guarded``: registered on
    tollway's ``GuardedServer``, as every method of the real server is."""

    async def serve() -> None:
        server = grpc.aio.server(options=server_options())
        if guarded:
            server = GuardedServer(server)

        async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b""

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo",
            {"Ping": grpc.unary_unary_rpc_method_handler(ping, request_deserializer=bytes)},
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(serve())


@contextmanager
def echo_server(guarded: bool = False) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        port_file = os.path.join(d, "port")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--echo-server", port_file,
             *(["--echo-guarded"] if guarded else [])],
            cwd=ROOT,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file) or not Path(port_file).read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("echo server did not start")
            time.sleep(0.02)
        try:
            yield f"127.0.0.1:{Path(port_file).read_text()}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextmanager
def redis_server() -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server")
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise
                time.sleep(0.02)
        client.close()
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


# ------------------------------------------------------------------ load


def _decide_requests(count: int, models: tuple[str, ...]) -> list[bytes]:
    """A mix over the example rules: tiers, categories, regions, groups, models."""
    tiers = ("free", "pro", "enterprise")
    out = []
    for i in range(count):
        u = i % 500  # a user's metadata is the same in each of its requests, as in real traffic
        user = pb.Entity(id=f"user-{u}")
        user.metadata.update({
            "tier": tiers[u % 3], "region": "eu" if u % 4 == 0 else "us",
            "categories": ["vip"] if u % 5 == 0 else [],
        })
        req = pb.DecideRequest(
            request_id=f"r{i}", user=user, model=models[i % len(models)],
            estimate=pb.Estimate(input_tokens=200, output_tokens=300, cost_usd=0.002),
        )
        if u % 2 == 0:
            group = pb.Entity(id=f"team-{u % 20}")
            group.metadata.update({"monthly_credits": 1_000_000})
            req.group.CopyFrom(group)
        out.append(req.SerializeToString())
    return out


async def _drive(
    call: Callable[[bytes], Awaitable[bytes]], requests: list[bytes], inflight: int, seconds: float
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    clock = time.perf_counter
    stop = clock() + seconds

    async def worker(k: int) -> None:
        n = len(requests)
        while clock() < stop:
            req = requests[k % n]
            k += inflight
            t = clock()
            await call(req)
            latencies.append(clock() - t)

    start = clock()
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    return clock() - start, latencies


def measure(address: str, method: str, requests: list[bytes], inflight: int, seconds: float,
            name: str, note: str = "", after_warmup: Callable[[], None] | None = None) -> Row:
    async def run() -> Row:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(method)  # bytes in, bytes out: no client-side parsing
            await _drive(call, requests, inflight, min(1.0, seconds / 4))  # warm-up
            if after_warmup is not None:
                after_warmup()
            elapsed, lat = await _drive(call, requests, inflight, seconds)
        return _row(name, elapsed, lat, note)

    return asyncio.run(run())


def _row(name: str, elapsed: float, lat: list[float], note: str = "") -> Row:
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return Row(name, len(lat) / elapsed, statistics.median(lat) * 1e3, p99 * 1e3, note, len(lat))


def _commandstats(port: int) -> dict[str, int]:
    import redis

    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def client_commands(port: int, address: str, requests: list[bytes], calls: int = 200) -> dict[str, float]:
    """Commands the server sent per Decide, read with MONITOR over ``calls`` sequential Decides.

    INFO commandstats also counts the commands a Lua script runs; MONITOR marks those
    ``[0 lua]``, so only what tollway itself sent over the network is counted here.
    """
    import redis

    client = redis.Redis(port=port)
    seen: dict[str, int] = {}
    ready = threading.Event()
    done = threading.Event()

    def watch() -> None:
        with client.monitor() as m:
            ready.set()
            for event in m.listen():
                cmd = str(event.get("command", "")).split(" ", 1)[0].lower()
                if cmd == "client" and "bench-monitor-end" in str(event.get("command")):
                    break
                if event.get("client_type") == "lua" or "lua" in str(event.get("client_address")):
                    continue
                seen[cmd] = seen.get(cmd, 0) + 1
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    ready.wait(5)
    time.sleep(0.1)

    async def run() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/tollway.v1.Tollway/Decide")
            for i in range(calls):
                await call(requests[i % len(requests)])

    asyncio.run(run())
    marker = redis.Redis(port=port)
    marker.execute_command("CLIENT", "SETNAME", "bench-monitor-end")
    marker.close()
    done.wait(10)
    client.close()
    return {k: v / calls for k, v in sorted(seen.items())}


def _reset_stats(port: int) -> None:
    import redis

    client = redis.Redis(port=port)
    client.config_resetstat()
    client.close()


def limits_row(port: int, seconds: float, users: int = 500) -> tuple[Row, dict[str, int]]:
    """The same 3 limits per request with the ``limits`` library (sequential, one thread)."""
    from limits import parse
    from limits.storage import RedisStorage
    from limits.strategies import SlidingWindowCounterRateLimiter

    storage = RedisStorage(f"redis://127.0.0.1:{port}/1")
    limiter = SlidingWindowCounterRateLimiter(storage)
    items = (parse("1000000/minute"), parse("1000000/hour"), parse("1000000000/day"))
    clock = time.perf_counter

    def one(i: int) -> bool:
        # three calls, as a gateway using limits would make them (not all-or-nothing)
        key = f"user-{i % users}"
        return all([limiter.hit(items[0], key), limiter.hit(items[1], key),
                    limiter.hit(items[2], key, cost=500)])

    for i in range(200):
        one(i)
    _reset_stats(port)
    lat: list[float] = []
    stop = clock() + seconds
    start = clock()
    i = 0
    while clock() < stop:
        t = clock()
        one(i)
        lat.append(clock() - t)
        i += 1
    elapsed = clock() - start
    stats = _commandstats(port)
    row = _row("(d) limits 3x hit(), same Redis", elapsed, lat, "in-process, sequential")
    return row, {k: v for k, v in stats.items() if k not in ("info", "config|resetstat")}


def engine_row(port: int, rules: Path, seconds: float, users: int = 500) -> Row:
    """(e) ``Engine.decide`` on the same Redis and 3 quotas, in-process and sequential:
    the like-for-like peer of (d)."""
    from tollway import Engine

    engine = Engine.from_path(rules, store=f"redis://127.0.0.1:{port}/2", key_prefix="bench-e:")
    reqs = [
        {"user": {"id": f"user-{u}"}, "model": "m", "estimate": {"output_tokens": 500}}
        for u in range(users)
    ]
    clock = time.perf_counter
    for r in reqs:  # warm the entity cache and the script cache
        engine.decide(r)
    lat: list[float] = []
    stop = clock() + seconds
    start = clock()
    i = 0
    while clock() < stop:
        t = clock()
        engine.decide(reqs[i % users])
        lat.append(clock() - t)
        i += 1
    elapsed = clock() - start
    engine.close()
    return _row("(e) Engine.decide, same Redis, 3 quotas", elapsed, lat, "in-process, sequential")


# ------------------------------------------------------------------ report


def _print(rows: list[Row], notes: list[str]) -> None:
    print()
    print(f"{'row':<48} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}  note")
    print("-" * 100)
    for r in rows:
        print(f"{r.name:<48} {r.calls_per_s:>10,.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}  {r.note}")
    print()
    for n in notes:
        print(n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default=str(ROOT / "examples" / "gateway.rules"))
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--inflight", type=int, default=64, help="calls in flight")
    ap.add_argument("--no-redis", action="store_true", help="skip rows (c), (d) and (e)")
    ap.add_argument("--echo-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--echo-guarded", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        _echo_main(args.echo_server, args.echo_guarded)
        return 0

    rows: list[Row] = []
    notes: list[str] = [f"client: this process, {args.inflight} calls in flight; "
                        f"{os.cpu_count()} CPUs; {args.seconds:g}s per row"]
    models = ("openai/gpt-5", "openai/gpt-4.1", "anthropic/claude-sonnet-4.6", "azure-eu/gpt-4.1")
    requests = _decide_requests(2000, models)
    with tollway_server(Path(args.rules)) as address:
        a = measure(address, "/tollway.v1.Tollway/Decide", requests, args.inflight, args.seconds,
                    "(a) Decide, memory store, gateway.rules")
    rows.append(a)
    with echo_server() as address:
        b = measure(address, "/bench.Echo/Ping", [b""], args.inflight, args.seconds,
                    "(b) empty unary RPC, same grpc.aio options")
    rows.append(b)
    notes.append(f"a/b = {a.calls_per_s / b.calls_per_s:.2f} (target >= 0.7)")
    with echo_server(guarded=True) as address:
        b2 = measure(address, "/bench.Echo/Ping", [b""], args.inflight, args.seconds,
                     "(b2) the same, decoding guarded")
    rows.append(b2)
    notes.append(f"b2/b = {b2.calls_per_s / b.calls_per_s:.2f} (what guarding the decoding "
                 "costs an empty call; 1.00 is free)")

    if not args.no_redis:
        try:
            with redis_server() as port, tempfile.TemporaryDirectory() as d:
                rules = Path(d) / "redis.rules"
                rules.write_text(REDIS_RULES)
                with tollway_server(rules, f"redis://127.0.0.1:{port}/0") as address:
                    # the warm-up fills entity caches and the script cache; count from zero after
                    c = measure(address, "/tollway.v1.Tollway/Decide", requests, args.inflight,
                                args.seconds, "(c) Decide, Redis store, 3 quotas",
                                after_warmup=lambda: _reset_stats(port))
                    stats = _commandstats(port)
                    sent = client_commands(port, address, requests)
                stats = {k: v for k, v in stats.items() if k not in ("info", "config|resetstat")}
                per = {k: v / c.calls for k, v in sorted(stats.items())}
                rows.append(Row(c.name, c.calls_per_s, c.p50_ms, c.p99_ms,
                                "sent/Decide: " + ", ".join(f"{k}={v:.2f}" for k, v in sent.items())))
                notes.append("(c) commandstats per Decide, script-internal included: "
                             + ", ".join(f"{k}={v:.2f}" for k, v in per.items()))
                d_row, d_stats = limits_row(port, args.seconds)
                n = d_row.calls
                rows.append(Row(d_row.name, d_row.calls_per_s, d_row.p50_ms, d_row.p99_ms,
                                d_row.note + "; cmds/req: " + ", ".join(
                                    f"{k}={v / n:.2f}" for k, v in sorted(d_stats.items()))))
                notes.append(f"c/d = {c.calls_per_s / d_row.calls_per_s:.2f} "
                             "(tollway Decide over gRPC vs limits in-process)")
                e_row = engine_row(port, rules, args.seconds)
                rows.append(e_row)
                notes.append(f"e/d = {e_row.calls_per_s / d_row.calls_per_s:.2f} "
                             "(both in-process and sequential: one script call vs 3 limits calls)")
        except FileNotFoundError:
            notes.append("rows (c) and (d) skipped: redis-server not found")
    _print(rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
