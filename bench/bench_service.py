"""Service benchmark: tollway beside its peers and its ceilings, as ratios from one run.

    python bench/bench_service.py [--seconds 6] [--inflight 64] [--only grpc,redis,workers,cluster,balances]

Three groups of rows; within a group the rows are measured in alternating rounds (one
round of each, then again, ``--rounds`` times) and each row shows its median round, so
background load hits every row alike and the ratios under the table hold even on a
shared machine.

grpc      (a) Decide over gRPC, memory store, the gateway example rules (server process);
          (b) an empty unary RPC on a grpc.aio server with the same options (the stack's
              ceiling). a/b: target >= 0.7. The client runs in this process with
              ``--inflight`` calls outstanding and sends pre-serialized requests.
          (b2) the same empty RPC with its decoding guarded as every tollway method is
              (registered on ``GuardedServer``); b2/b is what the guard costs (1.00: free).
          (a2) (a) with ``--auth``, a bearer token on every call; a2/a is what checking
              a token costs a Decide (1.00: free).
redis     all in this process, sequential, on one private redis-server:
          (e) ``Engine.decide`` with 3 quotas (1m, 1h, 1d) per user, as it ships (usage
              events appended, the engine's ingester thread writing its usage database);
          (e0) the same with ``usage_db=None``: counters only, as the peers below;
          (p) a redis-py ``PING``: one round trip, nothing else (target e <= 2x p in time);
          (r) pyrate-limiter 4.5, 3 rates in one Lua call (``try_acquire``, per-user
              bucket; target e >= 1.2x r in calls/s);
          (l) the ``limits`` library: the same 3 limits as 3 calls (not all-or-nothing).
          Then (c): Decide over gRPC on the same Redis, with the commands each Decide
          sent (MONITOR: one EVALSHA and nothing else) and ran inside Redis
          (INFO commandstats) and Redis's own time per script call.
workers   Decide over gRPC on Redis with ``--workers 1`` and ``--workers 2``, the client
          in its own process (8 channels, so that the kernel spreads connections).
cluster   one Redis beside a Redis Cluster of 3 masters and 3 replicas (all on this
          machine), ``Engine.decide`` in this process, sequential: (s1)/(k1) 3 quotas per
          user, one script call on either; (s2)/(k2) 2 quotas per user and 1 per group,
          whose shards differ on the cluster: two script calls at once, then the usage
          event's commit. Then (sg)/(kg): Decide over gRPC, the (k2) rules, ``--inflight``.

balances  ``Engine.decide`` on one private redis-server, in this process, sequential, as it
          ships (usage on), each decision reported at once (its report is not timed):
          (q1) one quota of cost per group; (qb) the same quota ``then`` a balance, the
          quota used up so that the balance pays (its reservation in the same script
          call). qb/q1 in time per Decide: target <= 1.2.

Absolute figures drift with the machine's load; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
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
from contextlib import ExitStack, contextmanager
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
CLUSTER_RULES = """
default allow
quota per_minute limits requests to 1_000_000 per 1m for each user
quota tokens     limits tokens to 1_000_000_000 per 1d for each user
quota team       limits requests to 1_000_000_000 per 1h for each group
rule everyone { enforce per_minute, tokens, team }
"""
USERS = 500
MODELS = ("openai/gpt-5", "openai/gpt-4.1", "anthropic/claude-sonnet-4.6", "azure-eu/gpt-4.1")


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
def tollway_server(rules: Path, store: str = "memory", *extra: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway", "serve", "--rules", str(rules), "--store", store,
         "--listen", "127.0.0.1:0", "--http", "off", "--reload-interval", "0",
         "--log-level", "info", *extra],
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
        proc.wait(timeout=60)


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
        deadline = time.monotonic() + 30
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


# ------------------------------------------------------------------ rounds


def _row(name: str, rounds: list[tuple[float, list[float]]], note: str = "") -> Row:
    """The median round's rate; latencies pooled over every round."""
    rates = [len(lat) / elapsed for elapsed, lat in rounds]
    lat = sorted(x for _, ls in rounds for x in ls)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return Row(name, statistics.median(rates), statistics.median(lat) * 1e3, p99 * 1e3, note,
               len(lat))


def alternate(
    runners: dict[str, Callable[[float], tuple[float, list[float]]]], rounds: int, seconds: float
) -> dict[str, list[tuple[float, list[float]]]]:
    """Run each runner for ``seconds / rounds`` in turn, ``rounds`` times over."""
    out: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            out[name].append(run(seconds / rounds))
    return out


def sequential(call: Callable[[int], object]) -> Callable[[float], tuple[float, list[float]]]:
    """A runner that calls ``call(i)`` back to back for the given seconds."""
    state = {"i": 0}

    def run(seconds: float) -> tuple[float, list[float]]:
        clock = time.perf_counter
        lat: list[float] = []
        i = state["i"]
        start = clock()
        stop = start + seconds
        while True:
            t = clock()
            if t >= stop:
                break
            call(i)
            lat.append(clock() - t)
            i += 1
        state["i"] = i
        return clock() - start, lat

    return run


# ------------------------------------------------------------------ gRPC load


def _decide_requests(count: int, models: tuple[str, ...]) -> list[bytes]:
    """A mix over the example rules: tiers, categories, regions, groups, models."""
    tiers = ("free", "pro", "enterprise")
    out = []
    for i in range(count):
        u = i % USERS  # a user's metadata is the same in each of its requests, as in real traffic
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
    calls: list[Callable[[bytes], Awaitable[bytes]]], requests: list[bytes], inflight: int,
    seconds: float,
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    clock = time.perf_counter
    stop = clock() + seconds

    async def worker(k: int) -> None:
        call = calls[k % len(calls)]
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


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """The one event loop every gRPC load of this process runs on (grpc.aio binds to it)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP)
    return _LOOP


class GrpcLoad:
    """Channels to one server, kept open across rounds."""

    def __init__(self, address: str, method: str, requests: list[bytes], inflight: int,
                 channels: int = 1, token: str | None = None) -> None:
        self.requests = requests
        self.inflight = inflight
        metadata = (("authorization", f"Bearer {token}"),) if token else None

        async def open_channels() -> list[grpc.aio.Channel]:
            # a channel of its own each (no shared subchannel): one connection each
            return [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(channels)]

        self.channels = _loop().run_until_complete(open_channels())
        # bytes in, bytes out: no client-side parsing
        self.calls = [functools.partial(c.unary_unary(method), metadata=metadata)
                      for c in self.channels]
        self(0.5)  # warm-up: connections, caches

    def __call__(self, seconds: float) -> tuple[float, list[float]]:
        return _loop().run_until_complete(
            _drive(self.calls, self.requests, self.inflight, seconds)
        )

    def close(self) -> None:
        for c in self.channels:
            _loop().run_until_complete(c.close())


def _client_main(spec: str) -> None:
    """``--client ADDRESS,SECONDS,INFLIGHT,CHANNELS``: a load in its own process; prints
    ``[elapsed, [latencies…]]`` as JSON."""
    address, seconds, inflight, channels = spec.split(",")
    load = GrpcLoad(address, "/tollway.v1.Tollway/Decide", _decide_requests(2000, MODELS),
                    int(inflight), int(channels))
    elapsed, lat = load(float(seconds))
    load.close()
    print(json.dumps([elapsed, lat]))


def client_process(address: str, inflight: int, channels: int) -> Callable[[float], tuple[float, list[float]]]:
    """A runner that drives ``address`` from a fresh client process for each round."""

    def run(seconds: float) -> tuple[float, list[float]]:
        done = subprocess.run(
            [sys.executable, __file__, "--client", f"{address},{seconds},{inflight},{channels}"],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        elapsed, lat = json.loads(done.stdout)
        return float(elapsed), [float(x) for x in lat]

    return run


# ------------------------------------------------------------------ Redis rows


def _reset_stats(port: int) -> None:
    import redis

    client = redis.Redis(port=port)
    client.config_resetstat()
    client.close()


def _commandstats(port: int) -> dict[str, dict[str, float]]:
    import redis

    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): v for k, v in stats.items()
            if k.removeprefix("cmdstat_") not in ("info", "config|resetstat")}


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


def engine_runner(
    port: int, rules: Path, usage: bool = True
) -> tuple[Callable[[float], tuple[float, list[float]]], Callable[[], None]]:
    """(e) ``Engine.decide`` on Redis with 3 quotas, in-process and sequential: as it ships
    (each admitted decision appends a usage event; the engine's ingester thread moves
    them into its usage database), or with ``usage=False`` counters only (``usage_db=None``),
    what the peers do."""
    from tollway import Engine

    engine = Engine.from_path(
        rules, store=f"redis://127.0.0.1:{port}/2",
        key_prefix="bench-e:" if usage else "bench-e0:",
        **({} if usage else {"usage_db": None}),
    )
    reqs = [
        {"user": {"id": f"user-{u}"}, "model": "m", "estimate": {"output_tokens": 500}}
        for u in range(USERS)
    ]
    for r in reqs:  # warm the entity cache and the script cache
        engine.decide(r)
    return sequential(lambda i: engine.decide(reqs[i % USERS])), engine.close


def ping_runner(port: int) -> tuple[Callable[[float], tuple[float, list[float]]], Callable[[], None]]:
    """(p) one redis-py PING: a round trip and the client library, nothing else."""
    import redis

    client = redis.Redis(port=port, db=0)
    client.ping()
    return sequential(lambda i: client.ping()), client.close


def pyrate_runner(port: int) -> tuple[Callable[[float], tuple[float, list[float]]], Callable[[], None]]:
    """(r) pyrate-limiter: one bucket per user holding the 3 rates, one Lua call each."""
    import redis
    from pyrate_limiter import (
        AbstractBucket,
        BucketFactory,
        Duration,
        Limiter,
        Rate,
        RateItem,
        RedisBucket,
    )

    client = redis.Redis(port=port, db=3)
    # pyrate wants limits that grow with the interval and densities that do not
    rates = [Rate(1_000_000, Duration.MINUTE), Rate(10_000_000, Duration.HOUR),
             Rate(100_000_000, Duration.DAY)]

    class PerUser(BucketFactory):
        def __init__(self) -> None:
            self.buckets: dict[str, AbstractBucket] = {}

        def wrap_item(self, name: str, weight: int = 1) -> RateItem:
            return RateItem(name, int(time.time() * 1000), weight=weight)

        def get(self, item: RateItem) -> AbstractBucket:
            bucket = self.buckets.get(item.name)
            if bucket is None:
                bucket = self.buckets[item.name] = RedisBucket.init(
                    rates, client, f"bench-r:{item.name}"
                )
            return bucket

    limiter = Limiter(PerUser())
    names = [f"user-{u}" for u in range(USERS)]
    for name in names:
        limiter.try_acquire(name, blocking=False)
    return sequential(lambda i: limiter.try_acquire(names[i % USERS], blocking=False)), client.close


def limits_runner(port: int) -> tuple[Callable[[float], tuple[float, list[float]]], Callable[[], None]]:
    """(l) the ``limits`` library: the same 3 limits as three calls."""
    from limits import parse
    from limits.storage import RedisStorage
    from limits.strategies import SlidingWindowCounterRateLimiter

    storage = RedisStorage(f"redis://127.0.0.1:{port}/1")
    limiter = SlidingWindowCounterRateLimiter(storage)
    items = (parse("1000000/minute"), parse("1000000/hour"), parse("1000000000/day"))

    def one(i: int) -> bool:
        key = f"user-{i % USERS}"
        return all([limiter.hit(items[0], key), limiter.hit(items[1], key),
                    limiter.hit(items[2], key, cost=500)])

    for i in range(USERS):
        one(i)
    return sequential(one), lambda: None


# ------------------------------------------------------------------ groups


def _token_file(directory: Path) -> tuple[Path, str]:
    """A token file as a deployment has one: the gateway's token among a few others."""
    from tollway.server.auth import new_token, token_block

    token = new_token()
    path = directory / "tokens.toml"
    path.write_text("".join(token_block(f"other-{i}", ["admin"], new_token()) for i in range(4))
                    + token_block("gateway", ["decide"], token))
    return path, token


def grpc_group(args: argparse.Namespace, rows: list[Row], notes: list[str]) -> None:
    requests = _decide_requests(2000, MODELS)
    with tempfile.TemporaryDirectory() as d:
        tokens, token = _token_file(Path(d))
        with (
            tollway_server(Path(args.rules)) as decide_at,
            tollway_server(Path(args.rules), "memory", "--auth", str(tokens)) as guarded_decide,
            echo_server() as echo_at,
            echo_server(guarded=True) as guarded_at,
        ):
            a = GrpcLoad(decide_at, "/tollway.v1.Tollway/Decide", requests, args.inflight)
            a2 = GrpcLoad(guarded_decide, "/tollway.v1.Tollway/Decide", requests, args.inflight,
                          token=token)
            b = GrpcLoad(echo_at, "/bench.Echo/Ping", [b""], args.inflight)
            b2 = GrpcLoad(guarded_at, "/bench.Echo/Ping", [b""], args.inflight)
            got = alternate({"a": a, "a2": a2, "b": b, "b2": b2}, args.rounds, args.seconds)
            for load in (a, a2, b, b2):
                load.close()
    ra = _row("(a) Decide, memory store, gateway.rules", got["a"])
    ra2 = _row("(a2) the same with --auth and a token", got["a2"])
    rb = _row("(b) empty unary RPC, same grpc.aio options", got["b"])
    rb2 = _row("(b2) the same, its decoding guarded", got["b2"])
    rows += [ra, ra2, rb, rb2]
    notes.append(f"a/b = {ra.calls_per_s / rb.calls_per_s:.2f} (target >= 0.7); client in this "
                 f"process, {args.inflight} calls in flight")
    notes.append(f"a2/a = {ra2.calls_per_s / ra.calls_per_s:.2f} (what checking a token costs "
                 "a Decide; 1.00 is free)")
    notes.append(f"b2/b = {rb2.calls_per_s / rb.calls_per_s:.2f} (what guarding the decoding "
                 "costs an empty call; 1.00 is free)")


def redis_group(args: argparse.Namespace, rows: list[Row], notes: list[str]) -> None:
    with redis_server() as port, tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        rules = Path(d) / "redis.rules"
        rules.write_text(REDIS_RULES)
        runners = {}
        for key, make in (("e", lambda: engine_runner(port, rules)),
                          ("e0", lambda: engine_runner(port, rules, usage=False)),
                          ("p", lambda: ping_runner(port)),
                          ("r", lambda: pyrate_runner(port)), ("l", lambda: limits_runner(port))):
            run, close = make()
            stack.callback(close)
            runners[key] = run
        got = alternate(runners, args.rounds, args.seconds)
        e = _row("(e) Engine.decide, Redis, 3 quotas", got["e"], "in-process, usage on")
        e0 = _row("(e0) the same, counters only", got["e0"], "usage_db=None")
        p = _row("(p) redis-py PING, same Redis", got["p"], "one round trip")
        r = _row("(r) pyrate-limiter try_acquire, 3 rates", got["r"], "one Lua call per request")
        lim = _row("(l) limits: 3x hit(), 3 limits", got["l"], "3 calls, not all-or-nothing")
        rows += [e, e0, p, r, lim]
        for name, row in (("e", e), ("e0", e0)):
            notes.append(
                f"{name} costs {p.calls_per_s / row.calls_per_s:.2f} PINGs (target <= 2); "
                f"{name}/r = {row.calls_per_s / r.calls_per_s:.2f} (target >= 1.2); "
                f"{name}/l = {row.calls_per_s / lim.calls_per_s:.2f}")

        requests = _decide_requests(2000, MODELS)
        with tollway_server(rules, f"redis://127.0.0.1:{port}/0") as address:
            load = GrpcLoad(address, "/tollway.v1.Tollway/Decide", requests, args.inflight)
            _reset_stats(port)
            elapsed, lat = load(args.seconds / 2)
            load.close()
            stats = _commandstats(port)
            sent = client_commands(port, address, requests)
        calls = len(lat)
        c = _row("(c) Decide over gRPC, Redis, 3 quotas", [(elapsed, lat)],
                 "sent/Decide: " + ", ".join(f"{k}={v:.2f}" for k, v in sent.items()))
        rows.append(c)
        inside = {k: v["calls"] / calls for k, v in sorted(stats.items()) if k != "evalsha"}
        script = stats.get("evalsha", {})
        notes.append("(c) per Decide inside Redis: " + ", ".join(
            f"{k}={v:.2f}" for k, v in inside.items()))
        if script:
            notes.append(f"(c) Redis's time per script call: {script['usec_per_call']:.1f} µs")


def workers_group(args: argparse.Namespace, rows: list[Row], notes: list[str]) -> None:
    with redis_server() as port, tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        rules = Path(d) / "redis.rules"
        rules.write_text(REDIS_RULES)
        store = f"redis://127.0.0.1:{port}/0"
        one = stack.enter_context(tollway_server(rules, store, "--workers", "1"))
        two = stack.enter_context(tollway_server(rules, store, "--workers", "2"))
        got = alternate({
            "1": client_process(one, args.inflight, 8),
            "2": client_process(two, args.inflight, 8),
        }, args.rounds, args.seconds)
    w1 = _row("(w1) Decide over gRPC, Redis, --workers 1", got["1"], "client: own process")
    w2 = _row("(w2) the same, --workers 2", got["2"], "client: own process")
    rows += [w1, w2]
    notes.append(f"w2/w1 = {w2.calls_per_s / w1.calls_per_s:.2f} on {os.cpu_count()} CPUs "
                 "shared by the client, the workers and Redis")


def cluster_engine_runner(
    store: str, rules: Path, prefix: str, group: bool
) -> tuple[Callable[[float], tuple[float, list[float]]], Callable[[], None]]:
    """``Engine.decide`` on ``store``, sequential, users with (or without) a group."""
    from tollway import Engine

    engine = Engine.from_path(rules, store=store, key_prefix=prefix)
    reqs: list[dict[str, object]] = [
        {"user": {"id": f"user-{u}"}, "model": "m", "estimate": {"output_tokens": 500},
         **({"group": {"id": f"team-{u % 50}"}} if group else {})}
        for u in range(USERS)
    ]
    for r in reqs:
        engine.decide(r)
    return sequential(lambda i: engine.decide(reqs[i % USERS])), engine.close


def cluster_group(args: argparse.Namespace, rows: list[Row], notes: list[str]) -> None:
    if shutil.which("redis-cli") is None:
        raise FileNotFoundError("redis-cli")
    from tests.redis_processes import RedisClusterNodes

    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server")
    with redis_server() as port, tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        cluster = RedisClusterNodes(exe, Path(d))
        stack.callback(cluster.stop)
        one_rules, two_rules = Path(d) / "user.rules", Path(d) / "team.rules"
        one_rules.write_text(REDIS_RULES)
        two_rules.write_text(CLUSTER_RULES)
        single = f"redis://127.0.0.1:{port}/0"
        runners = {}
        for key, store, rules, group in (
            ("s1", single, one_rules, False), ("k1", cluster.url, one_rules, False),
            ("s2", single, two_rules, True), ("k2", cluster.url, two_rules, True),
        ):
            run, close = cluster_engine_runner(store, rules, f"bench-{key}:", group)
            stack.callback(close)
            runners[key] = run
        got = alternate(runners, args.rounds, args.seconds)
        s1 = _row("(s1) Engine.decide, one Redis, 3 user quotas", got["s1"], "1 script call")
        k1 = _row("(k1) the same on a Redis Cluster", got["k1"], "1 shard: 1 script call")
        s2 = _row("(s2) Engine.decide, one Redis, user+group", got["s2"], "1 script call")
        k2 = _row("(k2) the same on a Redis Cluster", got["k2"],
                  "2 shards at once + event commit")
        rows += [s1, k1, s2, k2]
        notes.append(f"k1/s1 = {k1.calls_per_s / s1.calls_per_s:.2f}; "
                     f"k2/s2 = {k2.calls_per_s / s2.calls_per_s:.2f} (in-process, sequential)")
        requests = _decide_requests(2000, MODELS)
        grpc_runners = {}
        for key, store in (("sg", single), ("kg", cluster.url)):
            address = stack.enter_context(tollway_server(
                two_rules, store, "--key-prefix", f"bench-{key}:"))
            load = GrpcLoad(address, "/tollway.v1.Tollway/Decide", requests, args.inflight)
            stack.callback(load.close)
            grpc_runners[key] = load
        got = alternate(grpc_runners, args.rounds, args.seconds)
        sg = _row("(sg) Decide over gRPC, one Redis", got["sg"], "user+group rules")
        kg = _row("(kg) Decide over gRPC, Redis Cluster", got["kg"], "user+group rules")
        rows += [sg, kg]
        notes.append(f"kg/sg = {kg.calls_per_s / sg.calls_per_s:.2f} over gRPC, "
                     f"{args.inflight} in flight, on {os.cpu_count()} CPUs shared by the "
                     "server, the client, one Redis and 6 cluster nodes")


def _print(rows: list[Row], notes: list[str]) -> None:
    print()
    print(f"{'row':<48} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}  note")
    print("-" * 100)
    for r in rows:
        print(f"{r.name:<48} {r.calls_per_s:>10,.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}  {r.note}")
    print()
    for n in notes:
        print(n)


BALANCE_RULES = {
    "q1": "quota plan limits cost to 1_000_000 per 1d for each group\nrule paid { enforce plan }\n",
    "qb": "quota plan limits cost to 0.000001 per 1d for each group\n"
          "balance credits of cost for each group\n"
          "rule paid { enforce plan then credits }\n",
}


def balance_runner(
    port: int, which: str, directory: Path
) -> tuple[Callable[[float], tuple[float, list[float]]], Callable[[], None]]:
    """(q1)/(qb): ``Engine.decide`` then ``Engine.report`` for 500 groups; only the
    decisions are timed (the rate is decisions per second spent deciding)."""
    from tollway import Engine
    from tollway.policy.stores import StoreOptions

    engine = Engine.from_text(
        BALANCE_RULES[which], store=f"redis://127.0.0.1:{port}/3", key_prefix=f"bench-{which}:",
        usage_db=f"sqlite:///{directory / (which + '.db')}",
        store_options=StoreOptions(timeout=2.0),  # a shared machine: no refusal by a stall
    )
    if which == "qb":
        for g in range(USERS):
            engine.credit("group", f"group-{g}", "credits", 1_000_000, idempotency_key="bench")
    state = {"i": 0}

    def once(i: int) -> float:
        body = {"request_id": f"r{i}", "user": {"id": f"user-{i % USERS}"},
                "group": {"id": f"group-{i % USERS}"}, "model": "m",
                "estimate": {"cost_usd": 0.01}}
        t = time.perf_counter()
        d = engine.decide(body)
        took = time.perf_counter() - t
        assert d.allowed, d.message
        engine.report({**{k: body[k] for k in ("request_id", "user", "group", "model")},
                       "decision_id": d.decision_id, "cost_usd": 0.008})
        return took

    for _ in range(USERS):  # warm the caches, fill the quota of (qb)
        once(state["i"])
        state["i"] += 1

    def run(seconds: float) -> tuple[float, list[float]]:
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            lat.append(once(state["i"]))
            state["i"] += 1
        return sum(lat), lat

    return run, engine.close


def balances_group(args: argparse.Namespace, rows: list[Row], notes: list[str]) -> None:
    with redis_server() as port, tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        runners = {}
        for key in ("q1", "qb"):
            run, close = balance_runner(port, key, Path(d))
            stack.callback(close)
            runners[key] = run
        got = alternate(runners, args.rounds, args.seconds)
        q1 = _row("(q1) Engine.decide, Redis, 1 quota", got["q1"], "in-process, usage on")
        qb = _row("(qb) the same quota then a balance", got["qb"], "the balance pays")
        rows += [q1, qb]
        notes.append(f"qb/q1 in time per Decide = {q1.calls_per_s / qb.calls_per_s:.2f} "
                     "(target <= 1.2)")


GROUPS = {"grpc": grpc_group, "redis": redis_group, "workers": workers_group,
          "cluster": cluster_group, "balances": balances_group}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rules", default=str(ROOT / "examples" / "gateway.rules"))
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per row")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds per group")
    ap.add_argument("--inflight", type=int, default=64, help="gRPC calls in flight")
    ap.add_argument("--only", default=",".join(GROUPS), help="groups to run: grpc,redis,workers,cluster,balances")
    ap.add_argument("--echo-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--echo-guarded", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        _echo_main(args.echo_server, args.echo_guarded)
        return 0
    if args.client:
        _client_main(args.client)
        return 0

    rows: list[Row] = []
    notes: list[str] = [f"{os.cpu_count()} CPUs; {args.seconds:g}s per row in "
                        f"{args.rounds} alternating rounds; medians of the rounds"]
    for name in args.only.split(","):
        try:
            GROUPS[name](args, rows, notes)
        except FileNotFoundError as exc:
            notes.append(f"group {name} skipped: {exc.filename or exc} not found")
    _print(rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
