"""Shared fixtures: real Redis servers for the tests that need one.

Fixtures
--------
``redis_url`` (session)
    URL of a Redis for the whole run. ``TOLLWAY_TEST_REDIS_URL`` when set (that server is
    shared: tests touch only keys under their own prefix); otherwise a private
    ``redis-server`` started on a free port (no persistence, in a temporary directory)
    and stopped at the end. Without ``redis-server`` on PATH the test is skipped, or,
    when the ``CI`` environment variable is set, fails.
``redis_prefix`` (function)
    A fresh key prefix (``tollway-test:<hex>:``); its keys are deleted after the test.
``redis_server`` (function)
    A private ``RedisServer`` for fault tests, always its own process even when
    ``TOLLWAY_TEST_REDIS_URL`` is set: ``.url``, ``.port``, ``.kill()`` (SIGKILL),
    ``.start()`` (again on the same port), ``.pause()``/``.resume()``
    (SIGSTOP/SIGCONT: a stalled server), ``.client()``.
``ROOMY``
    ``StoreOptions`` with a long store budget, for Redis tests of counting, not latency.
``redis_server_factory`` (session)
    ``factory()`` starts another private ``RedisServer`` (stopped at session end).
``backend`` (function, parametrized)
    Runs the test twice: on ``"memory"``, and on Redis (marked ``redis``). A ``Backend``
    has ``.name``, ``.store`` (``"memory"`` or the Redis URL, what ``Engine(store=…)``
    takes) and ``.prefix()`` (a fresh key prefix on each call). Tests build their store,
    engine or server from it, so the memory/Redis choice is made here once.

Every test that uses a Redis fixture (directly or through another fixture) carries the
``redis`` marker, so ``pytest -m "not redis"`` runs exactly the tests that need no Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from backends import Backend

from tollway.policy.stores import StoreOptions

_URL_ENV = "TOLLWAY_TEST_REDIS_URL"
_REDIS_FIXTURES = frozenset({"redis_url", "redis_prefix", "redis_server", "redis_server_factory"})


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)

# For tests of what is counted, not of how fast: a store budget that a loaded machine
# (several test runs on two cores) cannot exhaust and turn decisions into fail-open ones.
# Tests of the budget itself set their own.
ROOMY = StoreOptions(timeout=10.0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server_or_skip() -> str:
    """The redis-server executable; skip (or fail under CI) when there is none."""
    exe = shutil.which("redis-server")
    if exe is None:
        reason = f"redis-server is not on PATH and {_URL_ENV} is not set"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
        pytest.skip(reason)
    return exe


class RedisServer:
    """A private ``redis-server`` process that tests may kill and start again."""

    def __init__(self, executable: str, directory: Path, port: int | None = None) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port or _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> None:
        """Start on ``self.port`` and wait until it answers PING."""
        if self.running:
            return
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        probe = self.client(socket_timeout=0.2, socket_connect_timeout=0.2)
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self._process.returncode} on port {self.port}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL: the abrupt death a fault test wants (no goodbye to clients)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGCONT)  # a paused server cannot exit
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=5)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: a server that accepts connections but never answers (a stall)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def redis_server_factory() -> Iterator[Callable[[], RedisServer]]:
    servers: list[RedisServer] = []
    dirs: list[tempfile.TemporaryDirectory[str]] = []

    def factory() -> RedisServer:
        exe = _redis_server_or_skip()
        d = tempfile.TemporaryDirectory(prefix="tollway-redis-")
        dirs.append(d)
        server = RedisServer(exe, Path(d.name))
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()
    for d in dirs:
        d.cleanup()


@pytest.fixture(scope="session")
def redis_url(redis_server_factory: Callable[[], RedisServer]) -> str:
    url = os.environ.get(_URL_ENV)
    if url:
        return url
    return redis_server_factory().url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"tollway-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a fault test may have left the server down; its keys died with it
    finally:
        client.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    exe = _redis_server_or_skip()
    with tempfile.TemporaryDirectory(prefix="tollway-redis-") as d:
        server = RedisServer(exe, Path(d))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory", "memory")
    return Backend(
        "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    )
