"""The Redis Cluster store on a real cluster (3 masters, 3 replicas): hash-tagged keys,
all or nothing across shards, exact quotas across two ``tollway serve`` processes, and a
master killed under load.

A decision whose user and group counters fall in different shards (different slots,
on different masters) runs one script per shard; the tests pick ids that do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis_processes import RedisClusterNodes
from server_harness import tollway_serve

from tollway.policy import windows
from tollway.policy.stores import StoreUnavailable, open_store, parse_store_url
from tollway.policy.stores.base import CounterSpec
from tollway.policy.stores.cluster_tags import TAGS, shard_of, tag_of
from tollway.policy.stores.redis_cluster import RedisClusterCounterStore
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

HOUR = windows.sliding(3600)
RULES = """
quota per_user limits requests to 100 per 1h for each user on_store_error deny
quota per_group limits requests to 1000 per 1h for each group on_store_error deny
rule everyone { enforce per_user, per_group }
"""


def _ports(cluster: RedisClusterNodes) -> dict[str, int]:
    """The port of the master serving each shard tag now (one ``CLUSTER SLOTS``)."""
    client = cluster.masters()[0].client(socket_timeout=2)
    try:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    finally:
        client.close()
    out = {}
    for tag in TAGS:
        slot = key_slot(f"{{{tag}}}".encode())
        out[tag] = next(int(m[1]) for start, end, m, *_ in ranges if start <= slot <= end)
    return out


def _master_port(cluster: RedisClusterNodes, scope: str) -> int:
    return _ports(cluster)[tag_of(scope)]


def _ids(cluster: RedisClusterNodes, group: str, n: int, prefix: str) -> list[str]:
    """``n`` user ids whose shard is on another master than ``group``'s."""
    ports = _ports(cluster)
    g = ports[tag_of(f"g={group}")]
    return [uid for uid in (f"{prefix}{i}" for i in range(n * 10))
            if ports[tag_of(f"u={uid}")] != g][:n]


def _client(cluster: RedisClusterNodes) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[0].port)],
                        socket_timeout=2)


@pytest.fixture
def store(redis_cluster: RedisClusterNodes) -> Iterator[RedisClusterCounterStore]:
    s = RedisClusterCounterStore(parse_store_url(redis_cluster.url), key_prefix="ct:",
                                 timeout=2.0)
    yield s
    s.close()


def _spec(quota: str, key: str, limit: float, amount: float = 1) -> CounterSpec:
    return CounterSpec(quota, "requests", key, HOUR, limit, amount)


# ------------------------------------------------------------------ layout


def test_the_shard_tags_spread_over_the_slots_and_the_masters(
    redis_cluster: RedisClusterNodes,
) -> None:
    slots = [redis_cluster.slot_of(f"{{{t}}}") for t in TAGS]
    assert len(set(slots)) == len(TAGS)
    assert all(i * 16384 // len(TAGS) <= s < (i + 1) * 16384 // len(TAGS)
               for i, s in enumerate(slots))
    masters = {redis_cluster.master_for(f"{{{t}}}").port for t in TAGS}
    assert masters == {m.port for m in redis_cluster.masters()}


def test_a_decision_over_two_shards_writes_each_counter_on_its_own_master(
    redis_cluster: RedisClusterNodes, store: RedisClusterCounterStore,
) -> None:
    (uid,) = _ids(redis_cluster, "acme", 1, "layout")
    specs = [_spec("per_user", f"u={uid}", 5), _spec("per_group", "g=acme", 5)]
    states = store.check_and_consume(specs, consume=True, hold_id="d1", hold_owner="x")
    assert [s.used for s in states] == [0, 0] and not any(s.exceeded for s in states)
    client = _client(redis_cluster)
    try:
        user_key = f"ct:{{{tag_of('u=' + uid)}}}q:per_user:u={uid}"
        group_key = f"ct:{{{tag_of('g=acme')}}}q:per_group:g=acme"
        assert client.hget(user_key, "t") == b"1" and client.hget(group_key, "t") == b"1"
        assert redis_cluster.master_for(user_key).port != redis_cluster.master_for(group_key).port
        # the reservation record of each shard sits beside that shard's counters
        for key in (user_key, group_key):
            tag = key.split("{")[1].split("}")[0]
            assert client.exists(f"ct:{{{tag}}}h:d1") == 1
    finally:
        client.close()


def test_a_refusal_in_one_shard_releases_what_the_other_reserved(
    redis_cluster: RedisClusterNodes, store: RedisClusterCounterStore,
) -> None:
    (uid,) = _ids(redis_cluster, "full", 1, "release")
    group = _spec("per_group", "g=full", 2)
    for _ in range(2):  # full
        assert not store.check_and_consume([group], consume=True)[0].exceeded
    user = _spec("per_user", f"u={uid}", 10)
    for i in range(3):
        states = store.check_and_consume([user, group], consume=True, hold_id=f"r{i}")
        assert [s.exceeded for s in states] == [False, True]
        assert states[0].used == 0  # what the user shard reserved went back each time
    assert store.check_and_consume([user], consume=False)[0].used == 0
    client = _client(redis_cluster)
    try:
        assert client.exists(f"ct:{{{tag_of('u=' + uid)}}}h:r0") == 0  # the record is gone
    finally:
        client.close()


def test_a_report_over_two_shards_settles_each_once(
    redis_cluster: RedisClusterNodes, store: RedisClusterCounterStore,
) -> None:
    (uid,) = _ids(redis_cluster, "rep", 1, "report")
    user = _spec("tokens_u", f"u={uid}", 1000, 100)
    group = _spec("tokens_g", "g=rep", 1000, 100)
    store.check_and_consume([user, group], consume=True, hold_id="d9", hold_owner="o")
    actual = {"requests": 30}
    assert store.record_report("q1", "d9", actual, [user, group], owner="o") == "settled"
    assert store.record_report("q1", "d9", actual, [user, group], owner="o") == "duplicate"
    peek = store.check_and_consume([user, group], consume=False)
    assert [s.used for s in peek] == [30, 30]
    # a report that reaches one shard only (its other counter is gone from the rules)
    # settles that one; the other part stays reserved
    store.check_and_consume([user, group], consume=True, hold_id="d10", hold_owner="o")
    assert store.record_report("q2", "d10", {"requests": 0}, [user], owner="o") == "settled"
    assert [s.used for s in store.check_and_consume([user, group], consume=False)] == [30, 130]


def test_bad_input_is_refused_before_any_shard_is_touched(
    redis_cluster: RedisClusterNodes, store: RedisClusterCounterStore,
) -> None:
    (uid,) = _ids(redis_cluster, "bad", 1, "bad")
    user = _spec("per_user", f"u={uid}", 10)
    with pytest.raises(ValueError, match="amount"):
        store.check_and_consume([user, _spec("per_group", "g=bad", 10, float("nan"))],
                                consume=True)
    assert store.check_and_consume([user], consume=False)[0].used == 0
    with pytest.raises(ValueError, match="may not hold"):
        open_store(redis_cluster.url, key_prefix="a{b}:")
    with pytest.raises(ValueError, match="may not hold"):
        open_store(redis_cluster.url + "/x}")


def test_the_url_prefix_is_the_key_prefix(redis_cluster: RedisClusterNodes) -> None:
    s = open_store(redis_cluster.url + "/url-prefix:", key_prefix="ignored:")
    try:
        s.check_and_consume([_spec("q", "u=p", 5)], consume=True)
    finally:
        s.close()
    client = _client(redis_cluster)
    try:
        assert client.exists(f"url-prefix:{{{tag_of('u=p')}}}q:q:u=p") == 1
    finally:
        client.close()


def test_a_dead_cluster_is_store_unavailable_not_a_crash() -> None:
    s = open_store("redis+cluster://127.0.0.1:1", options=None)
    try:
        with pytest.raises(StoreUnavailable):
            s.check_and_consume([_spec("q", "u=a", 1)], consume=True)
        with pytest.raises(StoreUnavailable):
            s.ping()
    finally:
        s.close()


# ------------------------------------------- two serve processes, one cluster


def _stubs(stack: ExitStack, rules: Path, url: str, prefix: str, tmp: Path) -> list[
        pb_grpc.TollwayStub]:
    stubs = []
    for _ in range(2):
        served = stack.enter_context(
            tollway_serve(rules, "--store", url, "--key-prefix", prefix,
                          "--usage-db", f"sqlite:///{tmp / 'usage.db'}", "--store-timeout", "5s")
        )
        channel = stack.enter_context(grpc.insecure_channel(served.grpc))
        stubs.append(pb_grpc.TollwayStub(channel))
    return stubs


def _decide(stub: pb_grpc.TollwayStub, uid: str, group: str, rid: str) -> pb.Decision:
    return stub.Decide(pb.DecideRequest(request_id=rid, user=pb.Entity(id=uid),
                                        group=pb.Entity(id=group), model="m"), timeout=30)


def _exactly_100(stubs: list[pb_grpc.TollwayStub], uid: str, group: str) -> list[pb.Decision]:
    """300 Decides at once for one user and group, alternating replicas."""
    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(
            lambda i: _decide(stubs[i % 2], uid, group, f"{uid}-{i}"), range(300)
        ))


def _group_used(stub: pb_grpc.TollwayStub, uid: str, group: str) -> float:
    peek = stub.Explain(pb.DecideRequest(user=pb.Entity(id=uid), group=pb.Entity(id=group),
                                         model="m"), timeout=10)
    return next(q.used for q in peek.decision.quotas if q.name == "per_group")


def test_300_concurrent_decides_on_two_replicas_admit_exactly_100_across_shards(
    redis_cluster: RedisClusterNodes, tmp_path: Path,
) -> None:
    rules = tmp_path / "cluster.rules"
    rules.write_text(RULES)
    (uid,) = _ids(redis_cluster, "team", 1, "hot")
    assert shard_of(f"u={uid}") != shard_of("g=team")
    with ExitStack() as stack:
        stubs = _stubs(stack, rules, redis_cluster.url, "exact:", tmp_path)
        decisions = _exactly_100(stubs, uid, "team")
        assert sum(d.allowed for d in decisions) == 100
        assert {d.reason for d in decisions if not d.allowed} == {pb.QUOTA_EXCEEDED}
        # the 200 refused decisions each reserved in the group's shard and released it
        assert _group_used(stubs[0], uid, "team") == 100


def test_a_master_killed_under_load_then_exact_again_after_the_promotion(
    redis_cluster_factory: Callable[[], RedisClusterNodes], tmp_path: Path,
) -> None:
    cluster = redis_cluster_factory()
    rules = tmp_path / "cluster.rules"
    rules.write_text(RULES)
    group = "grp"
    # the victim's shard and the other user's are on two masters, neither the group's
    victim_uid, *others = _ids(cluster, group, 40, "load")
    ports = _ports(cluster)
    victim_port = ports[tag_of(f"u={victim_uid}")]
    calm_uid = next(u for u in others if ports[tag_of(f"u={u}")] != victim_port)
    seen: list[tuple[float, str, int]] = []  # (time, user, reason)
    stop = threading.Event()

    def load(stub: pb_grpc.TollwayStub, uid: str) -> None:
        i = 0
        while not stop.is_set():
            d = _decide(stub, uid, group, f"{uid}-{threading.get_ident()}-{i}")
            seen.append((time.monotonic(), uid, d.reason))
            i += 1
            time.sleep(0.01)

    with ExitStack() as stack:
        stubs = _stubs(stack, rules, cluster.url, "failover:", tmp_path)
        threads = [threading.Thread(target=load, args=(stubs[i % 2], uid))
                   for i, uid in enumerate((victim_uid, calm_uid, victim_uid, calm_uid))]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            victim = cluster.master_for(f"{{{tag_of('u=' + victim_uid)}}}")
            killed_at = time.monotonic()
            cluster.kill(victim)
            cluster.wait_promoted(f"{{{tag_of('u=' + victim_uid)}}}", victim.port)
            promoted_at = time.monotonic()
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        during = [(u, r) for t, u, r in seen if killed_at < t < promoted_at]
        # decisions kept coming while the master was down: the victim's under
        # on_store_error deny, the other user's (its shards alive) as before
        assert {r for u, r in during if u == victim_uid} >= {pb.STORE_UNAVAILABLE}
        assert {r for u, r in during if u == calm_uid} <= {pb.ALLOWED, pb.QUOTA_EXCEEDED}
        assert {r for _, _, r in seen} <= {pb.ALLOWED, pb.QUOTA_EXCEEDED, pb.STORE_UNAVAILABLE}
        # the promoted replica serves the victim's shard again
        resumed = [r for t, u, r in seen if u == victim_uid and t > promoted_at]
        assert pb.STORE_UNAVAILABLE not in resumed[-5:], resumed[-10:]
        # exact again: a user of the promoted master's shard and a fresh group
        ports = _ports(cluster)
        fresh = next(u for u in _ids(cluster, "after", 60, "fresh")
                     if ports[tag_of(f"u={u}")] == ports[tag_of(f"u={victim_uid}")])
        decisions = _exactly_100(stubs, fresh, "after")
        assert sum(d.allowed for d in decisions) == 100
        assert {d.reason for d in decisions if not d.allowed} == {pb.QUOTA_EXCEEDED}
        assert _group_used(stubs[1], fresh, "after") == 100


def test_redis_errors_are_not_swallowed_into_results(
    redis_cluster: RedisClusterNodes, store: RedisClusterCounterStore,
) -> None:
    (uid,) = _ids(redis_cluster, "typed", 1, "typed")
    client = _client(redis_cluster)
    key = f"ct:{{{tag_of('g=typed')}}}q:per_group:g=typed"
    try:
        client.set(key, "not a hash")
        user = _spec("per_user", f"u={uid}", 10)
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            store.check_and_consume([user, _spec("per_group", "g=typed", 10)], consume=True,
                                    hold_id="w1")
        # the user shard had reserved: released
        assert store.check_and_consume([user], consume=False)[0].used == 0
    finally:
        client.delete(key)
        client.close()



def test_a_stalled_shard_leaves_nothing_reserved_in_the_others(
    redis_cluster_factory: Callable[[], RedisClusterNodes],
) -> None:
    cluster = redis_cluster_factory()
    address = parse_store_url(cluster.url)
    store = RedisClusterCounterStore(address, key_prefix="st:", timeout=5.0)
    # the stalled decision and its release wait 0.15 s each: the master is resumed well
    # within the cluster's node timeout (1 s), so no replica takes over
    tight = RedisClusterCounterStore(address, key_prefix="st:", timeout=0.15)
    try:
        (uid,) = _ids(cluster, "grp", 1, "stall")
        user, group = _spec("per_user", f"u={uid}", 10), _spec("per_group", "g=grp", 10)
        assert not any(s.exceeded for s in store.check_and_consume([user, group],
                                                                  consume=True))
        tight.check_and_consume([user, group], consume=False)  # connected to every master
        stalled = cluster.master_for(f"{{{tag_of('u=' + uid)}}}")
        stalled.pause()
        try:
            with pytest.raises(StoreUnavailable):
                tight.check_and_consume([user, group], consume=True, hold_id="s1")
        finally:
            stalled.resume()
        # the group's shard answered and consumed: its reservation was released; the
        # user's shard ran the reserve late, past its deadline, and wrote nothing
        peek = store.check_and_consume([user, group], consume=False)
        assert [s.used for s in peek] == [1, 1]
    finally:
        store.close()
        tight.close()
