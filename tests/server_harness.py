"""Shared pieces of the server tests: a rule text and an in-process gRPC server on a real socket.

The server runs its own asyncio loop in a thread, exactly as ``tollway serve`` runs it;
tests talk to it with the ordinary synchronous gRPC client over a real TCP socket.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from tollway.policy.engine import Engine
from tollway.policy.stores import StoreOptions
from tollway.policy.usage import UsageEvent
from tollway.server.app import GrpcServer, start_grpc
from tollway.server.auth import Authenticator
from tollway.server.http import ROUTE_MODULES, HttpServer, build_app, start_http
from tollway.server.http_limits import HttpLimits
from tollway.server.http_ops import Readiness
from tollway.server.metrics import Metrics
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
default allow

quota per_user limits requests to 3 per 1h for each user
quota user_tokens limits tokens to 1000 per 1h for each user
quota group_cost limits cost to group.credits per 1d for each group

rule blocked priority 100 {
    when user.status == "blocked"
    deny "account blocked"
}

rule limited {
    when user.tier == "free"
    enforce per_user, user_tokens
}

rule grouped {
    when group.id exists
    enforce group_cost
}

rule vip {
    when "vip" in user.categories
    route "big-model" if request.model == "small"
    check "pii-scan"
    annotate "priority" = "high"
}

rule trial shadow {
    when user.tier == "free"
    route "tiny-model"
}
"""


def write_rules(directory: Path, text: str = RULES, name: str = "main.rules") -> Path:
    path = directory / name
    path.write_text(text)
    return path


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=30)

    def close(self) -> None:
        self.run(_cancel_the_rest())  # as asyncio.run does: no task is left pending
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ServerThread(LoopThread):
    """A grpc.aio server over ``engine`` on 127.0.0.1:<free port>, in a background loop."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.server: GrpcServer | None = None

    def start(self, listen: str = "127.0.0.1:0", **options: Any) -> str:
        """Serve on ``listen``; ``options`` go to ``start_grpc`` (``attribute_headers``, …)."""
        self.server = self.run(start_grpc(self.engine, listen, **options))
        return self.server.address

    def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            self.run(self.server.stop(grace))
        self.close()


@dataclass
class HttpPort:
    """A started HTTP port: its address, application and readiness."""

    address: str
    app: web.Application
    readiness: Readiness

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"


@contextmanager
def http_serving(
    engine: Any, *, metrics: Metrics | None = None, limits: HttpLimits | None = None,
    loop: LoopThread | None = None, route_modules: tuple[str, ...] = ROUTE_MODULES,
    auth: Authenticator | None = None,
) -> Iterator[HttpPort]:
    """The HTTP port over ``engine`` on 127.0.0.1:<free port>, as ``tollway serve`` runs
    it: on the loop of ``loop`` (the gRPC server's), or on a loop of its own; with
    ``auth``, every route needs its role."""
    owner = loop or LoopThread()
    readiness = Readiness(engine)
    app = build_app(engine, metrics or Metrics(), readiness, limits=limits,
                    route_modules=route_modules, auth=auth)
    http = owner.run(_start(app))
    try:
        yield HttpPort(http.address, app, readiness)
    finally:
        owner.run(http.stop())
        if loop is None:
            owner.close()


async def _start(app: web.Application) -> HttpServer:
    return await start_http("127.0.0.1:0", app)


@contextmanager
def serving(
    rules_path: Path, *, store: Any = "memory", metrics: Metrics | None = None,
    key_prefix: str = "tollway:", store_options: StoreOptions | None = None,
    usage_db: Any = "memory",
) -> Iterator[tuple[pb_grpc.TollwayStub, ServerThread, grpc.Channel]]:
    engine = Engine.from_path(
        rules_path, store=store, observer=metrics, key_prefix=key_prefix,
        store_options=store_options, usage_db=usage_db,
    )
    server = ServerThread(engine)
    address = server.start()
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield pb_grpc.TollwayStub(channel), server, channel
    finally:
        channel.close()
        server.stop()
        engine.close()


@contextmanager
def engine_with_usage(reports: int, users: int) -> Iterator[Engine]:
    """A memory engine whose usage holds ``reports`` reports of users ``u0``… (groups
    ``g0``-``g2``, models ``m0``/``m1``), written straight into its usage database."""
    engine = Engine.from_text("default allow\n", store="memory")
    assert engine.usage_db is not None
    engine.usage_db.write([
        UsageEvent(
            time=1_800_000_000.0 + i, request_id=f"r{i}", user_id=f"u{i % users}",
            group_id=f"g{i % 3}", model=f"m{i % 2}", input_tokens=i, cost_usd=0.001 * i,
        )
        for i in range(reports)
    ])
    try:
        yield engine
    finally:
        engine.close()


def free_user(uid: str, **metadata: Any) -> pb.Entity:
    entity = pb.Entity(id=uid)
    entity.metadata.update({"tier": "free", **metadata})
    return entity


def eventually(read: Any, expected: Any, timeout: float = 10.0) -> Any:
    """Call ``read()`` until it returns ``expected`` (usage is written a moment after the
    call that caused it); returns the last value read, for the caller's assert."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = read()
        except grpc.RpcError as exc:  # NOT_FOUND until the first event is written
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            value = exc
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# ------------------------------------------------- `tollway serve` as a process

READY = re.compile(
    r"tollway serving: grpc=(?P<grpc>[^\s\"]+) http=(?P<http>[^\s\"]+) .*version=(?P<version>[^\s\"]+)"
)


@dataclass
class Served:
    proc: subprocess.Popen[str]
    grpc: str
    http: str
    version: str
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 20) -> str:
        """Block until the server logs a line containing ``pattern``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if pattern in line:
                    return line
            seen = len(self.lines)
            time.sleep(0.02)
        raise AssertionError(f"no log line with {pattern!r}:\n{self.log()}")


def _pump(proc: subprocess.Popen[str], lines: list[str], ready: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if READY.search(line):
            ready.set()
    ready.set()  # process ended


@contextmanager
def tollway_serve(
    rules: Path | None,
    *extra: str,
    listen: str = "127.0.0.1:0",
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """``tollway serve`` on free ports (``rules=None``: the built-in example ruleset);
    ``env`` adds variables to an environment cleared of every ``TOLLWAY_*`` one. Usage is
    kept in a SQLite file of its own unless ``extra`` or ``env`` names a database."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env = {**clean, **(env or {})}
    rules_flag = [] if rules is None else ["--rules", str(rules)]
    scratch = tempfile.TemporaryDirectory(prefix="tollway-usage-")
    named = "--usage-db" in extra or "TOLLWAY_USAGE_DB" in env
    usage = () if named else ("--usage-db", f"sqlite:///{scratch.name}/usage.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway", "serve", *rules_flag, "--listen", listen,
         "--http", "127.0.0.1:0", "--reload-interval", "0", "--grace", "10", *usage, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_pump, args=(proc, lines, ready), daemon=True).start()
    try:
        ready.wait(timeout=30)
        match = next((m for line in lines if (m := READY.search(line))), None)
        if match is None:
            raise AssertionError("tollway serve did not start:\n" + "\n".join(lines))
        yield Served(proc, match["grpc"], match["http"], match["version"], lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        scratch.cleanup()


def import_or_skip(module: str, reason: str) -> Any:
    """``pytest.importorskip`` that fails instead of skipping when ``CI`` is set."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: {module} is not installed (CI is set, so this is an error)")
        pytest.skip(f"{reason}: {module} is not installed")
