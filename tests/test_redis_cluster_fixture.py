"""The test Redis Cluster: 3 masters, 3 replicas, and a replica takes over a killed master.

The cluster tests of the stores rely on this behaviour of the fixture, so it is checked
on its own: a wrong cluster would make them pass or fail for the wrong reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.cluster import ClusterNode, RedisCluster
from redis_processes import RedisClusterNodes


def test_the_cluster_has_three_masters_each_with_a_replica(
    redis_cluster: RedisClusterNodes,
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3 and len(redis_cluster.nodes) == 6
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    # keys spread over the masters by slot; a hash tag keeps keys together
    assert redis_cluster.slot_of("{u=alice}:a") == redis_cluster.slot_of("{u=alice}:b")
    owners = {redis_cluster.master_for(f"k{i}").port for i in range(30)}
    assert owners == {m.port for m in masters}


def test_a_killed_master_is_replaced_by_its_replica(
    redis_cluster_factory: Callable[[], RedisClusterNodes],
) -> None:
    cluster = redis_cluster_factory()
    host, port = "127.0.0.1", cluster.nodes[0].port
    client = RedisCluster(startup_nodes=[ClusterNode(host, port)], socket_timeout=1)
    try:
        client.set("{t}k", "v")
        owner = cluster.master_for("{t}k")
        # replication is asynchronous: wait until the replica has it
        assert client.execute_command("WAIT", 1, 5000, target_nodes=client.get_node_from_key("{t}k")) == 1
        cluster.kill(owner)
        started = time.monotonic()
        promoted = cluster.wait_promoted("{t}k", owner.port)
        took = time.monotonic() - started
        assert len(cluster.masters()) == 3 and promoted.port != owner.port
        assert took < 20, took
        client.nodes_manager.initialize()  # the client learns the new topology
        assert client.get("{t}k") == b"v"  # the replica had the key
    finally:
        client.close()
