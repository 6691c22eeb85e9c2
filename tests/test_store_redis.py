"""The Redis counter store against real redis-server processes: one script call per
decision, Redis TIME, exactness under concurrency, faults and recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import RedisServer
from tollway.policy import windows
from tollway.policy.stores import StoreUnavailable, open_store
from tollway.policy.stores.base import CounterSpec
from tollway.policy.stores.redis_store import RedisCounterStore, load_script

pytestmark = pytest.mark.redis

HOUR = windows.sliding(3600)
MONTH = windows.calendar("month")


def req(limit: float, amount: float = 1, quota: str = "q", window: windows.CounterWindow = HOUR) -> CounterSpec:
    return CounterSpec(quota, "requests", "u=a", window, limit, amount)


def cost(limit: float, amount: float, quota: str = "c") -> CounterSpec:
    return CounterSpec(quota, "cost", "u=a", HOUR, limit, amount)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=2)
    yield c
    c.close()


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisCounterStore]:
    s = RedisCounterStore(redis_url, key_prefix=redis_prefix, timeout=2.0)
    yield s
    s.close()


def client_commands(server: RedisServer, run: Callable[[], object]) -> list[str]:
    """The commands clients (not scripts) sent to ``server`` while ``run`` ran (MONITOR)."""
    watcher = server.client(socket_timeout=5)
    sentinel = server.client()
    sentinel.ping()  # connect (HELLO, SETINFO) before watching
    seen: list[str] = []
    with watcher.monitor() as m:
        run()
        sentinel.echo("tollway-monitor-done")
        while True:
            entry = m.next_command()
            if "tollway-monitor-done" in entry["command"]:
                break
            if entry.get("client_type") != "lua":
                seen.append(entry["command"].split()[0].upper())
    watcher.close()
    sentinel.close()
    return seen


def commandstats(c: redis.Redis) -> dict[str, int]:
    info = c.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in info.items()
        if not k.startswith(("cmdstat_info", "cmdstat_config"))
    }


# ------------------------------------------------------------------ Lua parity


@pytest.fixture(scope="module")
def lua_period(redis_url: str) -> Iterator[object]:
    c = redis.Redis.from_url(redis_url, socket_timeout=2)
    script = c.register_script(
        load_script("consume").split("-- consume.lua")[0]
        + "\nreturn {calendar_period(ARGV[1], tonumber(ARGV[2]))}"
    )

    def period(kind: str, sec: int) -> tuple[str, int]:
        label, end = script(keys=[], args=[kind, str(sec)])
        return label.decode(), int(end)

    yield period
    c.close()


def _boundaries() -> list[int]:
    out: list[int] = []
    day = datetime(1999, 12, 25, tzinfo=UTC)
    while day.year < 2031:
        for d in (day, day.replace(month=2, day=28), day.replace(month=12, day=31)):
            base = int(d.timestamp())
            out += [base - 1, base, base + 1]
        day += timedelta(days=97)
    for year in (1970, 2000, 2024, 2026, 2027, 2038, 2100, 2400):
        base = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
        out += [base - 86400 * 4 + k for k in range(0, 86400 * 8, 43199)]
    return out


@pytest.mark.parametrize("kind", ["day", "week", "month"])
def test_lua_calendar_periods_match_windows_at_boundaries(kind: str, lua_period: object) -> None:
    for sec in _boundaries():
        expected = windows.calendar_period(kind, sec)
        assert lua_period(kind, sec) == (expected.label, expected.end), (kind, sec)  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 7_258_118_400), st.sampled_from(["day", "week", "month"]))
def test_lua_calendar_periods_match_windows_anywhere(lua_period: object, sec: int, kind: str) -> None:
    expected = windows.calendar_period(kind, sec)
    assert lua_period(kind, sec) == (expected.label, expected.end)  # type: ignore[operator]


# -------------------------------------------------------------- one round trip


def test_one_evalsha_per_decision_and_nothing_else(redis_server: RedisServer) -> None:
    store = RedisCounterStore(redis_server.url, key_prefix="t:")
    specs = [req(1000), cost(100, 0.01), CounterSpec("m", "tokens", "*", MONTH, 1e9, 500)]
    store.check_and_consume(specs, consume=True, hold_id="warm")  # loads each script once
    store.record_report("warm", "warm", {"requests": 1}, specs)

    def decide() -> None:
        for i in range(20):
            store.check_and_consume(specs, consume=True, hold_id=f"d{i}")

    def report() -> None:
        for i in range(5):
            store.record_report(f"r{i}", f"d{i}", {"cost": 0.002, "tokens": 400}, specs)

    assert client_commands(redis_server, decide) == ["EVALSHA"] * 20
    assert client_commands(redis_server, report) == ["EVALSHA"] * 5
    store.close()


def test_script_flush_costs_one_reload(redis_server: RedisServer) -> None:
    store = RedisCounterStore(redis_server.url, key_prefix="t:")
    assert not store.check_and_consume([req(10)], consume=True)[0].exceeded
    c = redis_server.client()
    c.script_flush()
    c.config_resetstat()
    assert store.check_and_consume([req(10)], consume=True)[0].used == 1
    stats = commandstats(c)
    assert stats.get("script|load") == 1 and stats.get("evalsha") == 2  # NOSCRIPT, then again
    store.close()
    c.close()


# ---------------------------------------------------------------- Redis clock


def test_redis_time_decides_not_the_callers_clock(store: RedisCounterStore, client: redis.Redis) -> None:
    sec, _ = client.time()
    state = store.check_and_consume([req(10)], consume=True, now=0.0)[0]  # now is ignored
    # what an empty window counts now leaves it with the current bucket: a window ahead
    assert sec + 3600 <= state.resets_at <= sec + 3600 + 60 + 5
    state = store.check_and_consume([CounterSpec("m", "cost", "*", MONTH, 1, 0)], consume=False)[0]
    assert state.resets_at == windows.calendar_period("month", sec).end


def test_a_one_second_window_frees_itself_when_retry_after_says(
    redis_url: str, redis_prefix: str
) -> None:
    store = RedisCounterStore(redis_url, key_prefix=redis_prefix, honour_now=True)
    spec = req(1, window=windows.sliding(1))
    t = 1_800_000_000.25
    assert not store.check_and_consume([spec], consume=True, now=t)[0].exceeded
    denied = store.check_and_consume([spec], consume=True, now=t)[0]
    assert denied.exceeded and 0 < denied.retry_after <= 2
    early = store.check_and_consume([spec], consume=False, now=t + denied.retry_after - 0.01)
    assert early[0].exceeded
    later = t + denied.retry_after
    assert not store.check_and_consume([spec], consume=True, now=later)[0].exceeded
    store.close()


def test_keys_expire_with_their_window(store: RedisCounterStore, client: redis.Redis,
                                       redis_prefix: str) -> None:
    store.check_and_consume([req(10), CounterSpec("m", "cost", "*", MONTH, 1, 0.1)],
                            consume=True, hold_id="d1")
    assert 0 < client.ttl(f"{redis_prefix}q:q:u=a") <= 3600 + 60 + 1
    sec, _ = client.time()
    month_left = windows.calendar_period("month", sec).end - sec
    assert 0 < client.ttl(f"{redis_prefix}q:m:*") <= month_left + 1
    assert 3500 < client.ttl(f"{redis_prefix}h:d1") <= 3600
    store.record_report("r1", "d1", {"requests": 1}, [])
    assert client.exists(f"{redis_prefix}h:d1") == 0  # settled: the reservation is gone
    assert 86000 < client.ttl(f"{redis_prefix}r:*:r1") <= 86400


# ---------------------------------------------------------------- exactness


def test_concurrent_consumes_from_two_replicas_admit_exactly_the_limit(
    redis_url: str, redis_prefix: str
) -> None:
    replicas = [RedisCounterStore(redis_url, key_prefix=redis_prefix, timeout=5) for _ in range(2)]
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker(store: RedisCounterStore) -> None:
        for _ in range(50):
            ok = not store.check_and_consume([req(100)], consume=True)[0].exceeded
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=worker, args=(replicas[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 300 and admitted.count(True) == 100
    assert replicas[0].check_and_consume([req(100)], consume=False)[0].used == 100
    for r in replicas:
        r.close()


def test_concurrent_reports_count_cost_exactly_once(redis_url: str, redis_prefix: str) -> None:
    replicas = [RedisCounterStore(redis_url, key_prefix=redis_prefix, timeout=5) for _ in range(2)]
    outcomes: list[str] = []
    lock = threading.Lock()
    spec = cost(1000, 0.0031)

    def worker(store: RedisCounterStore, offset: int) -> None:
        for i in range(100):
            rid = f"r{(i + offset) % 100}"  # every request_id is sent by several threads
            out = store.record_report(rid, None, {"cost": 0.0031}, [spec])
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=worker, args=(replicas[i % 2], i * 17)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("added") == 100 and outcomes.count("duplicate") == 300
    assert replicas[1].check_and_consume([cost(1000, 0)], consume=False)[0].used == 0.31
    for r in replicas:
        r.close()


# -------------------------------------------------------------------- faults


@pytest.mark.timeout(20)
def test_a_dead_redis_raises_store_unavailable_and_recovery_needs_no_restart(
    redis_server: RedisServer,
) -> None:
    store = RedisCounterStore(redis_server.url, key_prefix="t:", timeout=0.1)
    assert not store.check_and_consume([req(10)], consume=True)[0].exceeded
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            store.check_and_consume([req(10)], consume=True)
        with pytest.raises(StoreUnavailable):
            store.record_report("r1", None, {"requests": 1}, [req(10)])
    redis_server.start()  # same port, empty (no persistence), script cache gone
    assert store.check_and_consume([req(10)], consume=True)[0].used == 0
    assert store.record_report("r1", None, {"requests": 1}, [req(10)]) == "added"
    assert store.check_and_consume([req(10)], consume=False)[0].used == 2
    store.close()


def test_connections_the_server_closed_while_idle_are_replaced_before_sending(
    store: RedisCounterStore, client: redis.Redis
) -> None:
    """Redis closing every client connection (a restart, CLIENT KILL, its idle timeout)
    costs no decision: each idle connection is checked before a command goes out on it,
    so the next calls open new ones instead of failing."""
    assert not store.check_and_consume([req(10)], consume=True)[0].exceeded
    store.record_report("r0", None, {"requests": 1}, [req(10)])
    for round_ in range(3):
        killed = client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1, round_  # the store's idle connection was among them
        assert not store.check_and_consume([req(10)], consume=True)[0].exceeded
        assert store.record_report(f"r{round_ + 1}", None, {"requests": 1}, [req(10)]) == "added"
    assert store.check_and_consume([req(10)], consume=False)[0].used == 8


def test_a_command_that_cannot_be_packed_fails_without_using_up_the_pool(redis_url: str) -> None:
    from tollway.policy.stores.redis_calls import RedisCalls
    from tollway.policy.stores.redis_store import redis_client

    client = redis_client(redis_url, timeout=2, max_connections=2)
    calls = RedisCalls(client)
    try:
        for _ in range(5):  # more failures than the pool has connections
            with pytest.raises(TypeError):
                calls.one(("SET", "never", object()), time.monotonic() + 2)
        assert calls.one(("PING",), time.monotonic() + 2) == b"PONG"
        assert client.get("never") is None
    finally:
        calls.close()
        client.close()


@pytest.mark.timeout(20)
def test_a_stalled_redis_times_out_into_store_unavailable(redis_server: RedisServer) -> None:
    store = RedisCounterStore(redis_server.url, key_prefix="t:", timeout=0.1)
    store.check_and_consume([req(10)], consume=True)
    redis_server.pause()
    try:
        with pytest.raises(StoreUnavailable):
            store.check_and_consume([req(10)], consume=True)
    finally:
        redis_server.resume()
    # the timed-out call was not retried; the stalled one ran when Redis woke up (or not)
    used = store.check_and_consume([req(10)], consume=False)[0].used
    assert used in (1, 2)
    store.close()


def test_a_failing_script_leaves_no_partial_counters(
    store: RedisCounterStore, client: redis.Redis, redis_prefix: str
) -> None:
    client.set(f"{redis_prefix}q:broken:u=a", "not a hash")
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        store.check_and_consume([req(10), req(10, quota="broken")], consume=True, hold_id="d1")
    assert client.exists(f"{redis_prefix}q:q:u=a", f"{redis_prefix}h:d1") == 0
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        store.record_report("r1", None, {"requests": 1}, [req(10), req(10, quota="broken")])
    assert client.exists(f"{redis_prefix}q:q:u=a", f"{redis_prefix}r:*:r1") == 0


def test_open_store_chooses_the_backend(redis_url: str) -> None:
    s = open_store(redis_url, key_prefix="x:")
    assert (s.name, s.blocking) == ("redis", True)
    s.close()
    m = open_store("memory")
    assert (m.name, m.blocking) == ("memory", False)
    for bad in ("", "redis", "http://localhost:6379", "mem"):
        with pytest.raises(ValueError, match="use 'memory', a redis://"):
            open_store(bad)
