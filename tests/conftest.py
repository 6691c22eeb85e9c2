"""Shared fixtures: real Redis servers and real PostgreSQL databases for the tests that
need one.

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
``pki`` (session)
    A CA, a server certificate for 127.0.0.1/localhost, a client certificate with CN
    ``billing.internal``, and one with the same CN from a CA the server does not trust
    (``tests/pki.py``). Needs ``cryptography`` (the test extra): skipped without it, or
    failed when ``CI`` is set.
``redis_cluster`` (session), ``redis_cluster_factory`` (session)
    A private Redis Cluster of 3 masters and 3 replicas (``RedisClusterNodes``: ``.url``
    is ``redis+cluster://…``, ``.master_for(key)``, ``.kill(node)``, ``.wait_healthy()``);
    the factory starts another one for a test that kills nodes. Needs ``redis-cli`` too.
``redis_sentinel_factory`` (session)
    ``factory()`` starts a master, a replica and 3 sentinels (``RedisSentinelSet``:
    ``.url`` is ``redis+sentinel://…/SERVICE/0``, ``.kill_master()``,
    ``.wait_promoted(port)``).
``postgres_url`` (session)
    URL of a private database, made with a random name on the PostgreSQL at
    ``TOLLWAY_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
    and dropped at the end. Without a reachable server the test is skipped, or, when
    ``CI`` is set, fails.
``postgres_cluster`` (session)
    A private PostgreSQL server (``initdb`` in a temporary directory, a free port) that
    fault tests may stop and start without disturbing anyone: ``.url``, ``.stop()``,
    ``.start()``. Needs the PostgreSQL server binaries (``/usr/lib/postgresql/*/bin``);
    run as root, the server runs as the ``postgres`` user.
``backend`` (function, parametrized)
    Runs the test twice: on ``"memory"``, and on Redis (marked ``redis``). A ``Backend``
    has ``.name``, ``.store`` (``"memory"`` or the Redis URL, what ``Engine(store=…)``
    takes) and ``.prefix()`` (a fresh key prefix on each call). Tests build their store,
    engine or server from it, so the memory/Redis choice is made here once. A module
    that also runs on the test Redis Cluster declares its own ``backend`` fixture with
    ``params=WITH_CLUSTER`` returning ``backend_of(request)``: the third run has the
    name ``"cluster"`` and a ``redis+cluster://`` store.

Every test that uses a Redis fixture (directly or through another fixture) carries the
``redis`` marker, so ``pytest -m "not redis"`` runs exactly the tests that need no Redis.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from backends import Backend
from postgres_processes import PostgresCluster, postgres_bin
from redis_processes import RedisClusterNodes, RedisSentinelSet, RedisServer

from tollway.policy.stores import StoreOptions

_URL_ENV = "TOLLWAY_TEST_REDIS_URL"
# LiteLLM fetches its model price map from the network when imported, retrying for seconds;
# tests use the copy in the package (and so does every proxy they start, which inherits it)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
_PG_ENV = "TOLLWAY_TEST_POSTGRES_URL"
_PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def missing(reason: str) -> None:
    """Skip for a missing component, or fail when ``CI`` is set (CI has everything)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


_REDIS_FIXTURES = frozenset({
    "redis_url", "redis_prefix", "redis_server", "redis_server_factory", "redis_cluster",
    "redis_cluster_factory", "redis_sentinel_factory",
})


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)

# For tests of what is counted, not of how fast: a store budget that a loaded machine
# (several test runs on two cores) cannot exhaust and turn decisions into fail-open ones.
# Tests of the budget itself set their own.
ROOMY = StoreOptions(timeout=10.0)


def _redis_server_or_skip() -> str:
    """The redis-server executable; skip (or fail under CI) when there is none."""
    exe = shutil.which("redis-server")
    if exe is None:
        missing(f"redis-server is not on PATH and {_URL_ENV} is not set")
    assert exe is not None
    return exe


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


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = os.environ.get(_PG_ENV) or _PG_DEFAULT
    name = f"tollway_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        missing(f"no PostgreSQL at {admin} ({str(exc).strip().splitlines()[0]}); "
                f"set {_PG_ENV}")
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    yield url
    with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bindir = postgres_bin()
    if bindir is None:
        missing("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    assert bindir is not None
    with tempfile.TemporaryDirectory(prefix="tollway-pg-") as d:
        cluster = PostgresCluster(bindir, Path(d))
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.close()


_USAGE_TABLES = ("usage_events", "usage_periods", "usage_model_periods", "usage_period_counts")


def reset_postgres(url: str) -> None:
    """Empty the usage tables of the session database (they stay migrated)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        present = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )}
        tables = [t for t in _USAGE_TABLES if t in present]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def usage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A usage database URL, empty: a SQLite file, then the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> object:
    try:
        from pki import make_pki
    except ImportError as exc:  # cryptography missing
        reason = f"the TLS tests need the cryptography package ({exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
        pytest.skip(reason)
    return make_pki(tmp_path_factory.mktemp("pki"))
BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
WITH_CLUSTER = [*BACKENDS, pytest.param("cluster", marks=pytest.mark.redis)]


def backend_of(request: pytest.FixtureRequest) -> Backend:
    """The ``Backend`` a ``backend`` fixture's parameter names."""
    if request.param == "memory":
        return Backend("memory", "memory")
    if request.param == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        return Backend("cluster", cluster.url, f"tollway-test:{uuid.uuid4().hex[:12]}:")
    return Backend(
        "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_of(request)


def _redis_cli_or_skip() -> None:
    if shutil.which("redis-cli") is None:
        reason = "redis-cli is not on PATH (it creates the test cluster)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_cluster_factory() -> Iterator[Callable[[], RedisClusterNodes]]:
    """``factory()`` starts another private Redis Cluster: 3 masters, 3 replicas."""
    clusters: list[RedisClusterNodes] = []
    dirs: list[tempfile.TemporaryDirectory[str]] = []

    def factory() -> RedisClusterNodes:
        exe = _redis_server_or_skip()
        _redis_cli_or_skip()
        d = tempfile.TemporaryDirectory(prefix="tollway-cluster-")
        dirs.append(d)
        cluster = RedisClusterNodes(exe, Path(d.name))
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.stop()
    for d in dirs:
        d.cleanup()


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_factory: Callable[[], RedisClusterNodes]) -> RedisClusterNodes:
    """One cluster for the whole run (tests that kill a node take their own)."""
    return redis_cluster_factory()


@pytest.fixture(scope="session")
def redis_sentinel_factory() -> Iterator[Callable[[], RedisSentinelSet]]:
    """``factory()`` starts a private master, replica and 3 sentinels."""
    sets: list[RedisSentinelSet] = []
    dirs: list[tempfile.TemporaryDirectory[str]] = []

    def factory() -> RedisSentinelSet:
        exe = _redis_server_or_skip()
        d = tempfile.TemporaryDirectory(prefix="tollway-sentinel-")
        dirs.append(d)
        deployment = RedisSentinelSet(exe, Path(d.name))
        sets.append(deployment)
        return deployment

    yield factory
    for deployment in sets:
        deployment.stop()
    for d in dirs:
        d.cleanup()
