"""Envoy benchmark: ext_authz Check against Decide on one server, and what tollway adds to a
request through a real Envoy.

    python bench/bench_envoy.py [--rules examples/gateway.rules] [--seconds 5] [--inflight 64]
                                [--requests 2000] [--no-envoy]

Rows printed:
  (a) Decide over gRPC on `tollway serve` (memory store, the gateway example rules), the
      same client as bench_service.py: pre-serialized requests, --inflight outstanding;
  (b) Check (ext_authz) on the same server, for the same kinds of users and models, each
      request carrying a chat-completion JSON body with the identity in metadata.tollway,
      as Envoy sends it with with_request_body; b/a is the ratio (target >= 0.9).
      (a) and (b) take turns in six short rounds each, so that load from elsewhere on a
      shared machine falls on both alike;
  (c) one request at a time through Envoy to a local OpenAI-compatible upstream, with the
      examples' ext_authz config and with the same config minus the ext_authz filter:
      p50 and p99, and the difference (the latency tollway adds);
  (d) the same with the ext_proc config (decision, model rewrite, usage read from the
      answer and reported) against the same config minus the ext_proc filter.
Numbers on a shared 2-core machine are noisy: compare ratios and differences from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from bench_service import Row, _drive, _row, tollway_server  # noqa: E402
from envoy.service.auth.v3 import attribute_context_pb2 as ac  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2 as authz  # noqa: E402
from envoy_harness import EXAMPLES, EnvoyProcess, envoy_binary, start_envoy  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

from tollway.v1 import tollway_pb2 as pb  # noqa: E402

MODELS = ("openai/gpt-5", "openai/gpt-4.1", "anthropic/claude-sonnet-4.6")
TIERS = ("free", "pro", "enterprise")
FILTERS = {"ext_authz": "envoy.filters.http.ext_authz", "ext_proc": "envoy.filters.http.ext_proc"}


def _identity(i: int, prefix: str) -> tuple[str, dict[str, object], str]:
    """The i-th request's user, metadata and model; each row has its own users (``prefix``),
    so no row starts from counters another row filled."""
    u = i % 500  # a user's metadata is the same in each of its requests, as in real traffic
    metadata = {"tier": TIERS[u % 3], "region": "eu" if u % 4 == 0 else "us"}
    return f"{prefix}{u}", metadata, MODELS[i % len(MODELS)]


def decide_requests(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        uid, metadata, model = _identity(i, "decide-")
        user = pb.Entity(id=uid)
        user.metadata.update(metadata)
        out.append(pb.DecideRequest(request_id=f"r{i}", user=user, model=model).SerializeToString())
    return out


def chat_body(uid: str, metadata: dict[str, object], model: str) -> bytes:
    tollway = json.dumps({"user": {"id": uid, "metadata": metadata}})
    return json.dumps(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three rivers in Europe."},
            ],
            "max_completion_tokens": 200,
            "metadata": {"tollway": tollway},
        }
    ).encode()


def check_requests(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        uid, metadata, model = _identity(i, "check-")
        http_request = ac.AttributeContext.HttpRequest(
            method="POST", path="/v1/chat/completions", raw_body=chat_body(uid, metadata, model)
        )
        http_request.headers.update(
            {
                ":method": "POST",
                ":path": "/v1/chat/completions",
                ":authority": "127.0.0.1",
                "content-type": "application/json",
                "x-request-id": f"r{i}",
                "authorization": "Bearer sk-bench",
                "user-agent": "OpenAI/Python bench",
            }
        )
        request = authz.CheckRequest(
            attributes=ac.AttributeContext(request=ac.AttributeContext.Request(http=http_request))
        )
        out.append(request.SerializeToString())
    return out


def alternating(
    address: str,
    rows: list[tuple[str, str, list[bytes]]],
    inflight: int,
    seconds: float,
    rounds: int = 6,
) -> list[Row]:
    """Each (name, method, requests) row measured in ``rounds`` short turns, the rows taking
    turns, so that a neighbour's load on a shared machine falls on every row alike."""

    async def run() -> list[Row]:
        async with grpc.aio.insecure_channel(address) as channel:
            calls = [channel.unary_unary(method) for _, method, _ in rows]
            for call, (_, _, requests) in zip(calls, rows, strict=True):  # warm-up
                await _drive(call, requests, inflight, min(1.0, seconds / 4))
            elapsed = [0.0] * len(rows)
            latencies: list[list[float]] = [[] for _ in rows]
            for _ in range(rounds):
                for k, (call, (_, _, requests)) in enumerate(zip(calls, rows, strict=True)):
                    took, lat = await _drive(call, requests, inflight, seconds / rounds)
                    elapsed[k] += took
                    latencies[k] += lat
        return [_row(name, elapsed[k], latencies[k]) for k, (name, _, _) in enumerate(rows)]

    return asyncio.run(run())


# ------------------------------------------------------------- through Envoy


def without_filter(mode: str, directory: Path) -> Path:
    """The example config of ``mode`` minus tollway's filter (and its per-route settings),
    with the same ports, so that the same templating applies."""
    config = yaml.safe_load((EXAMPLES / mode / "envoy.yaml").read_text())
    name = FILTERS[mode]
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != name]
                for host in manager["route_config"]["virtual_hosts"]:
                    for route in host["routes"]:
                        route.get("typed_per_filter_config", {}).pop(name, None)
    out = directory / f"{mode}-plain.source.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@contextmanager
def envoy_for(
    exe: str, mode: str, directory: Path, tollway: int, upstream: int, source: Path | None = None
) -> Iterator[EnvoyProcess]:
    name = mode if source is None else f"{mode}-plain"
    envoy = start_envoy(exe, name, directory, tollway=tollway, upstream=upstream, source=source)
    try:
        yield envoy
    finally:
        envoy.stop()


def sequential_latency(envoy: EnvoyProcess, count: int) -> list[float]:
    """``count`` chat completions one at a time on one kept-alive connection, in seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.listener, timeout=10)
    # enterprise users, each used a few times: no quota of the example rules refuses them
    bodies = [
        chat_body(f"lat-{envoy.mode}-{i}", {"tier": "enterprise"}, "openai/gpt-4.1")
        for i in range(count + 50)
    ]
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    out: list[float] = []
    for i in range(count + 50):  # 50 warm-up requests first
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=bodies[i % len(bodies)], headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise SystemExit(f"{envoy.mode}: HTTP {response.status} through Envoy")
        if i >= 50:
            out.append(elapsed)
    conn.close()
    return out


def _percentiles(lat: list[float]) -> tuple[float, float]:
    lat = sorted(lat)
    return statistics.median(lat) * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=str(ROOT / "examples" / "gateway.rules"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument(
        "--requests", type=int, default=2000, help="sequential requests per Envoy row"
    )
    parser.add_argument("--no-envoy", action="store_true", help="only the Check and Decide rows")
    args = parser.parse_args()

    rows: list[Row] = []
    latency_rows: list[tuple[str, float, float, str]] = []
    with tollway_server(Path(args.rules)) as address:
        decide, check = alternating(
            address,
            [
                ("Decide over gRPC", "/tollway.v1.Tollway/Decide", decide_requests(2000)),
                (
                    "Check (ext_authz) with a JSON body",
                    "/envoy.service.auth.v3.Authorization/Check",
                    check_requests(2000),
                ),
            ],
            args.inflight,
            args.seconds,
        )
        rows += [decide, check]
        ratio = check.calls_per_s / decide.calls_per_s
        rows.append(Row("Check / Decide", ratio, 0, 0, "target >= 0.9"))

        exe, why = (None, "--no-envoy") if args.no_envoy else envoy_binary()
        if exe is None:
            print(f"skipping the Envoy rows: {why}", file=sys.stderr)
        else:
            upstream = FakeOpenAI()
            upstream.start()
            tollway_port = int(address.rsplit(":", 1)[1])
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    directory = Path(tmp)
                    for mode in ("ext_authz", "ext_proc"):
                        plain = without_filter(mode, directory)
                        with envoy_for(
                            exe, mode, directory, tollway_port, upstream.port, plain
                        ) as envoy:
                            base = _percentiles(sequential_latency(envoy, args.requests))
                        with envoy_for(exe, mode, directory, tollway_port, upstream.port) as envoy:
                            with_filter = _percentiles(sequential_latency(envoy, args.requests))
                        latency_rows.append((f"Envoy without {mode}", *base, ""))
                        latency_rows.append((f"Envoy with {mode}", *with_filter, ""))
                        latency_rows.append(
                            (
                                f"added by tollway ({mode})",
                                with_filter[0] - base[0],
                                with_filter[1] - base[1],
                                "difference of the two rows above",
                            )
                        )
            finally:
                upstream.stop()

    print(f"{'what':<40} {'calls/s':>10} {'p50 ms':>9} {'p99 ms':>9}  note")
    for r in rows:
        if r.name == "Check / Decide":
            print(f"{r.name:<40} {r.calls_per_s:>10.2f} {'':>9} {'':>9}  {r.note}")
        else:
            print(
                f"{r.name:<40} {r.calls_per_s:>10,.0f} {r.p50_ms:>9.2f} {r.p99_ms:>9.2f}  "
                f"{args.inflight} in flight"
            )
    if latency_rows:
        print()
        print(f"{'one request at a time, through Envoy':<40} {'p50 ms':>9} {'p99 ms':>9}  note")
        for name, p50, p99, note in latency_rows:
            print(f"{name:<40} {p50:>9.2f} {p99:>9.2f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
