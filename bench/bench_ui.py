"""Dashboard pages: server time of each page at 100,000 users.

    python bench/bench_ui.py [--users 100000] [--groups 100] [--rounds 30]

The server is the real HTTP port (as ``tollway serve`` runs it) over an in-memory engine
(memory counter store, the in-memory SQLite usage database) whose usage holds
``--users`` users in ``--groups`` groups, recorded through ``Engine.report`` in the last
minutes (so every user is in every period); the rules are examples/gateway.rules. Each page is fetched
``--rounds`` times, one request at a time (so nothing queues), and the time the server
spent on it is read from the page's ``Server-Timing`` header. The peer is the JSON API
route that reads the same data (``/v1/usage/…``, its time measured by the client, which
includes the loopback round trip): the ratio says what the page costs over the data it
shows. Prints one table; the target is at most 100 ms per page.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RULES = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"
MODELS = ["openai/gpt-4.1", "openai/gpt-4.1-mini", "anthropic/claude-sonnet-4.6"]
TIMING = re.compile(r"page;dur=([0-9.]+)")
EXPLAIN = urlencode({"request": '{"user": {"id": "user-7", "metadata": {"tier": "free"}}, '
                                '"model": "openai/gpt-5"}'}).encode()

# (path, what it is, the API route that reads the same data or None)
PAGES = [
    ("/ui/users", "Users, first page by cost", "/v1/usage/users?sort=-total_cost"),
    ("/ui/users?sort=last_seen&offset=50000", "Users, a deep page", None),
    ("/ui/users?search=user-4242", "Users, searched", "/v1/usage/users?search=user-4242"),
    ("/ui/users?period=1d", "Users, last day", None),
    ("/ui/groups", "Groups", "/v1/usage/groups"),
    ("/ui/users/user-42", "a user's detail", "/v1/usage/users/user-42"),
    ("/ui/groups/group-7", "a group's detail ({members} members)", "/v1/usage/groups/group-7"),
    ("/ui/rules", "Rules", None),
    ("POST /ui/rules/explain", "Rules with an explained request", None),
]


def start_server(users: int, groups: int) -> tuple[str, float]:
    from tollway.policy.engine import Engine
    from tollway.server.http import build_app, start_http
    from tollway.server.http_ops import Readiness
    from tollway.server.metrics import Metrics

    engine = Engine.from_path(RULES, store="memory")
    began = time.perf_counter()
    for i in range(users):
        user = {"id": f"user-{i}", "metadata": {"tier": ("free", "pro")[i % 2]}}
        group = {"id": f"group-{i % groups}"}
        for k in range(1 + (i % 3 == 0)):
            engine.report({
                "request_id": f"r{i}-{k}", "user": user, "group": group,
                "model": MODELS[(i + k) % 3], "input_tokens": 100 + i % 900,
                "output_tokens": i % 400, "cost_usd": (i % 5000) / 1e6,
                "duration_seconds": 1.0,
            })
    engine.flush_usage(timeout=600)  # the pages read the usage database
    seeded = time.perf_counter() - began
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    app = build_app(engine, Metrics(), Readiness(engine))
    server = asyncio.run_coroutine_threadsafe(start_http("127.0.0.1:0", app), loop).result()
    return server.address, seeded


def _get(conn: http.client.HTTPConnection, path: str, address: str) -> tuple[float, float]:
    """(server ms from Server-Timing or NaN, client ms) of one request."""
    method, body, headers = "GET", None, {}
    if path.startswith("POST "):
        method, path, body = "POST", path[5:], EXPLAIN
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Origin": f"http://{address}"}
    start = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    client = (time.perf_counter() - start) * 1e3
    if resp.status != 200:
        raise SystemExit(f"{method} {path}: HTTP {resp.status}")
    found = TIMING.search(resp.getheader("Server-Timing") or "")
    return (float(found[1]) if found else float("nan")), client


def measure(address: str, path: str, rounds: int) -> tuple[list[float], list[float]]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    _get(conn, path, address)  # warm up: template compile, cached layouts
    server, client = [], []
    for _ in range(rounds):
        s, c = _get(conn, path, address)
        server.append(s)
        client.append(c)
    conn.close()
    return server, client


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    address, seeded = start_server(args.users, args.groups)
    members = -(-args.users // args.groups)
    print()
    print(f"Dashboard pages, memory counter store and in-memory SQLite usage database, "
          f"{args.users:,} users in {args.groups} groups "
          f"(seeded in {seeded:.1f} s), {args.rounds} requests per page, one at a time")
    print()
    print(f"| {'page':<42} | {'server p50':>10} | {'server p95':>10} | {'server max':>10} "
          f"| {'API route p50':>13} | {'page / API':>10} |")
    print(f"|{'-' * 44}|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|{'-' * 15}:|{'-' * 12}:|")
    worst = 0.0
    for path, what, api in PAGES:
        server, _ = measure(address, path, args.rounds)
        worst = max(worst, max(server))
        ratio, api_text = "", ""
        if api is not None:
            _, client = measure(address, api, args.rounds)
            api_ms = statistics.median(client)
            api_text = f"{api_ms:.2f} ms"
            ratio = f"{statistics.median(server) / api_ms:.1f}x"
        label = what.format(members=members)
        print(f"| {label:<42} | {statistics.median(server):>7.2f} ms | {p95(server):>7.2f} ms "
              f"| {max(server):>7.2f} ms | {api_text:>13} | {ratio:>10} |")
    print()
    print(f"slowest page seen: {worst:.1f} ms (target: at most 100 ms)")


if __name__ == "__main__":
    main()
