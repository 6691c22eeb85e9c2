"""Client benchmark: what ``tollway.client`` costs over driving the same server with raw stubs.

    python bench/bench_client.py [--rules examples/gateway.rules] [--seconds 3] [--rounds 5]

One ``tollway serve`` (memory store, the gateway example rules) in a subprocess; this
process is the client. The same request mix (tiers, categories, regions, groups, models,
an estimate) is sent four ways:
  (a) a raw synchronous stub: the message built by hand from the request mapping, as a
      gateway without the client would, one call at a time;
  (b) ``Client.decide(mapping)``, one call at a time: validation, conversion both ways,
      the deadline and the on_error guard; a and b take turns call by call;
  (c) a raw grpc.aio stub, ``--inflight`` calls in flight;
  (d) ``AsyncClient.decide(mapping)``, ``--inflight`` calls in flight.
c and d alternate round by round (``--rounds``). Each figure is the median round, so drift
on a shared machine hits both sides alike. Target: b costs at most 10% more than
a (calls/s and p50), d likewise against c.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_service import MODELS, _print, _row, alternate, tollway_server  # noqa: E402

from tollway.client import AsyncClient, Client  # noqa: E402
from tollway.v1 import tollway_pb2 as pb  # noqa: E402
from tollway.v1 import tollway_pb2_grpc as pb_grpc  # noqa: E402

TIMEOUT = 5.0  # generous: a missed deadline would measure the fallback, not the call


def requests(count: int) -> list[dict[str, Any]]:
    """The request mix of bench_service.py, as the mappings a gateway holds."""
    tiers = ("free", "pro", "enterprise")
    out = []
    for i in range(count):
        u = i % 500
        req: dict[str, Any] = {
            "request_id": f"r{i}",
            "user": {"id": f"user-{u}", "metadata": {
                "tier": tiers[u % 3], "region": "eu" if u % 4 == 0 else "us",
                "categories": ["vip"] if u % 5 == 0 else [],
            }},
            "model": MODELS[i % len(MODELS)],
            "estimate": {"input_tokens": 200, "output_tokens": 300, "cost_usd": 0.002},
        }
        if u % 2 == 0:
            req["group"] = {"id": f"team-{u % 20}", "metadata": {"monthly_credits": 1_000_000}}
        out.append(req)
    return out


def by_hand(req: Mapping[str, Any]) -> pb.DecideRequest:
    """The message a gateway writes without the client."""
    msg = pb.DecideRequest(request_id=req["request_id"], model=req["model"])
    for field in ("user", "group"):
        if field in req:
            entity = getattr(msg, field)
            entity.id = req[field]["id"]
            entity.metadata.update(req[field]["metadata"])
    e = req["estimate"]
    msg.estimate.input_tokens = e["input_tokens"]
    msg.estimate.output_tokens = e["output_tokens"]
    msg.estimate.cost_usd = e["cost_usd"]
    return msg


Rounds = list[tuple[float, list[float]]]


def interleaved(calls: dict[str, Callable[[dict[str, Any]], object]],
                reqs: list[dict[str, Any]], seconds: float) -> dict[str, tuple[float, list[float]]]:
    """One call at a time, the sides taking turns call by call, so every side meets the same
    moments of a noisy machine. Each side's time is the sum of its own calls."""
    clock = time.perf_counter
    lat: dict[str, list[float]] = {name: [] for name in calls}
    sides = list(calls.items())
    n = len(reqs)
    i = 0
    stop = clock() + seconds * len(sides)
    while clock() < stop:
        req = reqs[i % n]
        for name, call in sides:
            t = clock()
            call(req)
            lat[name].append(clock() - t)
        i += 1
    return {name: (sum(v), v) for name, v in lat.items()}


def sync_round(address: str, reqs: list[dict[str, Any]],
               seconds: float) -> dict[str, tuple[float, list[float]]]:
    """(a) and (b), taking turns."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.TollwayStub(channel)

    def raw(req: dict[str, Any]) -> object:
        d = stub.Decide(by_hand(req), timeout=TIMEOUT)
        return d.allowed, d.model, d.decision_id

    with Client(address, timeout=TIMEOUT) as client:
        measured = interleaved({"a": raw, "b": client.decide}, reqs, seconds)
    channel.close()
    return measured


async def _concurrent(call: Callable[[dict[str, Any]], Awaitable[object]],
                      reqs: list[dict[str, Any]], inflight: int,
                      seconds: float) -> tuple[float, list[float]]:
    clock = time.perf_counter
    lat: list[float] = []
    n = len(reqs)
    stop = clock() + seconds

    async def worker(k: int) -> None:
        while clock() < stop:
            t = clock()
            await call(reqs[k % n])
            lat.append(clock() - t)
            k += inflight

    start = clock()
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    return clock() - start, lat


def raw_aio_runner(address: str, reqs: list[dict[str, Any]],
                   inflight: int) -> Callable[[float], tuple[float, list[float]]]:
    """(c): a round of ``inflight`` raw grpc.aio calls at a time."""
    def run(seconds: float) -> tuple[float, list[float]]:
        async def main() -> tuple[float, list[float]]:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.TollwayStub(channel)

                async def raw(req: dict[str, Any]) -> object:
                    d = await stub.Decide(by_hand(req), timeout=TIMEOUT)
                    return d.allowed, d.model, d.decision_id

                await raw(reqs[0])  # connected before the clock starts
                return await _concurrent(raw, reqs, inflight, seconds)
        return asyncio.run(main())
    return run


def async_client_runner(address: str, reqs: list[dict[str, Any]],
                        inflight: int) -> Callable[[float], tuple[float, list[float]]]:
    """(d): a round of ``inflight`` ``AsyncClient.decide`` calls at a time."""
    def run(seconds: float) -> tuple[float, list[float]]:
        async def main() -> tuple[float, list[float]]:
            async with AsyncClient(address, timeout=TIMEOUT) as client:
                await client.decide(reqs[0])
                return await _concurrent(client.decide, reqs, inflight, seconds)
        return asyncio.run(main())
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rules", default=str(ROOT / "examples" / "gateway.rules"))
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inflight", type=int, default=64)
    args = ap.parse_args()
    reqs = requests(2000)
    sync_rounds: dict[str, Rounds] = {"a": [], "b": []}
    with tollway_server(Path(args.rules)) as address:
        sync_round(address, reqs, min(1.0, args.seconds))  # warm the server's caches first
        for _ in range(args.rounds):
            for key, measured in sync_round(address, reqs, args.seconds).items():
                sync_rounds[key].append(measured)
        async_rounds = alternate(
            {"c": raw_aio_runner(address, reqs, args.inflight),
             "d": async_client_runner(address, reqs, args.inflight)},
            args.rounds, args.seconds * args.rounds,
        )
    note = f"median of {args.rounds} rounds"
    a = _row("(a) raw stub, 1 in flight", sync_rounds["a"], note)
    b = _row("(b) Client.decide, 1 in flight", sync_rounds["b"], note)
    c = _row(f"(c) raw aio stub, {args.inflight} in flight", async_rounds["c"], note)
    d = _row(f"(d) AsyncClient.decide, {args.inflight} in flight", async_rounds["d"], note)
    _print([a, b, c, d], [
        f"client cost, 1 in flight: calls/s a/b = {a.calls_per_s / b.calls_per_s:.3f}, "
        f"p50 b/a = {b.p50_ms / a.p50_ms:.3f} (target <= 1.10)",
        f"client cost, {args.inflight} in flight: calls/s c/d = "
        f"{c.calls_per_s / d.calls_per_s:.3f}, p50 d/c = {d.p50_ms / c.p50_ms:.3f} "
        "(target <= 1.10)",
        f"server: tollway serve, memory store, {Path(args.rules).name}, in a subprocess; "
        f"client: this process; {os.cpu_count()} CPUs; {args.seconds:g}s per row per round",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
